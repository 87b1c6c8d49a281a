"""DB layer (design §A, §F, §G): PostgreSQL + Patroni + etcd + PgBouncer on db-01..03.

    pyinfra -y inventory.py deploys/db.py             # or: invoke layer --name db [--lab]

On each db node, as systemd units wrapping `docker run --network host` (keybuzz/ops.py), everything on the
private address (and loopback) only:
  * etcd.service       the pinned `etcd_image`: Patroni's DCS, 3 members, /opt/keybuzz/postgres/etcd
  * patroni.service    the pinned `patroni_image`: Patroni owns the postmaster; data /opt/keybuzz/postgres/data;
                       config/patroni.yml (SECRET 0600, postgres uid: superuser, replication, REST API passwords)
  * pgbouncer.service  the pinned `pgbouncer_image` in front of the local PostgreSQL (session pooling, SCRAM
                       verifiers only: keybuzz/db/settings.py says why)
  * /usr/local/sbin/keybuzz-db: role / wait-cluster / app-state / apply-app (no secret inside)
HAProxy (the haproxy layer) sends 5432 and 6432 to the current primary only (templates/db/haproxy.cfg.j2).

Bootstrap: only when the DCS holds no cluster and the data directories are empty (Patroni's initialize race
in etcd picks one node; the others clone). A node whose data belongs to another cluster, or data while the
DCS has none, is refused before anything changes. The application role and database (POSTGRES_APP_USER,
its SCRAM verifier only, database of the same name) are created on the primary, idempotently.
A second run reports no change.
"""

from dataclasses import replace
from io import StringIO

from pyinfra import host
from pyinfra.api import HiddenValue
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.server import Command
from pyinfra.operations import files, server, systemd
from pyinfra.operations.util import any_changed

from keybuzz.context import layer_context
from keybuzz.db.client import dcs_state
from keybuzz.db.settings import (
    ADMIN_LOGIN_FILE,
    APP_SQL,
    CONTAINER_CONFIG_DIR,
    DEFAULT,
    NODE_SCRIPT,
    WAIT_SECONDS,
    PatroniSecrets,
    dcs_config,
    deterministic_salt,
    render_admin_passfile,
    render_app_sql,
    render_etcd_env,
    render_node_script,
    render_patroni_yml,
    render_pgbouncer_ini,
    render_pgbouncer_userlist,
    scram_verifier,
)
from keybuzz.facts import ServiceActive
from keybuzz.ops import container_unit, owned_directory, restart_if, secret_file

S = DEFAULT

ctx = layer_context("db")
creds = ctx.secrets("postgres")
NODES = ctx.addresses("db")
ME, NAME = host.data.private_ip, host.name
PG_UID = str(S.postgres_uid)
PGB_UID = str(S.pgbouncer_uid)
APP_USER = creds["POSTGRES_APP_USER"].unmask()
APP_DB = APP_USER  # the application database carries the application user's name
LOGINS = PatroniSecrets(
    superuser=creds["POSTGRES_SUPERUSER"].unmask(), superpass=creds["POSTGRES_SUPERPASS"].unmask(),
    repl_user=creds["POSTGRES_REPLICATION_USER"].unmask(), repl_pass=creds["POSTGRES_REPLICATION_PASS"].unmask(),
    rest_user=creds["PATRONI_API_USER"].unmask(), rest_pass=creds["PATRONI_API_PASS"].unmask(),
)
# One verifier for PostgreSQL and PgBouncer; its salt is derived from a secret so that every run writes the
# same files (a random salt would change them each time).
APP_VERIFIER = scram_verifier(creds["POSTGRES_APP_PASS"].unmask(),
                              salt=deterministic_salt(LOGINS.superpass, APP_USER))
SETTINGS = replace(S, client_networks=(ctx.private_network,))  # pg_hba: clients from the private network only

# --- refuse what would break a cluster, before anything changes -------------------------------------------

