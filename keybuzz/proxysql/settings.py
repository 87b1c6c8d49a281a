"""Settings of the ProxySQL layer (design §A, §F): ports, paths, the desired configuration as data (rows per
admin table), and pure rendering of every file the deploy installs. One source: proxysql.cnf, the admin SQL
and the drift check all come from `desired_rows`.

Routing (ERPNext): one writer at a time (`mysql_galera_hostgroups`, max_writers 1) and no query rule, so every
statement of the application user goes to its default hostgroup, the writer (10). ERPNext (Frappe) reads what
it has just written, inside and right after its transactions; a read sent to another Galera node can miss a
write that node has certified but not applied yet (Galera is "virtually synchronous": apply is asynchronous
unless wsrep_sync_wait is set), so no read/write split. `writer_is_also_reader=2`: the reader hostgroup (30)
holds the two backup writers only, for explicit read-only consumers (reports) that must never load the writer;
ERPNext never uses it.

    >>> s = ProxySQLSecrets("admin-x", "a", "erpnext", "b", "proxysql_monitor", "c")
    >>> rows = desired_rows([("maria-01", "10.0.0.170"), ("maria-02", "10.0.0.171")], s)
    >>> [(r["hostname"], r["hostgroup_id"], r["weight"]) for r in rows["mysql_servers"]]
    [('10.0.0.170', 10, 1000), ('10.0.0.171', 10, 999)]
    >>> rows["mysql_galera_hostgroups"][0]["max_writers"], rows["mysql_query_rules"]
    (1, [])
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from keybuzz.errors import InputError
from keybuzz.render import render

# Hostgroups (fixed interface with the MariaDB layer and the checks)
WRITER_HG, BACKUP_WRITER_HG, READER_HG, OFFLINE_HG = 10, 20, 30, 9999
MANAGED_HOSTGROUPS = (WRITER_HG, BACKUP_WRITER_HG, READER_HG, OFFLINE_HG)

CLIENT_ADDRESS = "0.0.0.0"  # design §A: every address, so the Hetzner LB (10.0.0.20) reaches it; never 10.0.0.20
CLIENT_PORT = 3306  # design §A (ProxySQL's default is 6033)
ADMIN_ADDRESS = "127.0.0.1"  # loopback only: reached over SSH, never opened in the firewall
ADMIN_PORT = 6032
BACKEND_PORT = 3306
OPEN_PORTS = ("tcp/3306",)  # to the private network (base OS firewall); 6032 never

# Where things live on the hosts
PROXYSQL_ROOT = "/opt/keybuzz/proxysql"
CONF_DIR = f"{PROXYSQL_ROOT}/conf"  # proxysql.cnf (SECRET 0600, root: the image runs ProxySQL as root)
DATA_DIR = f"{PROXYSQL_ROOT}/data"  # proxysql.db: ProxySQL's own configuration database
ADMIN_DIR = f"{PROXYSQL_ROOT}/admin"  # root 0700: the admin client's option file, the SQL being applied
ADMIN_CLIENT_CNF = f"{ADMIN_DIR}/client.cnf"
ADMIN_SQL = f"{ADMIN_DIR}/apply.sql"
TOOL = "/usr/local/sbin/keybuzz-proxysql"
CONTAINER_CONF = "/etc/proxysql.cnf"
CONTAINER_DATA = "/var/lib/proxysql"
CONTAINER_UID = "0"  # proxysql/proxysql runs `proxysql` as root (no USER in the image)
ADMIN_CLIENT_PACKAGES = ["mariadb-client"]  # Debian 12's client (10.11) speaks to ProxySQL's admin interface

# Monitor timing (ProxySQL 2.6.4 defaults: galera interval 5000 ms, timeout 800 ms, 3 missed checks; lib/
# MySQL_Thread.cpp). 2000 ms: a dead writer (connection refused) leaves the writer hostgroup at the next check,
# at most 2 s later; a hung one after 3 missed checks (about 6 s). Each check is one small SELECT per node.
GALERA_CHECK_INTERVAL_MS = 2000
GALERA_CHECK_TIMEOUT_MS = 800
GALERA_MAX_TIMEOUT_COUNT = 3

# Variables whose new value needs a restart of ProxySQL (the listener is bound once at start).
RESTART_VARIABLES = frozenset({"mysql-interfaces", "mysql-threads", "mysql-stacksize"})
# Variables holding a secret: compared by sha256 (keybuzz.proxysql.admin), never read back in clear.
SECRET_VARIABLES = frozenset({"mysql-monitor_password", "admin-admin_credentials"})


@dataclass(frozen=True)
class ProxySQLSecrets:
    """Exactly what ProxySQL needs: its admin login, the MariaDB application user it mirrors in mysql_users,
    and the monitor user. MariaDB's root and SST passwords never reach the ProxySQL hosts (`from_bricks`)."""

    admin_user: str
    admin_password: str
    app_user: str
    app_password: str
    monitor_user: str
    monitor_password: str

    def __repr__(self) -> str:  # a traceback or a debug print never shows a value
        return f"ProxySQLSecrets(admin_user={self.admin_user!r}, app_user={self.app_user!r}, ...)"

    @classmethod
    def from_bricks(cls, proxysql: Mapping, mariadb: Mapping) -> ProxySQLSecrets:
        """Pick the six values from the `proxysql` and `mariadb` bricks (HiddenValue or str); everything else of
        the mariadb brick (MARIADB_ROOT_PASSWORD, MARIADB_SST_*) is left behind.

        >>> s = ProxySQLSecrets.from_bricks(
        ...     {"PROXYSQL_ADMIN_USER": "pa", "PROXYSQL_ADMIN_PASSWORD": "pp"},
        ...     {"MARIADB_APP_USER": "erpnext", "MARIADB_APP_PASSWORD": "ap", "MARIADB_MONITOR_USER": "mon",
        ...      "MARIADB_MONITOR_PASSWORD": "mp", "MARIADB_ROOT_PASSWORD": "root!", "MARIADB_SST_PASSWORD": "sst"})
        >>> "root!" in str(vars(s)) or "sst" in str(vars(s))
        False
        """
        def value(brick: Mapping, key: str) -> str:
            v = brick[key]
            return v.unmask() if hasattr(v, "unmask") else str(v)

        picked = cls(value(proxysql, "PROXYSQL_ADMIN_USER"), value(proxysql, "PROXYSQL_ADMIN_PASSWORD"),
                     value(mariadb, "MARIADB_APP_USER"), value(mariadb, "MARIADB_APP_PASSWORD"),
                     value(mariadb, "MARIADB_MONITOR_USER"), value(mariadb, "MARIADB_MONITOR_PASSWORD"))
        if picked.admin_user in (picked.app_user, picked.monitor_user):
            # ProxySQL refuses an admin_credentials user that is also in mysql_users (sysown/proxysql#1538)
            from keybuzz.credentials import credentials_dir

            raise InputError(credentials_dir() / "proxysql.env", 0, "PROXYSQL_ADMIN_USER must differ from "
                             "MARIADB_APP_USER and MARIADB_MONITOR_USER (ProxySQL refuses an admin user that is "
                             "also a MySQL user); fix: choose another PROXYSQL_ADMIN_USER")
        return picked


