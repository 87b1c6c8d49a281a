"""The MariaDB layer's rendered files (templates/mariadb/) and its bootstrap decision, pure: no Docker."""

from __future__ import annotations

import configparser
import shlex
import subprocess

import pytest

from keybuzz.mariadb import galera
from keybuzz.mariadb.settings import (
    DEFAULT,
    OPEN_PORTS,
    Accounts,
    mysqld_run_args,
    render_my_cnf,
    render_node_script,
    render_sst_auth,
    render_users_sql,
)

PEERS = ["10.0.0.41", "10.0.0.42", "10.0.0.43"]
ACCOUNTS = Accounts("r00t-Pw_1", "erpnext", "app-Pw_2", "mariabackup", "sst-Pw_3", "proxysql_monitor", "mon-Pw_4")
U = "6ee8d6e8-0000-11ef-8000-000000000001"


def _cnf(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(allow_no_value=True, interpolation=None, strict=True)
    # MariaDB's !include / !includedir directives are not INI: checked separately
    parser.read_string("\n".join(line for line in text.splitlines() if not line.startswith("!")))
    return parser


@pytest.fixture(scope="module")
def cnf_text():
    return render_my_cnf("maria-02", "10.0.0.42", PEERS)


def test_my_cnf_binds_clients_to_private_and_loopback_and_galera_to_private_only(cnf_text):
    cnf = _cnf(cnf_text)
    assert cnf["mysqld"]["bind_address"] == "10.0.0.42,127.0.0.1"
    assert cnf["mysqld"]["port"] == "3306"
    galera_ = cnf["galera"]
    assert galera_["wsrep_cluster_address"] == "gcomm://10.0.0.41,10.0.0.42,10.0.0.43"
    assert galera_["wsrep_node_address"] == "10.0.0.42"
    assert galera_["wsrep_sst_receive_address"] == "10.0.0.42:4444"
    options = dict(o.split("=", 1) for o in galera_["wsrep_provider_options"].strip('"').split(";"))
    assert options["gmcast.listen_addr"] == "tcp://10.0.0.42:4567"
    assert options["ist.recv_addr"] == "10.0.0.42:4568" and options["ist.recv_bind"] == "10.0.0.42"
    assert options["pc.recovery"] == "TRUE"
    assert "0.0.0.0" not in cnf_text and "10.0.0.20" not in cnf_text  # never the LB address (design §A)


def test_my_cnf_has_galera_requirements_and_no_bootstrap_flag(cnf_text):
    cnf = _cnf(cnf_text)
    mysqld = cnf["mysqld"]
    assert (mysqld["binlog_format"], mysqld["default_storage_engine"], mysqld["innodb_autoinc_lock_mode"]) == (
        "ROW", "InnoDB", "2")
    assert mysqld["innodb_flush_log_at_trx_commit"] == "1"
    assert mysqld["character_set_server"] == "utf8mb4" and mysqld["collation_server"] == "utf8mb4_unicode_ci"
    assert cnf["galera"]["wsrep_sst_method"] == "mariabackup"
    assert cnf["galera"]["wsrep_provider"] == DEFAULT.provider
    # the only way a new cluster starts is the transient bootstrap.d file; the config never carries it
    assert not [k for section in cnf.sections() for k in cnf[section] if "new_cluster" in k or "new-cluster" in k]
    assert cnf["galera"]["wsrep_cluster_address"] != "gcomm://"
    includes = [line for line in cnf_text.splitlines() if line.startswith("!")]
    assert includes == [f"!include {DEFAULT.container_conf_dir}/sst-auth.cnf",
                        f"!includedir {DEFAULT.container_conf_dir}/bootstrap.d"]
    assert "wsrep_sst_auth" not in cnf["galera"]  # the SST password lives in the 0600 sst-auth.cnf only


def test_sst_auth_holds_the_sst_user():
    cnf = _cnf(render_sst_auth(ACCOUNTS.sst_user, ACCOUNTS.sst_password))
    assert cnf["galera"]["wsrep_sst_auth"] == "mariabackup:sst-Pw_3"


def test_users_sql_statements_are_idempotent_and_scoped_to_the_private_network():
    sql = render_users_sql(ACCOUNTS, "10.0.0.0/16")
    statements = [s.strip() for s in sql.split(";\n") if s.strip() and not s.strip().startswith("--")]
    statements = [" ".join(line for line in s.splitlines() if not line.startswith("--")).rstrip(";")
                  for s in statements]
    for s in statements:
        assert s.split()[0] in ("CREATE", "ALTER", "GRANT", "DROP"), s
        if s.startswith("CREATE USER") or s.startswith("CREATE DATABASE"):
            assert "IF NOT EXISTS" in s
        if s.startswith("DROP"):
            assert "IF EXISTS" in s
    net = "10.0.0.0/255.255.0.0"
    assert f"GRANT ALL PRIVILEGES ON `erpnext`.* TO 'erpnext'@'{net}'" in statements
    assert f"GRANT USAGE, REPLICATION CLIENT ON *.* TO 'proxysql_monitor'@'{net}'" in statements
    assert "GRANT RELOAD, PROCESS, LOCK TABLES, BINLOG MONITOR ON *.* TO 'mariabackup'@'localhost'" in statements
    # root stays local; no account for any host outside the private network
    assert not [s for s in statements if "'%'" in s]


def test_node_script_is_valid_shell_without_secrets():
    script = render_node_script("bitnami/mariadb-galera:10.11.6", "erpnext", 3)
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    for secret in (ACCOUNTS.root_password, ACCOUNTS.app_password, ACCOUNTS.sst_password, ACCOUNTS.monitor_password):
        assert secret not in script
    run_args = next(line for line in script.splitlines() if line.startswith("RUN_ARGS="))
    assert shlex.split(run_args[len("RUN_ARGS=("):-1]) == mysqld_run_args()


def test_open_ports_are_the_mariadb_and_galera_ports():
    assert sorted(OPEN_PORTS) == ["tcp/3306", "tcp/4444", "tcp/4567", "tcp/4568"]


def test_decide_prefers_the_highest_seqno_over_a_stale_safe_to_bootstrap_flag():
    nodes = [galera.NodeState("m1", grastate=galera.Grastate(U, 10, True)),
             galera.NodeState("m2", grastate=galera.Grastate(U, 12, False)),
             galera.NodeState("m3")]  # a replaced node with no data joins afterwards
    assert galera.decide(nodes).nodes == ("m2",)


def test_decide_uses_a_running_non_primary_node_s_last_committed():
    nodes = [galera.NodeState("m1", running=True, cluster_status="non-Primary", grastate=galera.Grastate(U, -1, False),
                              last_committed=30),
             galera.NodeState("m2", grastate=galera.Grastate(U, -1, False), recovered=galera.Position(U, 29))]
    assert galera.decide(nodes) == galera.Decision("bootstrap", ("m1",),
                                                   "most advanced node: m1 at seqno 30 (m1: 30, m2: 29)")


def test_decide_refuses_when_recovery_found_nothing():
    nodes = [galera.NodeState("m1", grastate=galera.Grastate(U, -1, False), recovered=galera.Position(U, -1)),
             galera.NodeState("m2", grastate=galera.Grastate(U, 5, False))]
    decision = galera.decide(nodes)
    assert decision.action == "refuse" and "cannot tell" in decision.reason


def test_decide_refuses_two_primary_clusters():
    V = "7ee8d6e8-0000-11ef-8000-000000000002"
    nodes = [galera.NodeState("m1", True, "Primary", "Synced", 1, U), galera.NodeState("m2", True, "Primary", "Synced",
                                                                                       2, V)]
    assert galera.decide(nodes).action == "refuse"


def test_accounts_repr_hides_passwords():
    assert "Pw" not in repr(ACCOUNTS)
