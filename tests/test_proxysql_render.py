"""ProxySQL layer without a ProxySQL binary (no registry this project reaches ships one): the rendered proxysql.cnf
parsed with a real libconfig reader (libconf), the admin SQL executed on ProxySQL 2.6.4's admin schema on SQLite
(tests/proxysql_standin.py: a stand-in for the storage, NOT ProxySQL), the drift diff, the host tool run by bash
against that stand-in, the bind addresses (never 10.0.0.20), the secrets each file may hold, and the writer
choice of ProxySQL's Galera rules.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import libconf
import pytest
from proxysql_standin import AdminSchemaStandIn

from keybuzz.proxysql import admin
from keybuzz.proxysql.admin import (
    STATE_QUERIES,
    Drift,
    NodeState,
    admin_sql,
    diff,
    expected_writer,
    fingerprint,
    needs_restart,
    parse_state,
    sql_file,
)
from keybuzz.proxysql.client import online_writers, parse_writer_output
from keybuzz.proxysql.settings import (
    OPEN_PORTS,
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
from keybuzz.render import render
from keybuzz.servers import load_servers

LB_ADDRESS = ipaddress.ip_address("10.0.0.20")
NODES = [("maria-01", "10.0.0.170"), ("maria-02", "10.0.0.171"), ("maria-03", "10.0.0.172")]
ADMIN_PW, APP_PW, MONITOR_PW = "adm-Zq8vN2rT5wLk9PmX", "app-Hc3pQ7sV1nBx6KdW", "mon-Ty4gR8uJ2eMz5LqA"
ROOT_PW, SST_PW = "root-Wp9kD3hN6sVb2QzX", "sst-Lm5tG1yC8rKd4JwE"
MARIADB_BRICK = {"MARIADB_ROOT_PASSWORD": ROOT_PW, "MARIADB_APP_USER": "erpnext", "MARIADB_APP_PASSWORD": APP_PW,
                 "MARIADB_SST_USER": "mariabackup", "MARIADB_SST_PASSWORD": SST_PW,
                 "MARIADB_MONITOR_USER": "proxysql_monitor", "MARIADB_MONITOR_PASSWORD": MONITOR_PW}
PROXYSQL_BRICK = {"PROXYSQL_ADMIN_USER": "proxysql-admin", "PROXYSQL_ADMIN_PASSWORD": ADMIN_PW}
SECRETS = ProxySQLSecrets.from_bricks(PROXYSQL_BRICK, MARIADB_BRICK)
ROWS = desired_rows(NODES, SECRETS)


def _unit() -> str:
    return render("common/container.service.j2", name="proxysql", image="proxysql/proxysql:2.6.4",
                  command=UNIT_COMMAND, run_args=list(UNIT_RUN_ARGS), reload=None, description=UNIT_DESCRIPTION,
                  stop_timeout=30)


def _state(standin: AdminSchemaStandIn) -> list[str]:
    """The host tool's output format computed in Python from the stand-in (the bash tool itself is run against
    the same stand-in in test_host_tool_*)."""
    lines = []
    for label, sql, secret_last in STATE_QUERIES:
        for row in standin.execute(sql):
            values = ["NULL" if v is None else str(v) for v in row]
            if secret_last:
                values[-1] = fingerprint(values[-1])
            lines.append("\t".join([label, *values]))
    return lines


def _applied(statements: list[str], standin: AdminSchemaStandIn | None = None) -> AdminSchemaStandIn:
    standin = standin or AdminSchemaStandIn()
    standin.run_file(sql_file(statements))
    return standin


def _deployed(standin: AdminSchemaStandIn | None = None, rows=None) -> AdminSchemaStandIn:
    """What a deploy run does to a running ProxySQL: read, diff, apply the fix, restart if a listener changed."""
    standin = standin or AdminSchemaStandIn()
    rows = rows or ROWS
    drifts = diff(rows, parse_state(_state(standin)))
    _applied(admin_sql(rows, drifts), standin)
    if needs_restart(drifts):
        standin.restart()
    return standin


# --------------------------------------------------------------------------- proxysql.cnf, parsed


def _cnf() -> dict:
    return libconf.loads(render_proxysql_cnf(ROWS))


def _rows_from_cnf(cnf: dict) -> dict[str, list[dict]]:
    """What ProxySQL 2.6.4 loads from the file at its first start (lib/ProxySQL_Config.cpp: `<module>_variables`
    become `<module>-<name>` rows; mysql_servers' `address`/`hostgroup` are hostname/hostgroup_id)."""
    variables = [{"variable_name": f"{section.split('_')[0]}-{k}", "variable_value": str(v)}
                 for section in ("mysql_variables", "admin_variables") for k, v in cnf[section].items()]
    servers = [{{"address": "hostname", "hostgroup": "hostgroup_id"}.get(k, k): v for k, v in s.items()}
               for s in cnf["mysql_servers"]]
    return {"global_variables": variables, "mysql_servers": servers,
            "mysql_users": [dict(u) for u in cnf["mysql_users"]],
            "mysql_galera_hostgroups": [dict(g) for g in cnf["mysql_galera_hostgroups"]],
            "mysql_query_rules": [dict(r) for r in cnf["mysql_query_rules"]]}


def test_cnf_parses_as_libconfig_and_binds_clients_on_all_addresses_admin_on_loopback():
    cnf = _cnf()
    assert cnf["datadir"] == "/var/lib/proxysql"
    assert cnf["mysql_variables"]["interfaces"] == "0.0.0.0:3306"
    assert cnf["admin_variables"]["mysql_ifaces"] == "127.0.0.1:6032"
    assert cnf["admin_variables"]["admin_credentials"] == f"proxysql-admin:{ADMIN_PW}"
    assert [s["address"] for s in cnf["mysql_servers"]] == [ip for _, ip in NODES]
    (galera,) = cnf["mysql_galera_hostgroups"]
    assert (galera["writer_hostgroup"], galera["backup_writer_hostgroup"], galera["reader_hostgroup"],
            galera["offline_hostgroup"], galera["max_writers"]) == (10, 20, 30, 9999, 1)
    (user,) = cnf["mysql_users"]
    assert (user["username"], user["password"], user["default_hostgroup"], user["transaction_persistent"]) == \
        ("erpnext", APP_PW, 10, 1)
    assert list(cnf["mysql_query_rules"]) == []


def test_first_start_from_the_cnf_is_the_desired_state():
    """ProxySQL's first start loads the file into its tables (here: ProxySQL's schema, so its CHECK constraints
    apply), then to runtime: the deploy's diff then finds nothing to change."""
    from_file = _rows_from_cnf(_cnf())
    standin = AdminSchemaStandIn()
    standin.execute("DELETE FROM runtime_global_variables")  # a first start: no listener bound yet
    for table, rows in from_file.items():
        for row in rows:
            if table == "global_variables":
                standin.execute(f"UPDATE global_variables SET variable_value={admin.sql_literal(row['variable_value'])}"
                                f" WHERE variable_name={admin.sql_literal(row['variable_name'])}")
                continue
            cols = list(row)
            standin.execute(f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
                            f"({', '.join(admin.sql_literal(row[c]) for c in cols)})")
    for module in ("MYSQL VARIABLES", "ADMIN VARIABLES", "MYSQL USERS", "MYSQL SERVERS", "MYSQL QUERY RULES"):
        standin.execute(f"LOAD {module} TO RUNTIME")
    assert diff(ROWS, parse_state(_state(standin))) == []


def test_cnf_refuses_a_value_it_could_not_quote():
    bad = ProxySQLSecrets("proxysql-admin", 'pw"x', "erpnext", APP_PW, "proxysql_monitor", MONITOR_PW)
    with pytest.raises(ValueError, match="double quote"):
        render_proxysql_cnf(desired_rows(NODES, bad))


# --------------------------------------------------------------------------- 10.0.0.20: bound nowhere


def _scalars(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _scalars(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _scalars(v)
    else:
        yield value


def _bind_addresses(listeners: str) -> list[ipaddress.IPv4Address]:
    """ProxySQL's `interfaces` / `mysql_ifaces`: `host:port` entries separated by `;`."""
    return [ipaddress.ip_address(item.rsplit(":", 1)[0]) for item in listeners.split(";") if item]


def test_no_rendered_file_and_no_command_binds_the_lb_address():
    cnf = _cnf()
    binds = _bind_addresses(cnf["mysql_variables"]["interfaces"]) + _bind_addresses(
        cnf["admin_variables"]["mysql_ifaces"])
    assert binds == [ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("127.0.0.1")]
    assert all(str(LB_ADDRESS) not in str(v) for v in _scalars(cnf))
    # the admin SQL: the listener variables it sets
    sql_binds = [row["variable_value"] for row in ROWS["global_variables"]
                 if row["variable_name"] in ("mysql-interfaces", "admin-mysql_ifaces")]
    assert [a for v in sql_binds for a in _bind_addresses(v)] == binds
    # the unit: docker run on the host network, no port published, no address in its arguments
    exec_start = next(line for line in _unit().splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv[:3] == ["/usr/bin/docker", "run", "--rm"] and "--network" in argv
    assert argv[argv.index("--network") + 1] == "host"
    assert not {"-p", "--publish", "-P"} & set(argv)
    for arg in argv:
        for token in arg.replace("=", " ").replace(":", " ").split():
            try:
                assert ipaddress.ip_address(token) != LB_ADDRESS
            except ValueError:
                pass
    # ProxySQL's own command line: config file and data directory only
    assert shlex.split(UNIT_COMMAND) == ["-f", "-c", "/etc/proxysql.cnf", "-D", "/var/lib/proxysql"]
    # the LB address is no host of servers.tsv: nothing deploys to it
    assert LB_ADDRESS not in {ipaddress.ip_address(s.ip) for s in load_servers().servers if s.ip}


def test_the_host_firewall_opens_the_client_port_and_never_the_admin_port():
    from keybuzz.base_os.settings import open_ports

    assert OPEN_PORTS == ("tcp/3306",)
    assert open_ports("proxysql") == (["3306"], [])  # what the base OS layer opens on proxysql-01/02


# --------------------------------------------------------------------------- secrets: only ProxySQL's


def test_mariadb_root_and_sst_passwords_never_reach_a_proxysql_file():
    everything = [render_proxysql_cnf(ROWS), render_admin_client_cnf(SECRETS), render_tool(), _unit(),
                  sql_file(admin_sql(ROWS, diff(ROWS, None))), repr(SECRETS)]
    for text in everything:
        assert ROOT_PW not in text and SST_PW not in text
    assert set(vars(SECRETS).values()) == {"proxysql-admin", ADMIN_PW, "erpnext", APP_PW, "proxysql_monitor",
                                           MONITOR_PW}


def test_admin_user_must_not_be_a_mysql_user():
    from keybuzz.errors import InputError

    with pytest.raises(InputError, match="PROXYSQL_ADMIN_USER must differ"):
        ProxySQLSecrets.from_bricks(dict(PROXYSQL_BRICK, PROXYSQL_ADMIN_USER="erpnext"), MARIADB_BRICK)


def test_secrets_only_in_the_secret_files():
    secret_values = (ADMIN_PW, APP_PW, MONITOR_PW)
    assert all(v in render_proxysql_cnf(ROWS) for v in secret_values)
    assert ADMIN_PW in render_admin_client_cnf(SECRETS)
    for public in (render_tool(), _unit(), repr(SECRETS), " ".join(q for _, q, _ in STATE_QUERIES)):
        assert not any(v in public for v in secret_values)


def test_drift_messages_never_show_a_secret():
    standin = _deployed()
    standin.execute("UPDATE mysql_users SET password='old-password-value'")
    standin.execute("UPDATE global_variables SET variable_value='old-monitor' WHERE variable_name="
                    "'mysql-monitor_password'")
    for module in ("MYSQL USERS", "MYSQL VARIABLES"):
        standin.execute(f"LOAD {module} TO RUNTIME")
    drifts = [str(d) for d in diff(ROWS, parse_state(_state(standin)))]
    assert drifts == ["global_variables: mysql-monitor_password differs", "mysql_users: erpnext: password differs"]
    text = " ".join(drifts) + " ".join(_state(standin))
    assert not any(v in text for v in ("old-password-value", "old-monitor", APP_PW, MONITOR_PW, ADMIN_PW))


# --------------------------------------------------------------------------- admin SQL on ProxySQL's schema


def test_full_admin_sql_runs_on_proxysql_schema_and_leaves_no_drift():
    standin = _applied(admin_sql(ROWS, diff(ROWS, None)))
    # everything applies at once but the client listener: refused while bound, saved to disk, so a restart
    # binds it (ProxySQL 2.6.4, as the stand-in emulates)
    assert [str(d) for d in diff(ROWS, parse_state(_state(standin)))] == [
        "global_variables: mysql-interfaces is 0.0.0.0:6033, want 0.0.0.0:3306"]
    standin.restart()
    assert diff(ROWS, parse_state(_state(standin))) == []
    # saved to disk too: what ProxySQL restarts with
    disk = standin.execute("SELECT hostname, weight FROM disk_mysql_servers ORDER BY hostname")
    assert disk == [("10.0.0.170", 1000), ("10.0.0.171", 999), ("10.0.0.172", 998)]
    assert standin.execute("SELECT variable_value FROM disk_global_variables WHERE variable_name='mysql-interfaces'") \
        == [("0.0.0.0:3306",)]


def test_defaults_of_a_fresh_proxysql_are_all_drift():
    drifts = {str(d) for d in diff(ROWS, parse_state(_state(AdminSchemaStandIn())))}
    assert "global_variables: mysql-interfaces is 0.0.0.0:6033, want 0.0.0.0:3306" in drifts
    assert "global_variables: admin-mysql_ifaces is 0.0.0.0:6032, want 127.0.0.1:6032" in drifts
    assert "mysql_servers: missing 10.0.0.170:3306" in drifts and "mysql_users: missing erpnext" in drifts
    assert needs_restart(diff(ROWS, parse_state(_state(AdminSchemaStandIn()))))


def test_galera_monitor_moves_are_not_drift():
    standin = _deployed()
    standin.galera_monitor(writer="10.0.0.170")
    assert diff(ROWS, parse_state(_state(standin))) == []
    standin.galera_monitor(writer="10.0.0.171", offline=("10.0.0.170",))
    assert diff(ROWS, parse_state(_state(standin))) == []
    assert sorted(standin.execute("SELECT hostgroup_id, hostname FROM runtime_mysql_servers")) == [
        (10, "10.0.0.171"), (20, "10.0.0.172"), (30, "10.0.0.172"), (9999, "10.0.0.170")]


def test_drift_is_found_fixed_only_where_it_is_and_then_zero():
    standin = _deployed()
    standin.galera_monitor(writer="10.0.0.170")
    # someone edits the running ProxySQL by hand
    standin.execute("UPDATE mysql_servers SET weight=1 WHERE hostname='10.0.0.172'")
    standin.execute("INSERT INTO mysql_servers (hostgroup_id, hostname, port) VALUES (10, '10.9.9.9', 3306)")
    standin.execute("INSERT INTO mysql_query_rules (rule_id, active, match_digest, destination_hostgroup, apply) "
                    "VALUES (1, 1, '^SELECT', 30, 1)")
    for module in ("MYSQL SERVERS", "MYSQL QUERY RULES"):
        standin.execute(f"LOAD {module} TO RUNTIME")
    drifts = diff(ROWS, parse_state(_state(standin)))
    assert [str(d) for d in drifts] == [
        "mysql_servers: 10.0.0.172:3306: weight is 1, want 998",
        "mysql_servers: unexpected row 10.9.9.9:3306",
        "mysql_query_rules: unexpected rule 1",
    ]
    assert not needs_restart(drifts)
    fix = admin_sql(ROWS, drifts)
    assert not any(s.startswith(("UPDATE global_variables", "DELETE FROM mysql_users")) for s in fix)
    assert [s for s in fix if s.startswith(("LOAD", "SAVE"))] == [
        "LOAD MYSQL SERVERS TO RUNTIME", "SAVE MYSQL SERVERS TO DISK",
        "LOAD MYSQL QUERY RULES TO RUNTIME", "SAVE MYSQL QUERY RULES TO DISK"]
    _applied(fix, standin)
    standin.galera_monitor(writer="10.0.0.170")
    assert diff(ROWS, parse_state(_state(standin))) == []
    assert admin_sql(ROWS, diff(ROWS, parse_state(_state(standin)))) == []


def test_a_changed_setting_is_drift_on_the_galera_row():
    standin = _deployed()
    wanted = desired_rows(NODES, SECRETS, ProxySQLSettings(max_transactions_behind=50))
    assert [str(d) for d in diff(wanted, parse_state(_state(standin)))] == [
        "mysql_galera_hostgroups: 10: max_transactions_behind is 100, want 50"]
    _applied(admin_sql(wanted, diff(wanted, parse_state(_state(standin)))), standin)
    assert diff(wanted, parse_state(_state(standin))) == []


def test_admin_variables_are_loaded_last_and_variables_saved_before_loaded():
    statements = admin_sql(ROWS, diff(ROWS, None))
    loads = [s for s in statements if s.startswith("LOAD")]
    assert loads[0] == "LOAD MYSQL VARIABLES TO RUNTIME" and loads[-1] == "LOAD ADMIN VARIABLES TO RUNTIME"
    for module in ("MYSQL VARIABLES", "ADMIN VARIABLES"):
        assert statements.index(f"SAVE {module} TO DISK") < statements.index(f"LOAD {module} TO RUNTIME")


def test_a_listener_change_survives_the_restart_only_if_saved_before_the_load():
    """The order matters on ProxySQL 2.6.4 (emulated): LOAD then SAVE would save the refused old listener."""
    standin = AdminSchemaStandIn()
    wrong_order = [s for s in admin_sql(ROWS, diff(ROWS, None)) if not s.startswith(("LOAD", "SAVE"))]
    wrong_order += ["LOAD MYSQL VARIABLES TO RUNTIME", "SAVE MYSQL VARIABLES TO DISK"]
    _applied(wrong_order, standin)
    standin.restart()
    assert any("mysql-interfaces" in str(d) for d in diff(ROWS, parse_state(_state(standin))))
    assert diff(ROWS, parse_state(_state(_deployed()))) == []  # the layer's order: SAVE, LOAD, restart


def test_schema_refuses_what_proxysql_refuses():
    """The stand-in carries ProxySQL's CHECK constraints: a reader hostgroup equal to the writer one fails."""
    import sqlite3

    bad = [dict(ROWS["mysql_galera_hostgroups"][0], reader_hostgroup=10)]
    rows = dict(ROWS, mysql_galera_hostgroups=bad)
    with pytest.raises(sqlite3.IntegrityError):
        _applied(admin_sql(rows, [Drift("mysql_galera_hostgroups", "x")]))


# --------------------------------------------------------------------------- the host tool, run by bash


@pytest.fixture
def host_tool(tmp_path):
    """keybuzz-proxysql rendered with a test option file and port, `mariadb` = the stand-in's client stub, a TCP
    listener on loopback standing for the admin port (the tool's "is anything listening" probe)."""
    db = tmp_path / "admin.db"
    standin = AdminSchemaStandIn(db)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "mariadb"
    stub.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).parent / 'proxysql_standin.py'} \"$@\"\n")
    stub.chmod(0o755)
    cnf = tmp_path / "client.cnf"
    cnf.write_text(render_admin_client_cnf(SECRETS))
    cnf.chmod(0o600)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    tool = tmp_path / "keybuzz-proxysql"
    tool.write_text(render_tool(client_cnf=str(cnf), admin_port=listener.getsockname()[1]))
    tool.chmod(0o755)
    argv_log = tmp_path / "argv.log"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PROXYSQL_STANDIN_DB=str(db),
               PROXYSQL_STANDIN_ARGV_LOG=str(argv_log))

    def run(*args, **kw):
        return subprocess.run([str(tool), *args], env=env, capture_output=True, text=True, timeout=60, **kw)

    yield standin, run, argv_log, listener
    listener.close()