def preflight(versions: dict) -> None:
    """Before any host is contacted (keybuzz.inventory): the two bricks together make a valid ProxySQL login
    set (InputError otherwise). The bricks themselves were read and checked just before."""
    from keybuzz import credentials

    ProxySQLSecrets.from_bricks(credentials.load("proxysql"), credentials.load("mariadb"))


@dataclass(frozen=True)
class ProxySQLSettings:
    """Routing and limits (group_data/proxysql.py may override with `proxysql_<field>`)."""

    max_writers: int = 1
    writer_is_also_reader: int = 2  # module docstring: readers are the backup writers only
    # Writesets a node may have queued (wsrep_local_recv_queue) before ProxySQL moves it offline. In ProxySQL
    # 2.6.4 this applies to nodes with read_only=ON only (lib/MySQL_Monitor.cpp, the Galera check): our nodes are
    # all writable, so it is a guard for a node someone sets read_only, not a lag limit of the backup writers.
    max_transactions_behind: int = 100
    backend_max_connections: int = 1000  # per MariaDB node, per ProxySQL
    app_max_connections: int = 2000  # the application user's client connections, per ProxySQL
    # What ProxySQL tells clients in the handshake: the MariaDB of the design (§F, 10.11.6), not ProxySQL
    # 2.6's default "8.0.11" that would make client libraries take the backend for MySQL 8.
    server_version: str = "10.11.6-MariaDB"

    @classmethod
    def from_host_data(cls, data) -> ProxySQLSettings:
        """>>> ProxySQLSettings.from_host_data({"proxysql_max_transactions_behind": 50}).max_transactions_behind
        50
        """
        given = {}
        for name in cls.__dataclass_fields__:
            v = data.get(f"proxysql_{name}")
            if v is not None:
                given[name] = v if name == "server_version" else int(v)
        return cls(**given)


