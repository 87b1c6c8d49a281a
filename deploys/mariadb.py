"""MariaDB Galera layer (design §A, §F, §G): maria-01..03, from the pinned `mariadb_galera_image`.

    pyinfra -y inventory.py deploys/mariadb.py        # or: invoke layer --name mariadb [--lab]

On each maria node (keybuzz/mariadb/settings.py says why the image's entrypoint is bypassed):
  /opt/keybuzz/mariadb/conf/my.cnf            the node's Galera config: clients on the private address and
                                              loopback (3306), group communication 4567, IST 4568, SST 4444 on the
                                              private address only
  /opt/keybuzz/mariadb/conf/sst-auth.cnf      SECRET 0600 (uid 1001): the mariabackup SST user
  /opt/keybuzz/mariadb/conf/bootstrap.d/      empty, except while keybuzz-mariadb bootstraps a new cluster
  /opt/keybuzz/mariadb/secrets/users.sql      SECRET 0600 root, never mounted: ERPNext database, app, SST and
                                              ProxySQL monitor users, root's password (applied over the socket)
  /opt/keybuzz/mariadb/data                   the data directory (uid 1001, 0700)
  /usr/local/sbin/keybuzz-mariadb             state / bootstrap / start / rolling restart / users (no secret)
  mariadb.service                             docker run --network host --entrypoint mysqld ... --defaults-file

Cluster: every node's state (running, wsrep status, grastate.dat, and after an unclean stop the position
`mysqld --wsrep-recover` finds) is read once per run, and keybuzz.mariadb.galera.decide says what to do:
nothing; start the nodes outside a running Primary cluster (they join by IST/SST, one at a time); bootstrap
maria-01 on a first install, or the most advanced node after a full outage, then start the others; or refuse
(data of different clusters, unknown positions) with the reason, before anything changes. A changed my.cnf,
sst-auth.cnf or unit restarts the nodes one at a time, each only when the cluster is Primary with every member
and the node Synced. A second run reports no change.
"""

from io import StringIO

from pyinfra import host, inventory
from pyinfra.api import FactBase, HiddenValue, OperationError, StringCommand
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import files, python, server, systemd
from pyinfra.operations.util import any_changed

from keybuzz.context import layer_context
from keybuzz.mariadb import galera
from keybuzz.mariadb.settings import (
    DEFAULT,
    SERVICE,
    Accounts,
    mysqld_command,
    mysqld_run_args,
    render_my_cnf,
    render_node_script,
    render_sst_auth,
    render_users_sql,
)
from keybuzz.ops import container_unit, owned_directory, secret_file, template

S = DEFAULT
UID = str(S.uid)


class GaleraNodeState(FactBase):
    """`keybuzz-mariadb state` of this node (key=value lines, no secret); `running=0` before the first deploy.
    After an unclean stop (grastate seqno -1, server not running) it runs `mysqld --wsrep-recover` in a
    throw-away container: a read of InnoDB's last committed position, what the server's next start does anyway.

    Example: ["running=0", "grastate_uuid=...", "grastate_seqno=-1", "grastate_safe_to_bootstrap=0", "recovered=..."]
    """

    def command(self, script):
        return f"if [ -x {script} ]; then {script} state; else echo running=0; fi"

    def process(self, output):
        return [line.strip() for line in output if line.strip()]


class UsersState(FactBase):
    """`ok` when the application user and database exist (read on a running node), else `missing`."""

    def command(self, script):
        return f"if [ -x {script} ]; then {script} users-state || echo missing; else echo missing; fi"

    def process(self, output):
        return output[0].strip() if output else "missing"


ctx = layer_context("mariadb")
creds = ctx.secrets("mariadb")
NODES = ctx.addresses("mariadb")
ME, NAME = host.data.private_ip, host.name
ACCOUNTS = Accounts(*(creds[k].unmask() for k in (
    "MARIADB_ROOT_PASSWORD", "MARIADB_APP_USER", "MARIADB_APP_PASSWORD", "MARIADB_SST_USER", "MARIADB_SST_PASSWORD",
    "MARIADB_MONITOR_USER", "MARIADB_MONITOR_PASSWORD")))
IMAGE = ctx.image("mariadb_galera_image")


class SshNodes:
    """galera.Nodes over SSH, with keybuzz-mariadb on each node (at execution time, from the first node's
    operation; the testbed's counterpart acts on containers)."""

    def _run(self, name: str, command: str) -> list[str]:
        ok, output = inventory.get_host(name).run_shell_command(StringCommand(command), print_output=False,
                                                                print_input=False)
        if not ok:
            raise OperationError(f"{name}: `{command}` failed: {output.stderr[-1500:]}")
        return output.stdout_lines

    def state(self, name: str) -> galera.NodeState:
        return galera.parse_node_state(name, self._run(name, f"{S.node_script} state"))

    def stop(self, name: str) -> None:
        self._run(name, f"systemctl stop {SERVICE}")

    def bootstrap(self, name: str) -> None:
        self._run(name, f"{S.node_script} bootstrap")

    def apply_users(self, name: str) -> None:
        self._run(name, f"{S.node_script} apply-users")

    def start(self, name: str) -> None:
        self._run(name, f"{S.node_script} start")


