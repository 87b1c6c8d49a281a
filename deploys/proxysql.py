"""ProxySQL layer (design §A, §F): ProxySQL x2 (proxysql-01/02) in front of MariaDB Galera, behind the Hetzner LB
10.0.0.20:3306. Both nodes are configured identically, each by this deploy (no ProxySQL Cluster sync).

    pyinfra -y inventory.py deploys/proxysql.py       # or: invoke layer --name proxysql [--lab]

On each node, from the pinned `proxysql_image`, as a systemd unit wrapping `docker run --network host`:
  * clients on 0.0.0.0:3306 (never 10.0.0.20: the LB's address is not on these hosts), admin on 127.0.0.1:6032
  * one writer at a time among maria-01..03 (mysql_galera_hostgroups, max_writers 1), every statement of the
    application user to it (keybuzz/proxysql/settings.py says why no read/write split for ERPNext)
  * /opt/keybuzz/proxysql/conf/proxysql.cnf (SECRET 0600 root): read at the very first start only
  * /opt/keybuzz/proxysql/data: proxysql.db, ProxySQL's own configuration database from then on
  * /usr/local/sbin/keybuzz-proxysql: state / apply / wait / writer through the admin interface (no secret inside;
    the login is in /opt/keybuzz/proxysql/admin/client.cnf, 0600 root, read by the MariaDB client)

Configuration changes go through the admin interface: the running configuration (runtime_* tables) is read on
each node, compared with the desired rows (keybuzz.proxysql.admin.diff), and only a drifted table is written
again, loaded to runtime and saved to disk. A second run reads no difference and reports no change.
Only a changed unit (image, arguments) or a drifted listener variable restarts ProxySQL, one node at a time.
"""

from io import StringIO

from pyinfra import host
from pyinfra.api import HiddenValue
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import File
from pyinfra.facts.server import Command
from pyinfra.operations import files, server, systemd
from pyinfra.operations.util import any_changed

from keybuzz.context import layer_context
from keybuzz.facts import ServiceActive
from keybuzz.ops import apt_packages, container_unit, secret_file
from keybuzz.proxysql.admin import admin_sql, drifts_to_fix, needs_restart, parse_state, sql_file
from keybuzz.proxysql.settings import (
    ADMIN_CLIENT_CNF,
    ADMIN_CLIENT_PACKAGES,
    ADMIN_DIR,
    ADMIN_SQL,
    CONF_DIR,
    CONTAINER_UID,
    DATA_DIR,
    PROXYSQL_ROOT,
    TOOL,
    UNIT_COMMAND,
    UNIT_DESCRIPTION,
    UNIT_RUN_ARGS,
    ProxySQLSecrets,
    ProxySQLSettings,
    desired_rows,
    render_admin_client_cnf,
    render_proxysql_cnf,
    render_tool,
)

WAIT_SECONDS = 120  # bound of every wait for the admin interface

ctx = layer_context("proxysql")
# Only the six values ProxySQL needs; MariaDB's root and SST passwords are dropped here (from_bricks).
LOGINS = ProxySQLSecrets.from_bricks(ctx.secrets("proxysql"), ctx.secrets("mariadb"))
ROWS = desired_rows(ctx.addresses("mariadb"), LOGINS, ProxySQLSettings.from_host_data(host.data))
IMAGE = ctx.image("proxysql_image")

# --- what runs now (read-only; a host without ProxySQL yet answers "down", also under --dry) ----------------

state_output = host.get_fact(Command, command=f"if [ -x {TOOL} ]; then {TOOL} state; else echo down; fi") or "down"
if state_output.strip() == "refused":
    raise DeployError(f"{host.name}: ProxySQL's admin interface refuses PROXYSQL_ADMIN_USER's login (proxysql.env): "
                      "the running ProxySQL has other admin credentials; rotating them is a manual procedure "
                      "(README, ProxySQL)")