def server_weights(count: int) -> list[int]:
    """Weights of the MariaDB nodes in servers.tsv order: the first one is the preferred writer.

    ProxySQL keeps as writer the eligible node first in `ORDER BY weight DESC, hostname DESC, port DESC`
    (lib/MySQL_HostGroups_Manager.cpp, converge_galera_config). Equal weights would make the writer the node
    whose address sorts last as text ('10.0.0.9' after '10.0.0.10'); these make it maria-01, then maria-02.

    >>> server_weights(3)
    [1000, 999, 998]
    """
    return [1000 - i for i in range(count)]


def desired_rows(nodes: list[tuple[str, str]], secrets: ProxySQLSecrets,
                 settings: ProxySQLSettings | None = None) -> dict[str, list[dict]]:
    """The configuration, as rows of ProxySQL's admin tables (columns as in ProxySQL 2.6.4's schema).

    `nodes`: [(name, private_ip)] of the mariadb role. mysql_servers places every node in the writer
    hostgroup: the Galera monitor moves them (backup writers, readers, offline) from there.
    """
    settings = settings or ProxySQLSettings()
    servers = [
        {"hostgroup_id": WRITER_HG, "hostname": ip, "port": BACKEND_PORT, "weight": weight,
         "max_connections": settings.backend_max_connections, "max_replication_lag": 0, "use_ssl": 0,
         "compression": 0, "comment": name}
        for (name, ip), weight in zip(nodes, server_weights(len(nodes)), strict=True)
    ]
    galera = [{
        "writer_hostgroup": WRITER_HG, "backup_writer_hostgroup": BACKUP_WRITER_HG, "reader_hostgroup": READER_HG,
        "offline_hostgroup": OFFLINE_HG, "active": 1, "max_writers": settings.max_writers,
        "writer_is_also_reader": settings.writer_is_also_reader,
        "max_transactions_behind": settings.max_transactions_behind, "comment": "keybuzz MariaDB Galera",
    }]
    users = [{
        "username": secrets.app_user, "password": secrets.app_password, "active": 1,
        "default_hostgroup": WRITER_HG, "default_schema": None, "transaction_persistent": 1, "fast_forward": 0,
        "max_connections": settings.app_max_connections, "comment": "MARIADB_APP_USER (ERPNext)",
    }]
    variables = {
        "mysql-interfaces": f"{CLIENT_ADDRESS}:{CLIENT_PORT}",
        "mysql-server_version": settings.server_version,
        "mysql-monitor_enabled": "true",
        "mysql-monitor_username": secrets.monitor_user,
        "mysql-monitor_password": secrets.monitor_password,
        "mysql-monitor_galera_healthcheck_interval": str(GALERA_CHECK_INTERVAL_MS),
        "mysql-monitor_galera_healthcheck_timeout": str(GALERA_CHECK_TIMEOUT_MS),
        "mysql-monitor_galera_healthcheck_max_timeout_count": str(GALERA_MAX_TIMEOUT_COUNT),
        "admin-admin_credentials": f"{secrets.admin_user}:{secrets.admin_password}",
        "admin-mysql_ifaces": f"{ADMIN_ADDRESS}:{ADMIN_PORT}",
        "admin-web_enabled": "false",  # no web UI (6080)
        "admin-restapi_enabled": "false",  # no REST API (6070)
    }
    return {
        "global_variables": [{"variable_name": k, "variable_value": v} for k, v in variables.items()],
        "mysql_users": users,
        "mysql_servers": servers,
        "mysql_galera_hostgroups": galera,
        "mysql_query_rules": [],  # no read/write split: module docstring
    }


