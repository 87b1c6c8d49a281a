"""The DB layer in real containers (keybuzz/db/testbed.py): 3 etcd + 3 Patroni/PostgreSQL + 3 PgBouncer +
HAProxy, from the project's rendered files. One testbed for the module; every test starts by bringing it back
to the healthy state (3 members, leader + sync standby, HAProxy on the leader) and depends on no other test.
Every loop is bounded in count and time; traffic only to the testbed's own containers."""

from __future__ import annotations

import time

import psycopg
import pytest

from keybuzz.db import client
from keybuzz.db.client import ProbeWriter
from keybuzz.db.testbed import NAMES, Testbed
from keybuzz.waiting import wait_for

# Safety bounds, not targets (the failover targets are measured by bench/db_failover.py, figures in the README):
# a writer resuming later than one leader key lifetime (+ margin) after the primary's death, or stalling this
# long with only one etcd member down, is broken behaviour, not a slow run.
FAILOVER_BOUND_MARGIN_S = 5
ONE_ETCD_DOWN_STALL_BOUND_S = 3


@pytest.fixture(scope="module")
def tb():
    with Testbed() as bed:
        yield bed


@pytest.fixture
def healthy(tb):
    tb.wait_healthy(180)
    return tb


def _writer(tb, port=5432, seconds=90.0) -> ProbeWriter:
    return ProbeWriter(tb.lb(port), interval=0.05, seconds=seconds, max_rows=5000)


def _wait_acks(w: ProbeWriter, since: float, count: int, seconds: float, what: str) -> None:
    wait_for(lambda: w.acked_since(since) >= count, seconds, 0.2, what)


def test_bootstrap_leader_sync_standby_and_haproxy_on_both_ports(healthy):
    tb = healthy
    view = tb.view()
    roles = sorted(m["role"] for m in view["members"])
    assert roles == ["leader", "replica", "sync_standby"], view
    leader = client.primary_name(view)
    assert tb.haproxy_up("be_postgres") == [leader] and tb.haproxy_up("be_pgbouncer") == [leader]
    assert client.in_recovery(tb.lb(5432)) is False
    assert client.in_recovery(tb.lb(6432)) is False
    for i in range(3):  # the replicas say so themselves
        assert client.in_recovery(tb.node(i)) is (NAMES[i] != leader)


def test_primary_killed_writes_resume_nothing_acknowledged_lost(healthy):
    tb = healthy
    old = tb.primary_index()
    w = _writer(tb).start()
    try:
        _wait_acks(w, 0, 20, 20, "20 commits before the kill")
        t_kill = time.monotonic()
        # Patroni + PostgreSQL die (docker kill). The whole host's death (its etcd member too) is in
        # test_old_primary_returns... and bench/db_failover.py: when the dead host also held the etcd leader,
        # etcd renews every lease on its new leader, and the gap grows by up to one ttl.
        tb.kill(old, "patroni")
        _wait_acks(w, t_kill, 20, 60, "20 commits on the new primary after the kill")
    finally:
        w.stop()
    assert w.acked_before(t_kill) >= 20 and w.acked_since(t_kill) >= 20
    assert tb.primary_index() != old
    assert w.lost(tb.lb(5432)) == 0, "an acknowledged commit is missing after the failover"
    assert not w.warned
    gap = w.gap_after(t_kill)
    print(f"write gap through HAProxy 5432 on the primary's death: {gap:.2f} s (ttl {tb.settings.ttl})")
    assert gap <= tb.settings.ttl + FAILOVER_BOUND_MARGIN_S


def test_old_primary_returns_as_replica_and_never_takes_writes(healthy):
    tb = healthy
    old = tb.primary_index()
    tb.kill_node(old)
    wait_for(lambda: client.primary_name(tb.view()) not in (None, NAMES[old]), 60, 0.5, "a new leader")
    new = tb.primary_index()
    wait_for(lambda: tb.haproxy_up("be_postgres") == [NAMES[new]], 20, 0.3, "HAProxy on the new leader")
    # commits on the new timeline only: the old primary must rewind (or be re-cloned) to follow
    w = _writer(tb, seconds=20).start()
    _wait_acks(w, 0, 10, 30, "10 commits on the new primary")
    w.stop()
    assert w.acked_count() >= 10  # what "0 lost" below is about
    tb.revive_node(old)
    su = tb.superuser(old)
    answers: list[bool] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(answers) < 2000:  # from the first accepted connection on
        try:
            answers.append(client.in_recovery(su, timeout=1))
        except psycopg.Error:
            pass
        if answers and client.replicas(tb.view()).count(NAMES[old]) and len(answers) > 10:
            break
        time.sleep(0.1)
    assert answers, "the old primary never accepted connections again"
    assert all(answers), "the returning old primary answered as a primary at least once"
    tb.wait_member_running(old, 60)
    view = tb.view()
    assert client.primary_name(view) == NAMES[new] and NAMES[old] in client.replicas(view)
    assert tb.haproxy_up("be_postgres") == [NAMES[new]]
    try:
        assert w.lost(tb.lb(5432)) == 0
    except psycopg.OperationalError:
        print("\n".join(line for line in tb.docker("haproxy").logs().decode().splitlines() if " is " in line))
        raise
    # and it has the new primary's commits (streaming on the new timeline)
    wait_for(lambda: w.lost(tb.node(old)) == 0, 30, 0.5, "old primary has every commit of the new one")


