"""MariaDB Galera x3 on real containers (keybuzz/mariadb/testbed.py): the project's rendered my.cnf,
sst-auth.cnf and users.sql, the deploy's run arguments, and the layer's bootstrap decision
(keybuzz.mariadb.galera.decide) applied as the deploy applies it.

One testbed for the module. Its first install (from nothing) is done once, by the fixture that creates it, and
recorded for the test that checks it; every test then starts from the healthy state (the layer's converge, 3
nodes Synced in one Primary cluster: the `healthy` fixture) and depends on no other test (`-k` and reruns
work). About 4-5 minutes on 2 cores.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pymysql
import pytest

from keybuzz.mariadb import check, galera
from keybuzz.mariadb.client import Writer, connect, count, ensure_table
from keybuzz.mariadb.testbed import NAMES, Testbed, wait_for

# A safety bound, not the target: issue 12's target (recovery from a full outage in under 2 minutes) is measured
# by bench/mariadb_recovery.py, not a test verdict on a loaded machine. Beyond this bound the recovery is stuck.
RECOVERY_BOUND_S = 240

_runs = itertools.count(1)


@pytest.fixture(scope="module")
def tb():
    with Testbed() as testbed:
        # the first install from nothing can happen only once per testbed: done here, checked by its test
        testbed.first_install = testbed.converge()
        yield testbed


@pytest.fixture
def healthy(tb):
    """The state every test starts from, whatever ran (or failed) before it: the layer's converge brings back
    any node that is down, then 3 nodes Synced in one Primary cluster, and the check table exists."""
    tb.converge()
    tb.wait_cluster(3)
    with _app(tb, 0) as conn:
        ensure_table(conn)
    return tb


def _tag(name: str) -> str:
    """A tag no other writer of this testbed used: a rerun never finds another run's rows under it."""
    return f"{name}-{next(_runs)}-{time.monotonic_ns()}"


def _app(tb: Testbed, i: int):
    a = tb.accounts
    return connect(tb.node_ip(i), a.app_user, a.app_password, database=a.app_user)


class _Secret(str):
    def unmask(self) -> str:
        return str(self)


class _Plan:
    """servers.tsv's view the checks read (group -> name, ip), pointing at the testbed's containers."""

    def __init__(self, tb: Testbed):
        self.servers = [type("Server", (), {"name": n, "ip": tb.node_ip(i)}) for i, n in enumerate(NAMES)]

    def group(self, role: str):
        assert role == "mariadb"
        return self.servers


def _target(tb: Testbed):
    a = tb.accounts
    creds = {"MARIADB_APP_USER": a.app_user, "MARIADB_APP_PASSWORD": a.app_password,
             "MARIADB_MONITOR_USER": a.monitor_user, "MARIADB_MONITOR_PASSWORD": a.monitor_password}
    return type("T", (), {"plan": _Plan(tb), "lb": "", "secrets": lambda self, brick: {
        k: _Secret(v) for k, v in creds.items()}})()


def _writer(tb: Testbed, tag: str, hosts: list[int]) -> Writer:
    a = tb.accounts
    return Writer([tb.node_ip(i) for i in hosts], a.app_user, a.app_password, a.app_user, tag, seconds=120)


def _wait_acked(writer: Writer, count: int, what: str) -> int:
    """Wait (bounded) until the writer has `count` acknowledged writes; return how many it has."""
    wait_for(lambda: len(writer.acked) >= count, 60, 0.2, what)
    return len(writer.acked)


def _missing_on_every_node(tb: Testbed, tag: str, acked: set[int]) -> dict[str, int]:
    missing = {}
    for i, name in enumerate(NAMES):
        with _app(tb, i) as conn:
            missing[name] = len(acked - count(conn, tag))
    return missing


def test_first_install_bootstraps_maria_01_once_and_the_others_join(healthy):
    tb = healthy
    done = tb.first_install  # what the layer did on the new testbed (the `tb` fixture)
    assert done == ["bootstrap maria-01", "start maria-02", "start maria-03"], done
    statuses = [tb.status(i) for i in range(len(NAMES))]
    assert {s["wsrep_cluster_size"] for s in statuses} == {"3"}
    assert {s["wsrep_cluster_status"] for s in statuses} == {"Primary"}
    assert {s["wsrep_local_state_comment"] for s in statuses} == {"Synced"}
    assert len({s["wsrep_cluster_state_uuid"] for s in statuses}) == 1  # one cluster, not three
    for i in range(len(NAMES)):  # the servers' own state file names the cluster they all report
        s = tb.settings(i)
        assert galera.parse_grastate(Path(s.grastate).read_text()).uuid == statuses[0]["wsrep_cluster_state_uuid"]