def test_host_tool_state_apply_and_writer_against_the_stand_in(host_tool, tmp_path):
    standin, run, argv_log, _ = host_tool
    before = run("state")
    assert before.returncode == 0, before.stderr
    assert diff(ROWS, parse_state(before.stdout.splitlines()))  # ProxySQL's defaults: drift
    sql = tmp_path / "apply.sql"
    sql.write_text(sql_file(admin_sql(ROWS, diff(ROWS, parse_state(before.stdout.splitlines())))))
    applied = run("apply", str(sql))
    assert applied.returncode == 0, applied.stderr
    standin.restart()  # mysql-interfaces changed: the deploy restarts ProxySQL (needs_restart)
    after = run("state")
    assert after.stdout.splitlines() == _state(standin)  # the bash tool prints what the Python side expects
    assert diff(ROWS, parse_state(after.stdout.splitlines())) == []
    assert fingerprint(APP_PW) in after.stdout and APP_PW not in after.stdout and MONITOR_PW not in after.stdout
    standin.galera_monitor(writer="10.0.0.170")
    assert online_writers(parse_writer_output(run("writer").stdout)) == ["10.0.0.170"]
    # no secret ever on the client's command line
    logged = argv_log.read_text()
    assert logged and not any(v in logged for v in (ADMIN_PW, APP_PW, MONITOR_PW))