dcs = ctx.ask_once("etcd which cluster it holds", lambda: dcs_state([ip for _, ip in NODES], S))
sysid = host.get_fact(Command, command=f"od -An -t u8 -N8 {S.data_dir}/global/pg_control 2>/dev/null || true")
if sysid:
    if dcs.unreachable:
        raise DeployError(f"{NAME}: {S.data_dir} holds a database but no etcd member answers: start etcd "
                          "(systemctl start etcd on the db nodes) before deploying")
    if dcs.system_id is None:
        raise DeployError(f"{NAME}: {S.data_dir} holds a database (system id {sysid.strip()}) but the DCS has no "
                          "cluster: restoring a cluster from existing data is a manual step (README, DB layer)")
    if sysid.strip() != dcs.system_id:
        raise DeployError(f"{NAME}: {S.data_dir} holds another cluster's data (system id {sysid.strip()}, the "
                          f"cluster's is {dcs.system_id}): move it away and deploy again to clone this node")

# --- directories and files --------------------------------------------------------------------------------

files.directory(name=f"Create {S.base_dir}", path=S.base_dir, user="root", group="root", mode="755")
owned_directory(name=f"Create {S.data_dir} (postgres {PG_UID}, 0700)", path=S.data_dir, uid=PG_UID, gid=PG_UID,
                mode="700")
owned_directory(name=f"Create {S.config_dir} (postgres {PG_UID}, 0700)", path=S.config_dir, uid=PG_UID,
                gid=PG_UID, mode="700")
owned_directory(name=f"Create {S.pgbouncer_dir} (pgbouncer {PGB_UID}, 0700)", path=S.pgbouncer_dir,
                uid=PGB_UID, gid="0", mode="700")
files.directory(name=f"Create {S.etcd_dir} (0700)", path=S.etcd_dir, user="root", group="root", mode="700")

etcd_env = files.put(name=f"Install {S.base_dir}/etcd.env (no secret)",
                     src=StringIO(render_etcd_env(NAME, ME, NODES, S)), dest=f"{S.base_dir}/etcd.env",
                     user="root", group="root", mode="644")
patroni_yml = secret_file(
    name="Install patroni.yml (superuser, replication, REST API passwords; 0600 postgres)",
    dest=f"{S.config_dir}/patroni.yml", user=PG_UID, group=PG_UID,
    content=HiddenValue(render_patroni_yml(NAME, ME, NODES, LOGINS, SETTINGS)),
)
secret_file(name=f"Install {ADMIN_LOGIN_FILE} (the superuser, for keybuzz-db; 0600 postgres)",
            dest=f"{S.config_dir}/{ADMIN_LOGIN_FILE}", user=PG_UID, group=PG_UID,
            content=HiddenValue(render_admin_passfile(LOGINS.superuser, LOGINS.superpass, S)))
app_sql = secret_file(name=f"Install {APP_SQL} (application role and database; 0600 postgres)",
                      dest=f"{S.config_dir}/{APP_SQL}", user=PG_UID, group=PG_UID,
                      content=HiddenValue(render_app_sql(APP_USER, APP_VERIFIER, APP_DB)))
pgbouncer_ini = files.put(name="Install pgbouncer.ini (no secret)", src=StringIO(render_pgbouncer_ini(NAME, ME, S)),
                          dest=f"{S.pgbouncer_dir}/pgbouncer.ini", user="root", group="root", mode="644")
userlist = secret_file(name="Install PgBouncer's userlist.txt (SCRAM verifiers only; 0600 pgbouncer)",
                       dest=f"{S.pgbouncer_dir}/userlist.txt", user=PGB_UID, group="0",
                       content=HiddenValue(render_pgbouncer_userlist([(APP_USER, APP_VERIFIER)])))
files.put(name=f"Install {NODE_SCRIPT}", dest=NODE_SCRIPT, user="root", group="root", mode="755",
          src=StringIO(render_node_script(NAME, ME, len(NODES), LOGINS.superuser, APP_USER, APP_DB, S)))

# --- units ------------------------------------------------------------------------------------------------