def test_accounts_from_users_sql_work_through_every_node_and_nothing_more(healthy):
    tb = healthy
    a = tb.accounts
    with _app(tb, 0) as conn:
        ensure_table(conn)
    for i in range(len(NAMES)):  # write on each node, read it back on the next one (synchronous replication)
        with _app(tb, i) as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO keybuzz_check (tag, n) VALUES ('accounts', %s)", (i,))
        with _app(tb, (i + 1) % len(NAMES)) as conn:
            assert i in count(conn, "accounts")
    with connect(tb.node_ip(1), a.monitor_user, a.monitor_password) as conn, conn.cursor() as cur:
        cur.execute("SELECT @@read_only")
        assert cur.fetchone()[0] == 0
        with pytest.raises(pymysql.err.OperationalError):  # USAGE + REPLICATION CLIENT only
            cur.execute(f"SELECT COUNT(*) FROM `{a.app_user}`.keybuzz_check")
    with pytest.raises(pymysql.err.OperationalError):  # root logs in on the node itself only
        connect(tb.node_ip(0), "root", a.root_password)
    out = tb.root_sql(2, "SELECT COUNT(*) FROM mysql.user WHERE user IN ('', 'root') AND host <> 'localhost';")
    assert out.returncode == 0 and out.stdout.strip() == "0"


def test_a_second_run_decides_nothing(healthy):
    tb = healthy
    assert galera.decide(tb.states()).action == "none"
    assert tb.converge() == []


def test_diag_and_perf_checks_on_the_running_cluster(healthy):
    tb = healthy
    report = check.diag(_target(tb))
    assert report.ok, str(report)
    text = str(report)
    assert text.count("Primary Synced size=3 seqno=") == 3 and "NOT seen" not in text
    perf = check.perf(_target(tb))
    assert perf.ok, str(perf)
    assert all(v > 0 for v in perf.metrics.values()) and len(perf.metrics) == 6


def test_the_writer_proxysqls_rules_choose_follows_the_real_cluster(healthy):
    tb = healthy
    """Issue 12 §5: the routing rules' intent against real Galera. ProxySQL is not here; what its Galera hostgroup
    rules would put in the writer hostgroup (keybuzz.proxysql.admin.expected_writer, from ProxySQL 2.6.4's source)
    is computed from each node's state read with ProxySQL's own health-check query as the monitor user: maria-01
    while it is Synced, maria-02 once maria-01 is gone, maria-01 again after it rejoins (failback)."""
    from keybuzz.proxysql.admin import expected_writer, read_node_state
    from keybuzz.proxysql.settings import server_weights

    a = tb.accounts

    def writer() -> list[str]:
        return expected_writer([read_node_state(tb.node_ip(i), 3306, w, a.monitor_user, a.monitor_password)
                                for i, w in enumerate(server_weights(len(NAMES)))])

    assert writer() == [tb.node_ip(0)]
    tb.kill(0)
    wait_for(lambda: writer() == [tb.node_ip(1)], 60, 0.5, "maria-02 chosen as the writer")
    tb.converge()
    tb.wait_synced(0)
    tb.wait_cluster(3)
    assert writer() == [tb.node_ip(0)]


def test_node_killed_while_writing_loses_no_commit_and_rejoins(healthy):
    tb = healthy
    tag = _tag("kill")
    writer = _writer(tb, tag, [0, 1, 2]).start()
    try:
        at_kill = _wait_acked(writer, 50, "50 writes acknowledged before the kill")
        tb.kill(1)
        # the survivors drop it from the view after evs.inactive_timeout (15 s); writes go on meanwhile
        for i in (0, 2):
            wait_for(lambda i=i: tb.status(i)["wsrep_cluster_size"] == "2", 60, 0.5, f"{NAMES[i]} sees 2 nodes")
        at_view = len(writer.acked)
        _wait_acked(writer, at_view + 50, "50 writes acknowledged by the 2 survivors")
    finally:
        writer.stop()
    # acknowledged on both sides of the kill (else "0 missing" below would hold by construction)
    assert at_kill >= 50 and len(writer.acked) - at_view >= 50, (at_kill, at_view, len(writer.acked))
    diag = check.diag(_target(tb))
    assert not diag.ok and "maria-02 192.168." in str(diag) and "unreachable" in str(diag)
    assert galera.decide(tb.states()) == galera.Decision("start", ("maria-02",), "maria-02 joins the Primary cluster")
    assert tb.converge() == ["start maria-02"]
    tb.wait_cluster(3)
    assert _missing_on_every_node(tb, tag, writer.acked) == {n: 0 for n in NAMES}
    # it came back by incremental or full state transfer from a donor, not by starting a cluster of its own
    logs = tb.logs(1, tail=400)
    assert "IST received" in logs or "SST succeeded" in logs or "State transfer" in logs, logs[-2000:]