def _converge() -> None:
    try:
        done = galera.converge([name for name, _ in NODES], SshNodes())
    except galera.Refused as e:
        raise OperationError(f"mariadb: {e}") from None
    print(f"keybuzz: mariadb: {', '.join(done) or 'nothing to do'}", flush=True)


# --- the cluster, read once for the run, decided before anything changes -------------------------------------

def _cluster_states() -> list[galera.NodeState]:
    return [galera.parse_node_state(name, inventory.get_host(name).get_fact(GaleraNodeState, script=S.node_script))
            for name, _ in NODES]


STATES = ctx.ask_once("every Galera node's state", _cluster_states)
DECISION = ctx.ask_once("the Galera bootstrap decision", lambda: galera.decide(STATES))
if DECISION.action == "refuse":
    raise DeployError(f"mariadb: {DECISION.reason}")
MINE = next(st for st in STATES if st.name == NAME)

# --- directories and files --------------------------------------------------------------------------------------

files.directory(name=f"Create {S.base_dir}", path=S.base_dir, user="root", group="root", mode="755")
owned_directory(name=f"Create {S.data_dir} (mysqld {UID}, 0700)", path=S.data_dir, uid=UID, gid="0", mode="700")
files.directory(name=f"Create {S.conf_dir}", path=S.conf_dir, user="root", group="root", mode="755")
files.directory(name=f"Create {S.conf_dir}/bootstrap.d", path=f"{S.conf_dir}/bootstrap.d", user="root",
                group="root", mode="755")
files.directory(name=f"Create {S.secrets_dir} (root, 0700)", path=S.secrets_dir, user="root", group="root",
                mode="700")

my_cnf = files.put(name="Install my.cnf (no secret)", dest=f"{S.conf_dir}/my.cnf", user="root", group="root",
                   mode="644", src=StringIO(render_my_cnf(NAME, ME, [ip for _, ip in NODES], S)))
sst_auth = secret_file(name=f"Install sst-auth.cnf (the SST user; 0600 mysqld {UID})",
                       dest=f"{S.conf_dir}/sst-auth.cnf", user=UID, group="0", mode="600",
                       content=HiddenValue(render_sst_auth(ACCOUNTS.sst_user, ACCOUNTS.sst_password)))
users_sql = secret_file(name="Install users.sql (ERPNext database and accounts; 0600 root)",
                        dest=f"{S.secrets_dir}/users.sql", user="root", group="root", mode="600",
                        content=HiddenValue(render_users_sql(ACCOUNTS, ctx.private_network)))
template("mariadb/new-cluster.cnf", f"{S.base_dir}/new-cluster.cnf")
files.put(name=f"Install {S.node_script}", dest=S.node_script, user="root", group="root", mode="755",
          src=StringIO(render_node_script(IMAGE, ACCOUNTS.app_user, len(NODES), S)))
# a bootstrap flag left by an interrupted bootstrap must never survive into a later restart
files.file(name="No leftover bootstrap flag (bootstrap.d/new-cluster.cnf)",
           path=f"{S.conf_dir}/bootstrap.d/new-cluster.cnf", present=False)

unit = container_unit(SERVICE, IMAGE, command=mysqld_command(S), run_args=mysqld_run_args(S), stop_timeout=120,
                      description="KeyBuzz MariaDB Galera node")
systemd.daemon_reload(name="systemd daemon-reload", _if=any_changed(*unit))
# running=None: enable only; starting belongs to the converge step below (pyinfra starts by default)
systemd.service(name="mariadb enabled at boot (a rebooted node rejoins by itself)", service=SERVICE, running=None,
                enabled=True)

# --- activation ---------------------------------------------------------------------------------------------------

changed = (my_cnf, sst_auth, *unit)
if DECISION.action != "none" and NAME == NODES[0][0]:
    # Decided again when it runs, on fresh states (a server restarted by systemd meanwhile, a position recovered
    # only once the server is stopped): the same function the container testbed runs.
    python.call(name=f"Bring every Galera node into one Primary cluster (now: {DECISION.action} "
                     f"{', '.join(DECISION.nodes)}; {DECISION.reason})",
                function=_converge)

if MINE.primary:  # nodes the run starts pick their new files up by starting
    # rolling: one node at a time, each only when the cluster is whole and this node Synced (the script checks)
    server.shell(name="Rolling restart of mariadb (its definition changed)", commands=[f"{S.node_script} restart"],
                 _if=any_changed(*changed), _serial=True)

users = host.get_fact(UsersState, script=S.node_script)
if NAME == NODES[0][0] and DECISION.action != "bootstrap":  # a bootstrap applies users.sql itself
    server.shell(name="Apply users.sql (ERPNext database, application, SST and monitor users) on a Synced node",
                 commands=[f"{S.node_script} apply-users"],
                 _if=lambda: users_sql.did_change() or users != "ok")