etcd_unit = container_unit(
    "etcd", ctx.image("etcd_image"), description="KeyBuzz etcd (Patroni's DCS)",
    run_args=["--env-file", f"{S.base_dir}/etcd.env", "-v", f"{S.etcd_dir}:{S.etcd_data}"],
)
patroni_unit = container_unit(
    "patroni", ctx.image("patroni_image"), stop_timeout=60,
    description="KeyBuzz Patroni + PostgreSQL",
    run_args=["-v", f"{S.config_dir}:{CONTAINER_CONFIG_DIR}:ro", "-v", f"{S.data_dir}:{S.pgdata}"],
    command=f"patroni {CONTAINER_CONFIG_DIR}/patroni.yml",
    reload="/usr/bin/docker kill -s HUP patroni",
)
pgbouncer_unit = container_unit(
    "pgbouncer", ctx.image("pgbouncer_image"), description="KeyBuzz PgBouncer (session pooling)",
    run_args=["--user", PGB_UID, "-v", f"{S.pgbouncer_dir}:{S.pgbouncer_conf_dir}:ro",
              "--entrypoint", "/opt/bitnami/pgbouncer/bin/pgbouncer"],
    command=f"{S.pgbouncer_conf_dir}/pgbouncer.ini",
    reload="/usr/bin/docker kill -s HUP pgbouncer",
)

# etcd first, all members together (a lone new member waits for its peers); a changed definition rolls one
# member at a time (the other two keep the quorum).
restart_if("etcd", etcd_env, *etcd_unit, serial=True)
# Patroni: started together on a first install (one node wins the initialize race, the others clone); a
# changed unit restarts the replicas first, one at a time, then the primary (Patroni hands over on stop).
was_running = host.get_fact(ServiceActive, service="patroni")
role = host.get_fact(Command, command=f"[ -x {NODE_SCRIPT} ] && {NODE_SCRIPT} role || echo down")
systemd.daemon_reload(name="systemd daemon-reload (patroni)", _if=any_changed(*patroni_unit))
systemd.service(name="Enable and start patroni", service="patroni", running=True, enabled=True)
for primary_turn in (False, True):  # the replicas, one at a time, then the primary
    if (role == "primary") == primary_turn:
        server.shell(name=f"Restart patroni ({'primary, last' if primary_turn else 'replica'}: its unit changed), "
                          "then wait until the cluster is whole",
                     commands=["systemctl restart patroni", f"{NODE_SCRIPT} wait-cluster {WAIT_SECONDS}"],
                     _if=lambda: was_running and any_changed(*patroni_unit)(), _serial=True)
server.shell(name="Reload patroni (patroni.yml changed)", commands=["systemctl reload patroni"],
             _if=lambda: patroni_yml.did_change() and not any_changed(*patroni_unit)())
server.shell(name="Wait until Patroni has a leader and every member runs",
             commands=[f"{NODE_SCRIPT} wait-cluster {WAIT_SECONDS}"], _if=any_changed(*patroni_unit, *etcd_unit))
restart_if("pgbouncer", pgbouncer_ini, userlist, *pgbouncer_unit, serial=True)

# --- the running cluster: dynamic settings and the application database ---------------------------------

if dcs.config is not None and {k: dcs.config.get(k) for k in dcs_config(S)} != dcs_config(S):
    server.shell(name="Apply the dynamic settings (patronictl edit-config)", _run_once=True,
                 commands=["docker exec patroni patronictl -c /etc/patroni/patroni.yml edit-config --force "
                           + " ".join(f"-s {k}={str(v).lower() if isinstance(v, bool) else v}"
                                      for k, v in dcs_config(S).items())])
state = host.get_fact(Command, command=f"[ -x {NODE_SCRIPT} ] && {NODE_SCRIPT} app-state || echo down")
server.shell(name=f"Create the application role and database {APP_DB} (on the primary)",
             commands=[f"{NODE_SCRIPT} wait-cluster {WAIT_SECONDS}", f"{NODE_SCRIPT} apply-app"],
             _if=lambda: app_sql.did_change() or state in ("missing", "down"))
