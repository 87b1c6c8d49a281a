"""ProxySQL's running configuration versus the desired rows: what the host tool reads, the pure diff, and the
admin SQL that fixes a difference. Also `expected_writer`: which node ProxySQL's Galera rules make the writer.

ProxySQL keeps three copies of its configuration: memory (the `mysql_servers`... tables an admin edits), runtime
(what it uses, `runtime_*`) and disk (proxysql.db). Once proxysql.db exists, proxysql.cnf is ignored at start.
So the deploy reads runtime (`keybuzz-proxysql state` on the host, through the loopback admin interface), diffs
it against `desired_rows` here, and when something differs writes the whole table again in memory, then
`LOAD ... TO RUNTIME` and `SAVE ... TO DISK` (variables: SAVE first, see admin_sql). No difference: no SQL, no
change reported.

Secrets are never read back in clear: the host tool prints `sha256:<hex>` of a secret column (the last column of
its query), and the diff compares the sha256 of the desired value. ProxySQL 2.6 keeps mysql_users passwords in
clear in runtime (admin-hash_passwords was removed, sysown/proxysql#4218; lib/ProxySQL_Admin.cpp).

    >>> desired = {"global_variables": [{"variable_name": "mysql-interfaces", "variable_value": "0.0.0.0:3306"}],
    ...            "mysql_query_rules": []}
    >>> actual = parse_state(["global_variables\\tmysql-interfaces\\t0.0.0.0:6033",
    ...                       "mysql_query_rules\\t1\\t1\\t^SELECT\\tNULL\\t30\\t1"])
    >>> [str(d) for d in diff(desired, actual)]
    ['global_variables: mysql-interfaces is 0.0.0.0:6033, want 0.0.0.0:3306', 'mysql_query_rules: unexpected rule 1']
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from keybuzz.proxysql.settings import MANAGED_HOSTGROUPS, RESTART_VARIABLES, SECRET_VARIABLES

NULL = "NULL"  # how `mariadb --batch` prints SQL NULL


@dataclass(frozen=True)
class TableSpec:
    """One admin table the layer manages: the runtime columns read (in SELECT order, the secret one last),
    which identify a row, and the LOAD/SAVE module it belongs to."""

    table: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    module: str  # LOAD <module> TO RUNTIME / SAVE <module> TO DISK
    secret: str | None = None  # the last column, read as sha256

    def select(self, where: str = "") -> str:
        return (f"SELECT {', '.join(self.columns)} FROM runtime_{self.table}{where} "
                f"ORDER BY {', '.join(self.columns[:len(self.key) + 1])}")


SPECS: dict[str, TableSpec] = {s.table: s for s in (
    TableSpec("global_variables", ("variable_name", "variable_value"), ("variable_name",), "VARIABLES"),
    TableSpec("mysql_users", ("username", "active", "default_hostgroup", "default_schema", "transaction_persistent",
                              "fast_forward", "max_connections", "comment", "password"),
              ("username",), "MYSQL USERS", secret="password"),
    TableSpec("mysql_servers", ("hostname", "port", "hostgroup_id", "weight", "max_connections",
                                "max_replication_lag", "use_ssl", "compression", "comment"),
              ("hostname", "port"), "MYSQL SERVERS"),
    TableSpec("mysql_galera_hostgroups", ("writer_hostgroup", "backup_writer_hostgroup", "reader_hostgroup",
                                          "offline_hostgroup", "active", "max_writers", "writer_is_also_reader",
                                          "max_transactions_behind", "comment"),
              ("writer_hostgroup",), "MYSQL SERVERS"),
    TableSpec("mysql_query_rules", ("rule_id", "active", "match_digest", "match_pattern", "destination_hostgroup",
                                    "apply"), ("rule_id",), "MYSQL QUERY RULES"),
)}

# Variables are read in two queries: the plain ones, and the secret ones (value last, read as sha256).
_HASHED_VARIABLES_LABEL = "secret_variables"


def state_queries(variable_names: list[str]) -> list[tuple[str, str, bool]]:
    """(label, SELECT, secret_last) run by `keybuzz-proxysql state` on the host, in order.

    >>> [(label, secret) for label, _, secret in state_queries(["mysql-interfaces", "mysql-monitor_password"])]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('global_variables', False), ('secret_variables', True), ('mysql_users', True), ('mysql_servers', False),
     ('mysql_galera_hostgroups', False), ('mysql_query_rules', False)]
    """
    def names(secret: bool) -> str:
        chosen = sorted(n for n in variable_names if (n in SECRET_VARIABLES) == secret)
        return ", ".join(f"'{n}'" for n in chosen) or "''"

    variables = SPECS["global_variables"]
    queries = [("global_variables", variables.select(f" WHERE variable_name IN ({names(False)})"), False),
               (_HASHED_VARIABLES_LABEL, variables.select(f" WHERE variable_name IN ({names(True)})"), True)]
    for spec in SPECS.values():
        if spec.table != "global_variables":
            queries.append((spec.table, spec.select(), spec.secret is not None))
    return queries


def managed_variable_names() -> list[str]:
    from keybuzz.proxysql.settings import ProxySQLSecrets, desired_rows

    blank = ProxySQLSecrets("u", "p", "u", "p", "u", "p")
    return [r["variable_name"] for r in desired_rows([], blank)["global_variables"]]


STATE_QUERIES = state_queries(managed_variable_names())


def fingerprint(value) -> str:
    """How a secret is compared: `sha256:<hex>` of its text, as the host tool prints it.

    >>> fingerprint("abc")
    'sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'
    """
    return "sha256:" + hashlib.sha256(str(value).encode()).hexdigest()


def parse_state(lines: list[str]) -> dict[str, list[dict]] | None:
    """The host tool's output -> {table: [row]} (values as text, NULL as None; secret columns as fingerprints).
    None when ProxySQL's admin interface does not answer (no ProxySQL yet: a first install, or --dry).

    >>> parse_state(["down"]) is None
    True
    >>> parse_state(["secret_variables\\tmysql-monitor_password\\tsha256:ab"])["global_variables"]
    [{'variable_name': 'mysql-monitor_password', 'variable_value': 'sha256:ab'}]
    """
    if not lines or lines[0].strip() == "down":
        return None
    state: dict[str, list[dict]] = {table: [] for table in SPECS}
    for line in lines:
        if not line.strip():
            continue
        label, *values = line.rstrip("\n").split("\t")
        table = "global_variables" if label == _HASHED_VARIABLES_LABEL else label
        spec = SPECS.get(table)
        if spec is None or len(values) != len(spec.columns):
            raise ValueError(f"keybuzz-proxysql state: unexpected line for {label!r} ({len(values)} columns)")
        state[table].append({c: (None if v == NULL else v) for c, v in zip(spec.columns, values, strict=True)})
    return state


# ---------------------------------------------------------------- the diff


@dataclass(frozen=True)
class Drift:
    """One difference between runtime and the desired rows; its text never holds a secret value."""

    table: str
    what: str

    def __str__(self) -> str:
        return f"{self.table}: {self.what}"


def _text(value) -> str | None:
    return None if value is None else str(value)


def _comparable(spec: TableSpec, row: dict, desired: bool) -> dict[str, str | None]:
    """A row as the diff compares it: every read column as text, the secret one as its fingerprint."""
    out = {}
    for column in spec.columns:
        if column not in row:
            continue
        value = _text(row[column])
        if desired and value is not None and (column == spec.secret or (
                spec.table == "global_variables" and column == "variable_value"
                and row["variable_name"] in SECRET_VARIABLES)):
            value = fingerprint(value)
        out[column] = value
    return out


def _servers_view(rows: list[dict], desired: bool) -> tuple[dict[tuple, dict], list[str]]:
    """mysql_servers as configured, whatever the Galera monitor did at runtime: each backend once (the monitor
    copies and moves it between the writer, backup writer, reader and offline hostgroups and sets its status),
    compared without its hostgroup; a runtime row in another hostgroup is itself a drift."""
    spec = SPECS["mysql_servers"]
    view: dict[tuple, dict] = {}
    foreign = []
    for row in rows:
        if not desired and int(row["hostgroup_id"]) not in MANAGED_HOSTGROUPS:
            foreign.append(f"{row['hostname']}:{row['port']} in hostgroup {row['hostgroup_id']}")
            continue
        r = {k: v for k, v in _comparable(spec, row, desired).items() if k != "hostgroup_id"}
        view.setdefault((r["hostname"], r["port"]), r)
    return view, foreign


def _keyed(spec: TableSpec, rows: list[dict], desired: bool) -> dict[tuple, dict]:
    out = {}
    for row in rows:
        r = _comparable(spec, row, desired)
        out.setdefault(tuple(r[k] for k in spec.key), r)  # runtime_mysql_users: one row per frontend/backend
    return out


def diff(desired: dict[str, list[dict]], actual: dict[str, list[dict]] | None) -> list[Drift]:
    """Differences between the desired rows and the runtime state read on a host (None: nothing is running,
    everything is to be applied). Only desired variables are compared (the others keep ProxySQL's defaults).

    >>> d = {"mysql_users": [{"username": "erpnext", "password": "pw", "active": 1}]}
    >>> [str(x) for x in diff(d, {"mysql_users": [{"username": "erpnext", "password": fingerprint("pw"),
    ...                                            "active": "1"}]})]
    []
    >>> [str(x) for x in diff(d, {"mysql_users": [{"username": "erpnext", "password": fingerprint("old"),
    ...                                            "active": "1"}]})]
    ['mysql_users: erpnext: password differs']
    >>> [str(x) for x in diff(d, None)]
    ['mysql_users: not running']
    """
    if actual is None:
        return [Drift(table, "not running") for table in desired]
    drifts: list[Drift] = []
    for table, rows in desired.items():
        spec = SPECS[table]
        have_rows = actual.get(table, [])
        if table == "global_variables":
            have = {r["variable_name"]: r["variable_value"] for r in have_rows}
            for row in rows:
                name, want = row["variable_name"], _comparable(spec, row, True)["variable_value"]
                if name not in have:
                    drifts.append(Drift(table, f"{name} missing"))
                elif have[name] != want:
                    shown = "differs" if name in SECRET_VARIABLES else f"is {have[name]}, want {want}"
                    drifts.append(Drift(table, f"{name} {shown}"))
            continue
        if table == "mysql_servers":
            want_view, _ = _servers_view(rows, True)
            have_view, foreign = _servers_view(have_rows, False)
            drifts += [Drift(table, f"unexpected {f}") for f in foreign]
        else:
            want_view, have_view = _keyed(spec, rows, True), _keyed(spec, have_rows, False)
        what = {"mysql_query_rules": "rule"}.get(table, "row")
        for key in sorted(set(want_view) | set(have_view), key=lambda k: tuple(str(x) for x in k)):
            name = ":".join(str(k) for k in key)
            if key not in have_view:
                drifts.append(Drift(table, f"missing {name}"))
            elif key not in want_view:
                drifts.append(Drift(table, f"unexpected {what} {name}"))
            else:
                for column, want in want_view[key].items():
                    got = have_view[key].get(column)
                    if got != want:
                        shown = "differs" if column == spec.secret else f"is {got}, want {want}"
                        drifts.append(Drift(table, f"{name}: {column} {shown}"))
    return drifts


def drifts_to_fix(desired: dict[str, list[dict]], running: dict[str, list[dict]] | None,
                  has_own_db: bool) -> list[Drift]:
    """What a deploy run fixes through the admin interface. Nothing answers and no proxysql.db: a first start is
    coming, which reads proxysql.cnf (the desired rows): nothing to fix. Nothing answers but proxysql.db exists:
    ProxySQL will start from its own database, whatever it holds: everything is rewritten once it answers.

    >>> d = {"mysql_query_rules": []}
    >>> drifts_to_fix(d, None, has_own_db=False), [str(x) for x in drifts_to_fix(d, None, has_own_db=True)]
    ([], ['mysql_query_rules: not running'])
    >>> drifts_to_fix(d, {"mysql_query_rules": []}, has_own_db=True)
    []
    """
    if running is None and not has_own_db:
        return []
    return diff(desired, running)


def needs_restart(drifts: list[Drift]) -> bool:
    """True when a drifted variable only takes effect at ProxySQL's start (the client listener).

    >>> needs_restart([Drift("global_variables", "mysql-interfaces is 0.0.0.0:6033, want 0.0.0.0:3306")])
    True
    """
    return any(d.table == "global_variables" and d.what.split(" ", 1)[0] in RESTART_VARIABLES for d in drifts)


# ---------------------------------------------------------------- the admin SQL


def sql_literal(value) -> str:
    """A value in ProxySQL's admin SQL (SQLite syntax): NULL, an integer, or a single-quoted string.

    >>> sql_literal(None), sql_literal(10), sql_literal("it's")
    ('NULL', '10', "'it''s'")
    """
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _modules_for(drifts: list[Drift], desired: dict[str, list[dict]]) -> list[str]:
    """Tables to rewrite, in the order they are applied: variables first (the monitor's login is needed by the
    Galera checks), then users, servers and hostgroups, rules."""
    drifted = {d.table for d in drifts}
    if "mysql_galera_hostgroups" in drifted or "mysql_servers" in drifted:
        drifted |= {"mysql_servers", "mysql_galera_hostgroups"}  # loaded together (LOAD MYSQL SERVERS)
    return [t for t in ("global_variables", "mysql_users", "mysql_servers", "mysql_galera_hostgroups",
                        "mysql_query_rules") if t in drifted and t in desired]


def admin_sql(desired: dict[str, list[dict]], drifts: list[Drift]) -> list[str]:
    """The admin statements that bring memory, runtime and disk to the desired rows for every drifted table
    (the whole table is written again: its rows are few, and a partial edit could leave stray rows).
    Empty when nothing drifted. The statements hold secrets: they go to the host in a 0600 file, never on a
    command line.

    >>> d = {"mysql_query_rules": []}
    >>> admin_sql(d, [Drift("mysql_query_rules", "unexpected rule 1")])
    ['DELETE FROM mysql_query_rules', 'LOAD MYSQL QUERY RULES TO RUNTIME', 'SAVE MYSQL QUERY RULES TO DISK']
    >>> admin_sql(d, [])
    []
    """
    statements: list[str] = []
    loads: list[str] = []
    for table in _modules_for(drifts, desired):
        rows = desired[table]
        if table == "global_variables":
            modules = []
            for row in rows:
                statements.append(f"UPDATE global_variables SET variable_value={sql_literal(row['variable_value'])} "
                                  f"WHERE variable_name={sql_literal(row['variable_name'])}")
                module = "ADMIN VARIABLES" if row["variable_name"].startswith("admin-") else "MYSQL VARIABLES"
                if module not in modules:
                    modules.append(module)
            # MYSQL first; ADMIN last of all (admin-mysql_ifaces may rebind the interface this session uses)
            loads += [m for m in ("MYSQL VARIABLES",) if m in modules]
            if "ADMIN VARIABLES" in modules:
                loads.append("ADMIN VARIABLES@last")
            continue
        statements.append(f"DELETE FROM {table}")
        for row in rows:
            columns = list(row)
            statements.append(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                              f"({', '.join(sql_literal(row[c]) for c in columns)})")
        module = SPECS[table].module
        if module not in loads:
            loads.append(module)
    ordered = [m for m in loads if not m.endswith("@last")] + [m.removesuffix("@last") for m in loads
                                                                if m.endswith("@last")]
    for module in ordered:
        if module.endswith("VARIABLES"):
            # SAVE first: LOAD refuses a variable that only a restart applies (mysql-interfaces while bound) and
            # resets it in memory to the running value (lib/ProxySQL_Admin.cpp, "Resetting to current"), so a
            # SAVE after it would put the old value back on disk, and the restart would bind the old listener
            statements += [f"SAVE {module} TO DISK", f"LOAD {module} TO RUNTIME"]
        else:
            statements += [f"LOAD {module} TO RUNTIME", f"SAVE {module} TO DISK"]
    return statements


def sql_file(statements: list[str]) -> str:
    """The statements as the file `keybuzz-proxysql apply` feeds to the admin client (one per line)."""
    return "".join(f"{s};\n" for s in statements)


# ---------------------------------------------------------------- the writer ProxySQL will choose


# The query ProxySQL 2.6.4's monitor runs on a MariaDB (server version not 5.7/8: lib/MySQL_Monitor.cpp, the
# Galera health check), as the monitor user: run it on each node to build its NodeState.
GALERA_CHECK_QUERY = (
    "SELECT (SELECT VARIABLE_VALUE FROM INFORMATION_SCHEMA.GLOBAL_STATUS WHERE VARIABLE_NAME='WSREP_LOCAL_STATE') "
    "wsrep_local_state, @@read_only read_only, (SELECT VARIABLE_VALUE FROM INFORMATION_SCHEMA.GLOBAL_STATUS "
    "WHERE VARIABLE_NAME='WSREP_LOCAL_RECV_QUEUE') wsrep_local_recv_queue, @@wsrep_desync wsrep_desync, "
    "@@wsrep_reject_queries wsrep_reject_queries, @@wsrep_sst_donor_rejects_queries "
    "wsrep_sst_donor_rejects_queries, (SELECT VARIABLE_VALUE FROM INFORMATION_SCHEMA.GLOBAL_STATUS WHERE "
    "VARIABLE_NAME='WSREP_CLUSTER_STATUS') wsrep_cluster_status, (SELECT 'DISABLED') pxc_maint_mode"
)


def _off(value) -> bool:
    return str(value).upper() in ("NO", "OFF", "0")


@dataclass(frozen=True)
class NodeState:
    """One backend as ProxySQL's Galera check sees it: None values mean "did not answer"."""

    hostname: str
    port: int
    weight: int
    row: tuple | None  # the GALERA_CHECK_QUERY row, or None (connection failed)

    def eligible_writer(self, max_transactions_behind: int = 0) -> bool:
        """ProxySQL 2.6.4's decision (lib/MySQL_Monitor.cpp): offline if not Primary, desynced, not Synced (4)
        unless a Donor (2) that accepts queries, rejecting queries, or read_only; else a writer candidate."""
        if self.row is None:
            return False
        local_state, read_only, _queue, desync, reject, donor_rejects, cluster_status, _maint = self.row
        state = int(local_state) if local_state is not None else 0
        if str(cluster_status) != "Primary" or not _off(desync):
            return False
        if state != 4 and (state != 2 or not _off(donor_rejects)):
            return False
        if str(reject).upper() != "NONE":
            return False
        return _off(read_only)


def expected_writer(nodes: list[NodeState], max_writers: int = 1) -> list[str]:
    """The backend(s) ProxySQL's Galera hostgroup rules put in the writer hostgroup, from the nodes' wsrep state:
    the eligible ones in `ORDER BY weight DESC, hostname DESC, port DESC` (converge_galera_config), the first
    `max_writers` of them. Empty: no node can be the writer.

    >>> synced = (4, "0", 0, "OFF", "NONE", "OFF", "Primary", "DISABLED")
    >>> donor_blocking = (2, "0", 0, "OFF", "NONE", "ON", "Primary", "DISABLED")
    >>> nodes = [NodeState("10.0.0.170", 3306, 1000, donor_blocking), NodeState("10.0.0.171", 3306, 999, synced),
    ...          NodeState("10.0.0.172", 3306, 998, synced)]
    >>> expected_writer(nodes)
    ['10.0.0.171']
    >>> expected_writer([NodeState(n.hostname, n.port, 1, synced) for n in nodes])   # equal weights: text order
    ['10.0.0.172']
    """
    eligible = [n for n in nodes if n.eligible_writer()]
    # ProxySQL sorts in SQLite: hostname as text, descending; weight and port as integers, descending
    eligible.sort(key=lambda n: (n.weight, n.hostname, n.port), reverse=True)
    return [n.hostname for n in eligible[:max_writers]]


def read_node_state(hostname: str, port: int, weight: int, user: str, password: str,
                    timeout: float = 3.0) -> NodeState:
    """NodeState of one MariaDB node, read as ProxySQL's monitor reads it: GALERA_CHECK_QUERY as the monitor user
    (its grants are part of what this proves). A node that does not answer has row None (ProxySQL: offline).

    Example (a Galera testbed, the monitor user of keybuzz.mariadb.testbed)::

        nodes = [read_node_state(ip, 3306, w, "proxysql_monitor", pw) for ip, w in zip(ips, server_weights(3))]
        expected_writer(nodes)    # ['192.168.230.11']
    """
    import pymysql

    try:
        conn = pymysql.connect(host=hostname, port=port, user=user, password=password, connect_timeout=timeout,
                               read_timeout=timeout)
    except pymysql.err.Error:
        return NodeState(hostname, port, weight, None)
    try:
        with conn.cursor() as cur:
            cur.execute(GALERA_CHECK_QUERY)
            return NodeState(hostname, port, weight, tuple(cur.fetchone()))
    except pymysql.err.Error:
        return NodeState(hostname, port, weight, None)
    finally:
        conn.close()