# ---------------------------------------------------------------- rendering

_CNF_STRING = re.compile(r'^[^"\\\n]*$')


def _cnf_value(value) -> str:
    """A libconfig scalar: integers bare, everything else a double-quoted string (refusing what would need
    escaping: credentials.VALUE_RULES already refuse quotes and backslashes in the secrets).

    >>> _cnf_value(3306), _cnf_value("0.0.0.0:3306")
    ('3306', '"0.0.0.0:3306"')
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if not _CNF_STRING.match(text):
        raise ValueError("a proxysql.cnf value cannot hold a double quote, a backslash or a newline")
    return f'"{text}"'


def render_proxysql_cnf(rows: dict[str, list[dict]]) -> str:
    """proxysql.cnf (SECRET: admin, monitor and application passwords): read by ProxySQL at its first start
    only, when its data directory has no proxysql.db yet; afterwards the deploy works through the admin
    interface (keybuzz.proxysql.admin)."""
    sections: dict[str, list[tuple[str, str]]] = {"admin_variables": [], "mysql_variables": []}
    for row in rows["global_variables"]:
        module, _, name = row["variable_name"].partition("-")
        sections[f"{module}_variables"].append((name, _cnf_value(row["variable_value"])))

    def entries(table: str, rename: dict[str, str] | None = None) -> list[list[tuple[str, str]]]:
        rename = rename or {}
        return [[(rename.get(k, k), _cnf_value(v)) for k, v in row.items() if v is not None] for row in rows[table]]

    return render("proxysql/proxysql.cnf.j2", datadir=CONTAINER_DATA, sections=sections,
                  servers=entries("mysql_servers", {"hostname": "address", "hostgroup_id": "hostgroup"}),
                  users=entries("mysql_users"), galera=entries("mysql_galera_hostgroups"),
                  rules=entries("mysql_query_rules"))


def render_admin_client_cnf(secrets: ProxySQLSecrets) -> str:
    """The option file of the admin client (SECRET, root 0600): `mariadb --defaults-extra-file=...` reads the
    login from it, so it never appears on a command line."""
    for v in (secrets.admin_user, secrets.admin_password):
        _cnf_value(v)  # same refusals: no quote, backslash or newline
    return render("proxysql/admin-client.cnf.j2", host=ADMIN_ADDRESS, port=ADMIN_PORT,
                  user=secrets.admin_user, password=secrets.admin_password)


def render_tool(client_cnf: str = ADMIN_CLIENT_CNF, admin_port: int = ADMIN_PORT) -> str:
    """/usr/local/sbin/keybuzz-proxysql (no secret inside): state / apply / wait / writer. (Tests render it with
    their own option file and port.)"""
    from keybuzz.proxysql.admin import STATE_QUERIES

    return render("proxysql/keybuzz-proxysql.j2", client_cnf=client_cnf, admin_host=ADMIN_ADDRESS,
                  admin_port=admin_port, hostgroups=",".join(str(h) for h in MANAGED_HOSTGROUPS),
                  queries=[(label, int(secret), shlex.quote(sql)) for label, sql, secret in STATE_QUERIES])


# The container: host network (ProxySQL binds what its variables say: 0.0.0.0:3306 and 127.0.0.1:6032), the
# configuration file read-only, its database in the data directory.
UNIT_RUN_ARGS = ("-v", f"{CONF_DIR}/proxysql.cnf:{CONTAINER_CONF}:ro", "-v", f"{DATA_DIR}:{CONTAINER_DATA}",
                 "--entrypoint", "proxysql")
UNIT_COMMAND = f"-f -c {CONTAINER_CONF} -D {CONTAINER_DATA}"
UNIT_DESCRIPTION = "KeyBuzz ProxySQL (MariaDB Galera, one writer)"