def test_one_etcd_member_down_no_failover(healthy):
    tb = healthy
    leader = tb.primary_index()
    timeline = client.timeline(tb.view())
    w = _writer(tb, seconds=60).start()
    try:
        _wait_acks(w, 0, 10, 20, "commits before")
        t_kill = time.monotonic()
        tb.kill(leader, "etcd")  # the primary's own local etcd: its Patroni must use the other two
        # the scenario, not a wait for a condition: stay past a leader key lifetime (a key the primary could
        # not renew would expire within it and a replica would promote), then look
        time.sleep(tb.settings.ttl + tb.settings.loop_wait + 3)
        _wait_acks(w, t_kill, 10, 20, "commits after")
    finally:
        w.stop()
    view = tb.view()
    assert client.primary_name(view) == NAMES[leader] and client.timeline(view) == timeline
    assert w.acked_before(t_kill) >= 10 and w.acked_since(t_kill) >= 10 and w.lost() == 0
    assert w.max_gap() < ONE_ETCD_DOWN_STALL_BOUND_S, f"writes stalled {w.max_gap():.1f} s with one etcd member down"


def test_etcd_majority_down_failsafe_keeps_the_primary(healthy):
    """Decided behaviour (failsafe_mode: true): without the etcd majority, the primary keeps its role because
    every member answers its POST /failsafe; no replica promotes; writes continue; 0 lost."""
    tb = healthy
    leader = tb.primary_index()
    timeline = client.timeline(tb.view())
    others = [i for i in range(3) if i != leader]
    w = _writer(tb, seconds=90).start()
    try:
        _wait_acks(w, 0, 10, 20, "commits before")
        t_kill = time.monotonic()
        tb.kill(leader, "etcd")
        tb.kill(others[0], "etcd")
        end = t_kill + 2 * tb.settings.ttl + 5  # well past the leader key's expiry
        primaries_seen = set()
        # the scenario: watch every member's /primary for the whole outage (bounded by `end`), not a wait
        while time.monotonic() < end:
            primaries_seen |= {NAMES[i] for i in range(3) if client.is_primary(tb.node_ip(i), timeout=1)}
            time.sleep(0.5)
        _wait_acks(w, end, 5, 20, "commits at the end of the etcd outage")
    finally:
        w.stop()
        tb.revive(leader, "etcd")
        tb.revive(others[0], "etcd")
    assert primaries_seen == {NAMES[leader]}, f"/primary answered by {primaries_seen}"
    assert w.acked_before(t_kill) >= 10 and w.acked_since(end) >= 5 and w.lost() == 0
    print(f"etcd majority down: longest write gap {w.max_gap():.2f} s")
    tb.wait_healthy(120)
    assert tb.primary_index() == leader and client.timeline(tb.view()) == timeline


def test_pgbouncer_dead_on_primary_6432_stops_5432_unaffected(healthy):
    tb = healthy
    leader = tb.primary_index()
    tb.kill(leader, "pgbouncer")
    try:
        wait_for(lambda: tb.haproxy_up("be_pgbouncer") == [], 10, 0.2, "HAProxy takes the primary out of 6432")
        assert tb.haproxy_up("be_postgres") == [NAMES[leader]]
        assert client.is_primary(tb.node_ip(leader))  # Patroni still says primary
        with pytest.raises(psycopg.OperationalError):
            client.in_recovery(tb.lb(6432), timeout=2)
        assert client.in_recovery(tb.lb(5432)) is False
    finally:
        tb.revive(leader, "pgbouncer")
    wait_for(lambda: tb.haproxy_up("be_pgbouncer") == [NAMES[leader]], 15, 0.3, "6432 back on the primary")
    assert client.in_recovery(tb.lb(6432)) is False


def test_no_secret_in_docker_inspect_or_logs(healthy):
    """The containers' environment comes from the rendered etcd.env, their logs from the services themselves."""
    tb = healthy
    inspect, logs = tb.inspect(), tb.logs()
    secrets = tb.all_secrets()
    assert len(secrets) >= 3 and all(secrets)  # else the loop below would check nothing
    for secret in secrets:
        assert secret not in inspect, "a password is visible in docker inspect (env, cmd, labels)"
        assert secret not in logs, "a password is in a container's log"