try:
    RUNNING = parse_state(state_output.splitlines())
    # a first start reads proxysql.cnf; afterwards ProxySQL runs (or will start) from proxysql.db: compare, fix
    DRIFTS = drifts_to_fix(ROWS, RUNNING, has_own_db=bool(host.get_fact(File, path=f"{DATA_DIR}/proxysql.db")))
except ValueError:
    # ProxySQL answers, but the installed keybuzz-proxysql is an older version (other columns): this run installs
    # the new one and rewrites every table (the rewrite is whole tables, so it is safe to repeat)
    DRIFTS = drifts_to_fix(ROWS, None, has_own_db=True)

# --- files ---------------------------------------------------------------------------------------------------

apt_packages(ADMIN_CLIENT_PACKAGES, "the MariaDB client (keybuzz-proxysql talks to the admin interface with it)")
files.directory(name=f"Create {PROXYSQL_ROOT}", path=PROXYSQL_ROOT, user="root", group="root", mode="755")
for path in (CONF_DIR, DATA_DIR, ADMIN_DIR):
    files.directory(name=f"Create {path} (root 0700)", path=path, user="root", group="root", mode="700")

secret_file(name="Install proxysql.cnf (admin, monitor and application logins; 0600, the container's root)",
            dest=f"{CONF_DIR}/proxysql.cnf", user=CONTAINER_UID, group=CONTAINER_UID,
            content=HiddenValue(render_proxysql_cnf(ROWS)))
secret_file(name=f"Install {ADMIN_CLIENT_CNF} (the admin login for the MariaDB client; root 0600)",
            dest=ADMIN_CLIENT_CNF, content=HiddenValue(render_admin_client_cnf(LOGINS)))
files.put(name=f"Install {TOOL} (no secret)", src=StringIO(render_tool()), dest=TOOL,
          user="root", group="root", mode="755")

# --- the unit ------------------------------------------------------------------------------------------------

unit = container_unit("proxysql", IMAGE, command=UNIT_COMMAND, run_args=UNIT_RUN_ARGS, description=UNIT_DESCRIPTION)
# proxysql.cnf is not a restart trigger: ProxySQL ignores it once proxysql.db exists (the admin SQL below applies
# what changed). A changed unit restarts one node at a time, each back (admin interface answering) before the
# next: the LB keeps sending clients to the other one.
was_active = host.get_fact(ServiceActive, service="proxysql")
systemd.daemon_reload(name="systemd daemon-reload", _if=any_changed(*unit))
systemd.service(name="Enable and start proxysql", service="proxysql", running=True, enabled=True)
server.shell(name="Restart proxysql (its unit changed) and wait for its admin interface",
             commands=["systemctl restart proxysql", f"{TOOL} wait {WAIT_SECONDS}"],
             _if=lambda: was_active and any_changed(*unit)(), _serial=True)

# --- the running configuration: only what drifted ------------------------------------------------------------

if DRIFTS:
    shown = "; ".join(str(d) for d in DRIFTS[:6]) + (f" (+{len(DRIFTS) - 6} more)" if len(DRIFTS) > 6 else "")
    secret_file(name=f"Stage the admin SQL that fixes: {shown} (0600 root)", dest=ADMIN_SQL,
                content=HiddenValue(sql_file(admin_sql(ROWS, DRIFTS))))
    # the staged file is removed whatever the outcome (it holds secrets)
    server.shell(name="Apply it through the admin interface (LOAD ... TO RUNTIME, SAVE ... TO DISK)",
                 commands=[f"rc=0; {{ {TOOL} wait {WAIT_SECONDS} && {TOOL} apply {ADMIN_SQL}; }} || rc=$?; "
                           f"rm -f -- {ADMIN_SQL}; exit $rc"], _serial=True)
    if needs_restart(DRIFTS):
        server.shell(name="Restart proxysql (a listener setting changed: it binds at start only)",
                     commands=["systemctl restart proxysql", f"{TOOL} wait {WAIT_SECONDS}"], _serial=True)