def test_host_tool_says_down_when_nothing_listens(host_tool):
    _, run, _, listener = host_tool
    listener.close()
    result = run("state")
    assert (result.returncode, result.stdout) == (0, "down\n")
    assert parse_state(result.stdout.splitlines()) is None


# --------------------------------------------------------------------------- the writer ProxySQL will choose

SYNCED = (4, "0", 0, "OFF", "NONE", "OFF", "Primary", "DISABLED")


def _nodes(*rows) -> list[NodeState]:
    weights = [1000, 999, 998]
    return [NodeState(ip, 3306, w, r) for (_, ip), w, r in zip(NODES, weights, rows, strict=True)]


def test_writer_is_the_first_node_when_all_are_synced():
    assert expected_writer(_nodes(SYNCED, SYNCED, SYNCED)) == ["10.0.0.170"]


def test_writer_moves_when_the_first_node_dies_and_comes_back_when_it_is_synced():
    assert expected_writer(_nodes(None, SYNCED, SYNCED)) == ["10.0.0.171"]
    joining = (1, "0", 0, "OFF", "NONE", "OFF", "Primary", "DISABLED")  # Joining: not a candidate
    assert expected_writer(_nodes(joining, SYNCED, SYNCED)) == ["10.0.0.171"]
    assert expected_writer(_nodes(SYNCED, SYNCED, SYNCED)) == ["10.0.0.170"]  # failback: highest weight


def test_non_primary_desynced_rejecting_or_read_only_nodes_are_never_writer():
    non_primary = (4, "0", 0, "OFF", "NONE", "OFF", "non-Primary", "DISABLED")
    desynced = (4, "0", 0, "ON", "NONE", "OFF", "Primary", "DISABLED")
    rejecting = (4, "0", 0, "OFF", "ALL", "OFF", "Primary", "DISABLED")
    read_only = (4, "1", 0, "OFF", "NONE", "OFF", "Primary", "DISABLED")
    assert expected_writer(_nodes(non_primary, desynced, rejecting)) == []
    assert expected_writer(_nodes(read_only, desynced, SYNCED)) == ["10.0.0.172"]


def test_a_donor_is_writer_only_if_it_accepts_queries():
    donor_open = (2, "0", 0, "OFF", "NONE", "OFF", "Primary", "DISABLED")
    donor_closed = (2, "0", 0, "OFF", "NONE", "ON", "Primary", "DISABLED")
    assert expected_writer(_nodes(donor_open, SYNCED, SYNCED)) == ["10.0.0.170"]
    assert expected_writer(_nodes(donor_closed, SYNCED, SYNCED)) == ["10.0.0.171"]