def _power_off_while_writing(tb, tag: str):
    """Write through all three nodes, then kill the three at once (every grastate.dat stays at seqno -1,
    safe_to_bootstrap 0); returns the stopped writer, with at least 50 writes acknowledged before the kill."""
    writer = _writer(tb, tag, [0, 1, 2]).start()
    try:
        _wait_acked(writer, 50, "50 writes acknowledged before the power-off")
        tb.kill_all()
    finally:
        writer.stop()
    assert len(writer.acked) >= 50, f"only {len(writer.acked)} writes acknowledged"
    return writer


def test_full_power_off_while_writing_then_the_layer_recovers_from_the_most_advanced_node(healthy):
    tb = healthy
    tag = _tag("outage")
    writer = _power_off_while_writing(tb, tag)
    states = tb.states()
    assert all(st.grastate and st.grastate.seqno == -1 and not st.grastate.safe_to_bootstrap for st in states)
    # positions come from InnoDB (`mysqld --wsrep-recover`): the most advanced node is chosen
    assert all(st.recovered and st.recovered.seqno > 0 for st in states)
    decision = galera.decide(states)
    assert decision.action == "bootstrap" and "most advanced node" in decision.reason, decision
    best = max(st.recovered.seqno for st in states)
    assert next(st for st in states if st.name == decision.nodes[0]).recovered.seqno == best
    # as systemd does when a server comes back from the power cut: maria-03's server starts on its own and
    # waits for its peers without a Primary component; the layer must stop it before deciding
    tb.start_node(2)
    started = time.monotonic()
    done = tb.converge()
    elapsed = time.monotonic() - started
    assert done[:2] == ["stop maria-03", f"bootstrap {decision.nodes[0]}"], done
    assert sorted(d.split()[1] for d in done[1:]) == sorted(NAMES)
    tb.wait_cluster(3)
    print(f"full outage recovery: {elapsed:.1f}s ({done}); acknowledged writes {len(writer.acked)}")
    assert elapsed < RECOVERY_BOUND_S
    assert _missing_on_every_node(tb, tag, writer.acked) == {n: 0 for n in NAMES}
    assert tb.converge() == []  # and a re-run decides nothing


def test_full_power_off_then_the_node_script_recovers_as_the_deploy_does(healthy):
    tb = healthy
    """The deploy's path: keybuzz-mariadb state (grastate + --wsrep-recover), bootstrap, start, apply-users."""
    tag = _tag("outage-script")
    writer = _power_off_while_writing(tb, tag)
    lines = tb.script(1, "state").stdout.splitlines()
    state = galera.parse_node_state("maria-02", lines)
    assert not state.running and state.grastate.seqno == -1 and state.recovered and state.recovered.seqno > 0, lines
    started = time.monotonic()
    done = tb.converge(with_node_script=True)
    elapsed = time.monotonic() - started
    assert done[0].startswith("bootstrap ") and sorted(d.split()[1] for d in done) == sorted(NAMES), done
    tb.wait_cluster(3)
    print(f"full outage recovery through the node script: {elapsed:.1f}s ({done})")
    assert elapsed < RECOVERY_BOUND_S
    assert _missing_on_every_node(tb, tag, writer.acked) == {n: 0 for n in NAMES}
    for i in range(len(NAMES)):
        assert tb.script(i, "users-state").stdout.strip() == "ok"
        assert list((Path(tb.settings(i).conf_dir) / "bootstrap.d").iterdir()) == []
    assert tb.converge(with_node_script=True) == []


def test_rolling_restart_refuses_unless_the_cluster_is_whole(healthy):
    tb = healthy
    assert tb.script(0, "restart").returncode == 0  # whole: restarted, back Synced with 3 members
    tb.wait_cluster(3)
    tb.kill(2)
    wait_for(lambda: tb.status(0)["wsrep_cluster_size"] == "2", 60, 0.5, "maria-01 sees 2 nodes")
    refused = tb.script(0, "restart")
    assert refused.returncode != 0 and "Primary with 3 members" in refused.stderr
    assert tb.status(0)["wsrep_local_state_comment"] == "Synced"  # not restarted
    assert tb.converge(with_node_script=True) == ["start maria-03"]


def test_nodes_of_two_different_clusters_are_refused(healthy):
    tb = healthy
    # maria-03's data claims another cluster: nothing may be bootstrapped from a guess
    tb.kill_all()
    grastate = Path(tb.settings(2).grastate)
    text = grastate.read_text()
    uuid = galera.parse_grastate(text).uuid
    grastate.write_text(text.replace(uuid, "11111111-2222-3333-4444-555555555555"))
    try:
        with pytest.raises(galera.Refused, match="different clusters"):
            tb.converge()
    finally:
        grastate.write_text(text)
    assert tb.converge()[0].startswith("bootstrap ")
