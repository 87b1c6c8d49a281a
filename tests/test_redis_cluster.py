"""HAProxy follows Redis failovers (design §C), on real containers: 3 Redis + 3 Sentinel + HAProxy started
from the project's rendered files, with the real redis-update-master.sh and redis-master-watch.sh running
inside the HAProxy container (keybuzz/redis/testbed.py). Sentinel down-after is 2 s here (production: 5 s).

Tests share one testbed (module fixture); each one sets up what it needs itself (_heal first: 3 Redis up,
3 Sentinels up, HAProxy on the master, the watcher subscribed; then its own kill, pause...) and leaves it
healthy, so any test runs alone (`-k`) or again. About 3-4 minutes on 2 cores.

Deliberate stand-ins (keybuzz/redis/testbed.py names them all): the systemd timer is a bash loop and the
watcher runs under setsid nohup; the RabbitMQ node behind HAProxy's :5672 is a Redis server; the fake
Sentinels (_fake_sentinels) are socat scripts that give one canned reply each, for the answers a real
Sentinel never gives, and each records every connection so that a test proves the script asked it.
Durations asserted here are safety bounds (generous, named *_SAFETY_BOUND_S or commented as such), never
targets: failover timings are measured by bench/redis_failover.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time

import pytest
import redis

from helpers import roles_until_replica_of
from keybuzz import ROOT
from keybuzz.haproxy.settings import CONTAINER_CFG_DIR, UPDATE_LOCK, UPDATE_RUN_DIR
from keybuzz.redis.settings import MASTER_NAME, Login, env_file, render_redis_acl, render_sentinel_acl
from keybuzz.redis.testbed import NAMES, Testbed  # noqa: E402

DOWN_AFTER_MS = 2000
# kill -> Sentinel decision (down-after + election) -> HAProxy switch: a safety bound for a busy CI machine, not
# a target (bench/redis_failover.py measures the switch)
SWITCH_SAFETY_BOUND_S = DOWN_AFTER_MS / 1000 + 8


@pytest.fixture(scope="module")
def tb():
    with Testbed(down_after_ms=DOWN_AFTER_MS, watch=True, timer_s=15) as testbed:
        testbed.wait_ready()
        testbed.start_followers()  # returns once every Sentinel lists the watcher's SUBSCRIBE +switch-master
        yield testbed


def _heal(tb: Testbed) -> None:
    """Every container running again, replicas online, every Sentinel settled on the master, HAProxy on it."""
    for name, c in tb.containers.items():
        w = c.get_wrapped_container()
        w.reload()
        if w.status == "paused":
            w.unpause()
        elif w.status != "running" and name.startswith("redis-"):
            tb.start_redis(int(name[-1]) - 1)  # behind its start gate, as systemd starts it
        elif w.status != "running":
            w.start()
    master = tb.wait_for(tb.sentinel_master, 30, what="Sentinel majority")

    def healed():
        return tb.settled(master) and tb.cfg_master() == master and tb.runtime_master() == master
    tb.wait_for(healed, 40, 0.3, "replicas online, every Sentinel's failover ended, HAProxy on the master")
    tb.wait_watcher_subscribed()  # a restarted Sentinel: the watcher resubscribes within about a second


def _switched_away_from(tb: Testbed, old: str) -> str:
    """Wait until haproxy.cfg and the running HAProxy name a new master; return it."""
    def moved():
        cfg, run = tb.cfg_master(), tb.runtime_master()
        return cfg if cfg and cfg != old and cfg == run else None
    return tb.wait_for(moved, SWITCH_SAFETY_BOUND_S, 0.05, f"HAProxy leaving {old}")


def _run_id(client: redis.Redis) -> str:
    return client.info("server")["run_id"]


def test_kill_master_writes_through_haproxy_resume_on_the_new_master(tb):
    _heal(tb)
    old_i = tb.master_index()
    old = f"{tb.redis_ips[old_i]}:6379"
    # both replicas confirm it: whichever one the Sentinels promote has it, so its absence would be a loss by
    # the switch, never a write the killed master had not replicated yet. WAIT counts this connection's own
    # writes and blocks up to its 5 s: a client of its own, beyond the 0.5 s that measures the switch below
    before = tb.lb_client(timeout=6)
    assert before.set("before-kill", "1") and before.execute_command("WAIT", 2, 5000) == 2
    lb = tb.lb_client(timeout=0.5)
    start = time.monotonic()
    tb.kill_redis(old_i)
    new = _switched_away_from(tb, old)
    switched_s = time.monotonic() - start

    def write():
        try:
            return lb.set("after-kill", "1")
        except (redis.RedisError, OSError):
            return False
    tb.wait_for(write, 5, 0.05, "a write through HAProxy")
    gap = time.monotonic() - start
    new_node = tb.redis_client(new.split(":")[0])
    assert new_node.execute_command("ROLE")[0] == "master"
    assert new_node.get("after-kill") == "1" and new_node.get("before-kill") == "1"
    assert _run_id(lb) == _run_id(new_node)  # HAProxy really routes to it
    assert "old master " + old + " -> new master " + new in tb.logs()  # each switch logged, old and new
    print(f"kill -> HAProxy switched {switched_s:.2f} s, first write through HAProxy {gap:.2f} s")
    assert gap < SWITCH_SAFETY_BOUND_S
    _heal(tb)


def test_old_master_rejoins_as_replica_and_haproxy_never_sends_it_a_write(tb):
    _heal(tb)
    old_i = tb.master_index()
    old_ip = tb.redis_ips[old_i]
    tb.kill_redis(old_i)
    master = _switched_away_from(tb, f"{old_ip}:6379")
    lb = tb.lb_client(timeout=0.5)
    tb.wait_for(lambda: lb.set("rejoin-ready", "1"), 5, 0.05, "a write through HAProxy to the new master")
    tb.start_redis(old_i)
    deadline = time.monotonic() + 20
    written, seen_cfg, rejoined = 0, set(), False
    while time.monotonic() < deadline:
        lb.set(f"rejoin-{written}", written)  # must never fail nor land on the old master
        written += 1
        seen_cfg.add(tb.cfg_master())
        if not rejoined and tb.role(old_ip) == "slave":
            rejoined = True
            deadline = min(deadline, time.monotonic() + 3)  # keep writing a little after the rejoin
        time.sleep(0.05)
    assert rejoined, "old master did not become a replica"
    assert written > 0 and seen_cfg == {master}
    # the old master received these keys only by replication: no HAProxy client ever ran a command on it
    clients = tb.redis_client(old_ip).execute_command("CLIENT", "LIST")
    assert not [c for c in clients.splitlines() if f"addr={tb.haproxy_ip}:" in c and "cmd=NULL" not in c]
    new_node = tb.redis_client(master.split(":")[0])
    assert all(new_node.get(f"rejoin-{i}") == str(i) for i in range(written))
    _heal(tb)


def test_failovers_are_followed_with_the_sentinel_of_redis_01_down(tb):
    _heal(tb)
    tb.kill_sentinel(0)
    old_i = tb.master_index()  # two Sentinels left: still a majority of 3
    old = f"{tb.redis_ips[old_i]}:6379"
    tb.kill_redis(old_i)
    # Sentinel's own election first (two Sentinels can split their vote: a retry after 2 x failover-timeout,
    # 20 s here), which is Sentinel's time, not the follower's; HAProxy's bound counts from there. On a timeout,
    # each Sentinel's state and log say why (this is how a leader stuck from the previous test was found)
    try:
        tb.wait_for(lambda: (m := tb.sentinel_master()) and m != old, 60, 0.1, "the two Sentinels' failover")
    except TimeoutError:
        for i in (1, 2):
            print(f"--- sentinel-{i + 1}", tb.sentinel_state(i))
            print(tb.docker(f"sentinel-{i + 1}").logs(tail=60).decode())
        raise
    new = _switched_away_from(tb, old)
    tb.wait_for(lambda: tb.lb_client(0.5).set("no-sentinel-1", "1"), 5, 0.1, "a write through HAProxy")
    assert tb.redis_client(new.split(":")[0]).get("no-sentinel-1") == "1"
    _heal(tb)


def test_a_haproxy_without_a_sentinel_majority_fails_closed_then_serves_again(tb):
    """Issue 10 §3: two of the three Sentinels gone (as for a HAProxy on the minority side of a partition) while
    the master still runs: the running follower (the watcher's guard, every 2 s) puts be_redis_master in
    maintenance after NO_MAJORITY_MAINT (5 s) and cuts its sessions, so writes through HAProxy stop; once a
    majority answers again, HAProxy serves again. Today's code kept writing into its last master."""
    _heal(tb)
    lb = tb.lb_client(0.5)
    held = tb.lb_client(0.5)
    assert held.set("fail-closed-before", "1")  # a session opened before: it must be cut too
    tb.kill_sentinel(1)
    tb.kill_sentinel(2)
    lost_at = time.monotonic()

    def refused() -> bool:
        try:
            lb.set("fail-closed-probe", "1")
        except (redis.RedisError, OSError):
            return True
        return False

    try:
        try:
            tb.wait_for(refused, 20, 0.1, "HAProxy refusing Redis without a Sentinel majority")
        except TimeoutError:
            raise AssertionError("still serving 20 s after the majority was lost; followers' log:\n"
                                 + tb.logs()[-3000:]) from None
        stopped_after = time.monotonic() - lost_at
        with pytest.raises((redis.RedisError, OSError)):
            held.set("fail-closed-held", "1")
        assert "be_redis_master in MAINTENANCE (fail closed)" in tb.logs()
        # not before NO_MAJORITY_MAINT (5 s, counted in milliseconds from a run that started after the kill); the
        # upper one is a safety bound, not a target: 5 s + the guard's 2 s + one Sentinel query timeout (1 s), and
        # margin for a busy machine
        fail_closed_safety_bound_s = 12
        assert 5 <= stopped_after <= fail_closed_safety_bound_s, \
            f"writes stopped {stopped_after:.1f} s after the majority was lost"
    finally:
        tb.start_sentinel(1)
        tb.start_sentinel(2)
    tb.wait_for(lambda: not refused(), 30, 0.2, "HAProxy serving again once a majority answers")
    assert "be_redis_master out of maintenance" in tb.logs()
    print(f"\nfail closed: writes through HAProxy refused {stopped_after:.1f} s after 2 of 3 Sentinels went away")
    _heal(tb)


# settings of the update runs that ask fake or unreachable Sentinels (see the tests that use it)
_OWN_RUN = {"RUN_DIR": "/run/keybuzz-redis-update-test", "NO_MAJORITY_MAINT": "3600"}
# A fake Sentinel is bash behind socat: on a loaded machine its +OK can come after the script's 1 s query bound,
# and that fake is then never asked (seen once with the lab tests running alongside). Runs against fakes give
# their queries 5 s: what they prove is the verdict drawn from the answers, not the bound.
_FAKES_QUERY_TIMEOUT = {"QUERY_TIMEOUT": "5"}


_BIN = "/usr/local/keybuzz-bin"  # the HAProxy container's view of tb.dir/haproxy/bin
_fake_pids: list[int] = []  # process groups of the running fake Sentinels (socat and its per-connection children)


def _listening_ports(tb: Testbed) -> set[int]:
    """TCP ports in LISTEN inside the HAProxy container (/proc/net/tcp: state 0A), read without connecting."""
    rows = tb.exec("haproxy", "cat /proc/net/tcp")[1].splitlines()[1:]
    return {int(f[1].split(":")[1], 16) for f in (row.split() for row in rows) if len(f) > 3 and f[3] == "0A"}


def _stop_fakes(tb: Testbed) -> None:
    """Stop the fake Sentinels this module started (by process group), and wait until their ports are closed."""
    if _fake_pids:
        tb.exec("haproxy", "kill -- " + " ".join(f"-{pid}" for pid in _fake_pids) + " 2>/dev/null; true")
        _fake_pids.clear()
    tb.wait_for(lambda: not {p for p in _listening_ports(tb) if 27001 <= p <= 27009}, 10, 0.1,
                "the fake Sentinels' ports closed")


# one connection to a fake Sentinel (bash, run by socat per connection): it answers redis-cli's AUTH with +OK,
# reads the next command and gives its canned reply only if that command is SENTINEL get-master-addr-by-name, then
# appends 1 (asked and answered) or 0 to its log, never the bytes (AUTH carries a password). An answer sent before
# the question would be taken by redis-cli (hiredis reads a buffered reply without sending its command): a fake
# that was never asked could still decide the run.
_FAKE_SENTINEL = r"""#!/bin/bash
me=@ME@  # its own path (reply and log beside it)
read_command() {  # one RESP array of bulk strings from the client; prints its words, one a line
    local head line n i
    IFS= read -r -t 2 head || return 1
    n=${head#\*}; n=${n%$'\r'}
    [[ $n =~ ^[0-9]+$ ]] || return 1
    for ((i = 0; i < n; i++)); do
        IFS= read -r -t 2 line || return 1  # $<length>
        IFS= read -r -t 2 line || return 1
        printf '%s\n' "${line%$'\r'}"
    done
}
asked=0
if read_command >/dev/null; then
    printf '+OK\r\n'
    case $(read_command) in *get-master-addr-by-name*) asked=1 ;; esac
fi
[ "$asked" = 0 ] || cat "$me.reply"
echo "$asked" >>"$me.log"
timeout 1 cat >/dev/null  # until the client closes, at most 1 s
"""


def _fake_sentinels(tb: Testbed, replies: list[str | None]) -> tuple[str, list[int]]:
    """Fake Sentinels inside the HAProxy container (ports 27001..), one per raw RESP reply (_FAKE_SENTINEL);
    None: a closed port there (nothing listens, as a Sentinel that is down). Each connection appends one line to
    fake-sentinel-<port>.log (1: asked SENTINEL get-master-addr-by-name and answered, 0: not).
    Returns (the SENTINELS value naming them all, the ports of the fakes that answer) once each of those listens
    (bounded)."""
    _stop_fakes(tb)
    addrs, ports = [], []
    for n, reply in enumerate(replies):
        port = 27001 + n
        addrs.append(f"127.0.0.1:{port}")
        name = f"fake-sentinel-{port}"
        bin_dir = tb.dir / "haproxy" / "bin"
        (bin_dir / f"{name}.log").unlink(missing_ok=True)
        if reply is None:
            continue
        ports.append(port)
        (bin_dir / f"{name}.reply").write_bytes(reply.encode())
        (bin_dir / name).write_text(_FAKE_SENTINEL.replace("@ME@", f"{_BIN}/{name}"))
        (bin_dir / name).chmod(0o755)
        rc, out = tb.exec("haproxy", f"setsid nohup socat TCP-LISTEN:{port},fork,reuseaddr EXEC:{_BIN}/{name} "
                                     ">/dev/null 2>&1 & echo $!")
        assert rc == 0, out
        _fake_pids.append(int(out.split()[-1]))
    tb.wait_for(lambda: set(ports) <= _listening_ports(tb), 10, 0.05, f"fake Sentinels listening on {ports}")
    return " ".join(addrs), ports


def _questions(tb: Testbed, ports: list[int]) -> dict[int, list[int]]:
    """port -> one number per connection the fake got: 1 asked get-master-addr-by-name (and answered), 0 not."""
    return {port: [int(n) for n in tb.exec("haproxy", f"cat {_BIN}/fake-sentinel-{port}.log 2>/dev/null")[1].split()]
            for port in ports}


def _assert_every_fake_was_asked(tb: Testbed, ports: list[int]) -> None:
    """Each fake got at least one connection that asked it SENTINEL get-master-addr-by-name, and answered it: the
    run's verdict came from these answers, not from fakes nobody reached. (Bounded wait: a fake records its
    connection after answering, maybe after the run has ended.)"""
    try:
        tb.wait_for(lambda: all(any(n >= 1 for n in q) for q in _questions(tb, ports).values()), 5, 0.1,
                    "every fake Sentinel asked")
    except TimeoutError:
        raise AssertionError(f"a fake Sentinel was never asked (per port, per connection): "
                             f"{_questions(tb, ports)}") from None


def _addr_reply(ip: str, port: str = "6379") -> str:
    return f"*2\r\n${len(ip)}\r\n{ip}\r\n${len(port)}\r\n{port}\r\n"


@pytest.mark.parametrize("case", ["unreachable", "not-sentinels", "garbage", "no-majority", "majority-names-replica",
                                  "majority-names-unknown-node", "malformed-address", "empty-answers"])
def test_bad_sentinel_answers_leave_haproxy_cfg_untouched_and_haproxy_serving(tb, case):
    _heal(tb)
    master = tb.cfg_master()
    replica = next(ip for ip in tb.redis_ips if f"{ip}:6379" != master)
    fakes: list[int] = []
    if case == "unreachable":
        sentinels = " ".join(tb.ip(n) for n in (97, 98, 99))  # nobody there (own test subnet)
    elif case == "not-sentinels":
        sentinels = " ".join(f"{ip}:6379" for ip in tb.redis_ips)  # Redis answers ERR unknown command
    elif case == "garbage":
        sentinels, fakes = _fake_sentinels(tb, ["garbage\r\n", "*2\r\n$3\r\nabc\r\n$2\r\nxx\r\n", "-ERR no\r\n"])
    elif case == "no-majority":
        sentinels, fakes = _fake_sentinels(tb, [_addr_reply(ip) for ip in tb.redis_ips])
    elif case == "majority-names-replica":
        sentinels, fakes = _fake_sentinels(tb, [_addr_reply(replica)] * 3)
    elif case == "majority-names-unknown-node":
        sentinels, fakes = _fake_sentinels(tb, [_addr_reply(tb.ip(77))] * 3)
    elif case == "malformed-address":
        sentinels, fakes = _fake_sentinels(tb, [_addr_reply("999.1.1.1")] * 2 + [_addr_reply("1.2.3", "x")])
    else:
        sentinels, fakes = _fake_sentinels(tb, ["*-1\r\n", "*0\r\n", "$0\r\n\r\n"])
    before_cfg, before_pids = tb.haproxy_cfg(), tb.haproxy_pids()
    # a runtime directory of its own, and no fail-closed: these runs ask fake Sentinels, while the HAProxy they
    # would put in maintenance is the real one (its real followers see the real majority)
    try:
        rc, out = tb.update({"SENTINELS": sentinels, **_OWN_RUN, **(_FAKES_QUERY_TIMEOUT if fakes else {})})
        _assert_every_fake_was_asked(tb, fakes)
    finally:
        _stop_fakes(tb)
    not_a_master = case in ("majority-names-replica", "majority-names-unknown-node")
    assert rc == (6 if not_a_master else 3), out  # 6 "not a master", 3 "no majority" (script header)
    expected = {"majority-names-replica": "does not answer ROLE master",
                "majority-names-unknown-node": "which is not a Redis node"}.get(case, "no majority of Sentinels")
    assert expected in out  # refused for the right reason, not by accident
    assert tb.haproxy_cfg() == before_cfg
    assert tb.haproxy_pids() == before_pids  # no reload
    assert tb.runtime_master() == master
    assert tb.lb_client().set(f"serving-{case}", "1")


@pytest.mark.parametrize("case", ["one-of-three-answers", "two-agree-one-differs"])
def test_the_script_acts_only_on_a_majority_of_the_configured_sentinels(tb, case):
    """The shell script's own majority rule (majority_of in redis-update-master.sh, not Python's majority()), on a
    haproxy.cfg left on a replica (a missed failover) so that its decision shows in the file: one Sentinel naming
    the master while the two others are down (closed ports) is no majority of 3 (exit 3, the stale line stays);
    two naming the master outvote a third still naming the stale replica (exit 0, the master of the two is
    installed)."""
    _heal(tb)
    master = tb.cfg_master()
    settings = _stale(tb)
    stale = _cfg_master_of(tb, "stale.cfg")
    assert stale != master
    names_master, names_stale = _addr_reply(*master.split(":")), _addr_reply(*stale.split(":"))
    replies = ([names_master, None, None] if case == "one-of-three-answers"
               else [names_master, names_stale, names_master])
    sentinels, fakes = _fake_sentinels(tb, replies)
    try:
        rc, out = tb.update({**settings, "SENTINELS": sentinels, **_OWN_RUN, **_FAKES_QUERY_TIMEOUT})
        _assert_every_fake_was_asked(tb, fakes)
    finally:
        _stop_fakes(tb)
    try:
        if case == "one-of-three-answers":
            assert rc == 3 and "no majority of Sentinels" in out, out
            assert _cfg_master_of(tb, "stale.cfg") == stale
        else:
            assert rc == 0 and f"server redis-master {stale} -> {master} (validated)" in out, out
            assert _cfg_master_of(tb, "stale.cfg") == master
    finally:
        (tb.dir / "haproxy" / "conf" / "stale.cfg").unlink()


def test_a_majority_is_acted_on_without_waiting_for_a_dead_sentinel(tb):
    """Issue 10 §1: after a host dies, its Sentinel does not answer at all (no RST: the query runs into
    QUERY_TIMEOUT). The two live Sentinels already agree: the run acts on them at once instead of waiting for the
    dead one (the script used to wait for every query, so each run after a host kill cost one whole timeout)."""
    _heal(tb)
    master = tb.cfg_master()
    query_timeout_s = 8  # longer than such a run takes, so waiting for the dead Sentinel cannot go unnoticed
    # a frozen Sentinel (paused container: the kernel still accepts the connection, nothing ever answers) behaves
    # as one on a host that just died, whose address is still in the ARP cache (an absent address would fail fast)
    sentinels = " ".join(tb.sentinel_ips)
    settings = _stale(tb)
    tb.docker("sentinel-2").pause()
    try:
        start = time.monotonic()
        rc, out = tb.update({**settings, "SENTINELS": sentinels, "QUERY_TIMEOUT": str(query_timeout_s), **_OWN_RUN},
                            timeout=60)
        took = time.monotonic() - start
        assert rc == 0 and f"-> {master} (validated)" in out, out
        assert _cfg_master_of(tb, "stale.cfg") == master
        assert took < query_timeout_s, f"the run waited {took:.1f} s: for the dead Sentinel's query timeout"
    finally:
        tb.docker("sentinel-2").unpause()
        (tb.dir / "haproxy" / "conf" / "stale.cfg").unlink()


def test_the_check_module_reads_the_master_haproxy_uses_from_its_stats_page(tb):
    from keybuzz.redis.check import haproxy_master

    _heal(tb)
    assert haproxy_master(tb.haproxy_ip) == tb.runtime_master() == tb.cfg_master()


def test_nothing_happens_when_the_master_did_not_change(tb):
    _heal(tb)
    before_cfg, before_pids = tb.haproxy_cfg(), tb.haproxy_pids()
    mtime = (tb.dir / "haproxy/conf/haproxy.cfg").stat().st_mtime_ns
    for _ in range(2):
        rc, out = tb.update()
        assert (rc, out) == (0, "")
    assert tb.haproxy_cfg() == before_cfg and tb.haproxy_pids() == before_pids
    assert (tb.dir / "haproxy/conf/haproxy.cfg").stat().st_mtime_ns == mtime


def test_an_invalid_candidate_config_is_never_installed_and_a_valid_one_is(tb):
    """On a haproxy.cfg left on a replica (a private copy, _stale: the running followers would fix haproxy.cfg
    itself between the two runs), a candidate `haproxy -c` refuses is never installed; a valid one is."""
    _heal(tb)
    master = tb.cfg_master()
    conf = tb.dir / "haproxy" / "conf"
    settings = _stale(tb)
    try:
        stale_text = (conf / "stale.cfg").read_text()
        replica = _cfg_master_of(tb, "stale.cfg")
        rc, out = tb.update({**settings, "HAPROXY_CHECK_CMD": "false"})  # haproxy -c says no
        assert rc == 4 and "invalid" in out, out
        assert (conf / "stale.cfg").read_text() == stale_text
        assert sorted(p.name for p in conf.iterdir()) == ["haproxy.cfg", "stale.cfg"]  # no candidate left behind
        rc, out = tb.update(settings)
        assert rc == 0 and f"server redis-master {replica} -> {master} (validated)" in out, out
        assert _cfg_master_of(tb, "stale.cfg") == master
        rc, out = tb.exec("haproxy", f"haproxy -c -q -f {CONTAINER_CFG_DIR}/stale.cfg")
        assert rc == 0, out
    finally:
        (conf / "stale.cfg").unlink()


def _hold_lock(tb: Testbed) -> int:
    """Hold the update lock from a process of its own (as the haproxy deploy or another run would) until
    _release_lock (at most 60 s); returns its pid once it holds the lock (it says so itself: the running
    followers take the same lock now and then, so `flock -n` failing would not tell who holds it)."""
    rc, out = tb.exec("haproxy", f"mkdir -p {UPDATE_RUN_DIR}; rm -f /tmp/lock-held; touch /tmp/lock-hold; "
                                 f"setsid nohup flock {UPDATE_LOCK} bash -c 'touch /tmp/lock-held; "
                                 "for i in $(seq 600); do [ -e /tmp/lock-hold ] || break; sleep 0.1; done' "
                                 ">/dev/null 2>&1 & echo $!")
    assert rc == 0, out
    tb.wait_for(lambda: tb.exec("haproxy", "test -e /tmp/lock-held")[0] == 0, 10, 0.05, "the test's lock holder")
    return int(out.split()[-1])


def _release_lock(tb: Testbed, pid: int) -> None:
    tb.exec("haproxy", "rm -f /tmp/lock-hold")
    tb.wait_for(lambda: tb.exec("haproxy", f"kill -0 {pid}")[0] != 0, 10, 0.05, "the test's lock holder gone")


def test_one_run_at_a_time(tb):
    """A run waits while another holds the lock (the haproxy deploy, another run), and goes on once it is free."""
    _heal(tb)
    holder = _hold_lock(tb)
    result: dict[str, object] = {}
    # its own LOCK_WAIT (25 s) tells this run's flock from the followers' runs, which wait for the holder too
    run = threading.Thread(target=lambda: result.update(zip(("rc", "out"), tb.update({"LOCK_WAIT": "25"}),
                                                            strict=True)), daemon=True)
    run.start()
    try:
        tb.wait_for(lambda: tb.exec("haproxy", "pgrep -f 'flock -w 2[5] 9'")[0] == 0, 10, 0.05,
                    "the run waiting in flock")
        assert run.is_alive(), result  # still waiting: it did not run beside the holder
    finally:
        _release_lock(tb, holder)
    run.join(40)
    assert not run.is_alive() and result == {"rc": 0, "out": ""}, result  # went on once the lock was free


def test_reload_keeps_established_sessions_of_other_backends(tb):
    """A reload by the update script (a stale haproxy.cfg fixed: validated, then `systemctl reload haproxy`, here
    the same SIGUSR2 to HAProxy's master) leaves an established session of another backend where it is.
    be_rabbitmq's server is a deliberate stand-in: a Redis server on :5672 (the testbed runs no RabbitMQ;
    HAProxy proxies TCP there, so any session-holding TCP service shows it)."""
    _heal(tb)
    rabbitmq_standin = redis.Redis(host=tb.haproxy_ip, port=5672, socket_timeout=2, retry=None)
    conn = rabbitmq_standin.connection_pool.get_connection()
    conn.send_command("PING")
    assert conn.read_response() == b"PONG"
    pids = tb.haproxy_pids()
    try:
        rc, out = tb.update(_stale(tb))
        assert rc == 0 and "(validated); reloading" in out, out
    finally:
        (tb.dir / "haproxy" / "conf" / "stale.cfg").unlink()
    tb.wait_for(lambda: tb.haproxy_pids() != pids, 10, 0.1, "a new HAProxy worker")
    conn.send_command("PING")  # the same TCP connection, now served by the old worker
    assert conn.read_response() == b"PONG"
    rabbitmq_standin.connection_pool.release(conn)


def _pre_failover_connection_after_isolation(tb: Testbed):
    """Open a raw connection through HAProxy, isolate (pause) the master until HAProxy has switched, bring
    it back; return (connection, old master ip)."""
    old_i = tb.master_index()
    old_ip = tb.redis_ips[old_i]
    conn = redis.Connection(host=tb.haproxy_ip, port=6379, password=tb.logins["app"].password, socket_timeout=2,
                            retry=None)
    conn.connect()
    conn.send_command("SET", "pre-failover", "before")
    assert conn.read_response() == b"OK"
    tb.pause_redis(old_i)  # alive but cut off: its established sessions stay open
    _switched_away_from(tb, f"{old_ip}:6379")
    tb.unpause_redis(old_i)
    return conn, old_ip


def test_a_connection_opened_before_the_failover_cannot_write_to_the_demoted_master(tb):
    _heal(tb)
    conn, old_ip = _pre_failover_connection_after_isolation(tb)
    with pytest.raises((redis.ConnectionError, OSError)):
        conn.send_command("SET", "pre-failover", "after")
        conn.read_response()
    assert tb.redis_client(old_ip).get("pre-failover") != "after"
    _heal(tb)


def test_without_the_session_shutdown_the_old_connection_would_stay_on_the_demoted_master(tb):
    """Proves the previous test can fail: with KILL_OLD_SESSIONS=0 (and nothing else changed) a connection
    opened before the failover is still attached to the old master after HAProxy switched."""
    _heal(tb)
    conf = "/etc/keybuzz/redis-update-master.conf"
    tb.exec("haproxy", f"cp {conf} /tmp/conf.bak && echo KILL_OLD_SESSIONS=0 >>{conf}")
    try:
        conn, old_ip = _pre_failover_connection_after_isolation(tb)
        conn.send_command("INFO", "server")
        info = conn.read_response().decode()
        assert f"run_id:{_run_id(tb.redis_client(old_ip))}" in info  # still talking to the demoted master
        conn.disconnect()
    finally:
        tb.exec("haproxy", f"cp /tmp/conf.bak {conf}")
    _heal(tb)


# ---------------------------------------------------------------- ACL users (least privilege, issue 9 §4)

def _refused(client: redis.Redis, *command) -> bool:
    try:
        client.execute_command(*command)
    except redis.exceptions.NoPermissionError:
        return True
    return False


def test_the_applications_login_writes_through_haproxy_but_runs_no_admin_or_dangerous_command(tb):
    _heal(tb)
    app = tb.lb_client(timeout=2)
    assert app.execute_command("ACL", "WHOAMI") == "default"
    assert app.set("acl:app", "1") and app.get("acl:app") == "1"
    assert app.execute_command("WAIT", 1, 1000) >= 0 and app.info("server")["redis_version"]
    for command in (("CONFIG", "GET", "maxmemory"), ("FLUSHALL",), ("FLUSHDB",), ("SHUTDOWN", "NOSAVE"),
                    ("REPLICAOF", "NO", "ONE"), ("KEYS", "*"), ("ACL", "LIST"),
                    ("CLIENT", "KILL", "TYPE", "normal"), ("MONITOR",)):
        assert _refused(app, *command), f"the applications' login may run {command[0]}"
    # (DEBUG is refused to everyone by Redis's own enable-debug-command default, before the ACL is asked)
    # and it opens nothing on a Sentinel (its `default` user is off there)
    with pytest.raises(redis.exceptions.AuthenticationError):
        tb.redis_client(tb.sentinel_ips[0], 26379, login=tb.logins["app"]).ping()


def test_the_haproxy_hosts_login_asks_who_the_master_is_and_nothing_else(tb):
    _heal(tb)
    haproxy = tb.logins["haproxy"]
    node = tb.redis_client(tb.redis_ips[0], login=haproxy)
    assert node.execute_command("ROLE")[0] in ("master", "slave")
    assert _refused(node, "GET", "acl:app") and _refused(node, "SET", "x", "1") and _refused(node, "CONFIG", "GET", "*")
    sentinel = tb.redis_client(tb.sentinel_ips[0], 26379, login=haproxy)
    assert sentinel.execute_command("SENTINEL", "get-master-addr-by-name", "keybuzz-master")
    for command in (("SENTINEL", "FAILOVER", "keybuzz-master"), ("SENTINEL", "SET", "keybuzz-master", "quorum", "1"),
                    ("SENTINEL", "MASTERS"), ("SENTINEL", "REMOVE", "keybuzz-master"), ("ACL", "LIST")):
        assert _refused(sentinel, *command), f"the haproxy login may run {' '.join(command[:2])}"


def test_replication_and_sentinel_users_keep_failover_working_and_survive_config_rewrites(tb):
    """Replicas (replication user) and Sentinels (Sentinel user) are logged in (wait_ready); after a failover,
    which makes Redis and Sentinel rewrite their files, the ACL settings are still there."""
    _heal(tb)
    old = tb.sentinel_master()
    tb.kill_redis(tb.master_index())
    _switched_away_from(tb, old)
    _heal(tb)
    for node in NAMES:
        # the rewritten files quote values; lines carrying a password are left out (never in a failure message)
        redis_conf, sentinel_conf = ({line.replace('"', "") for line in (tb.dir / node / f).read_text().splitlines()
                                      if "auth " not in line and "-pass " not in line}
                                     for f in ("conf/redis.conf", "sentinel/sentinel.conf"))
        assert {"aclfile /conf/users.acl", "masteruser tb-replication"} <= redis_conf, node
        assert {"aclfile /sentinel/users.acl", "sentinel sentinel-user tb-sentinel",
                "sentinel auth-user keybuzz-master tb-sentinel"} <= sentinel_conf, node


def _settings_tool(tb: Testbed, i: int, command: str) -> subprocess.CompletedProcess:
    """Run the real keybuzz-redis-settings `command` for node i, as the deploy does on a Redis host (here from
    this machine: it reaches the node's Redis and Sentinel with docker exec, as there)."""
    return subprocess.run(["bash", str(ROOT / "templates/redis/keybuzz-redis-settings"), command],
                          capture_output=True, text=True, timeout=90,
                          env={**os.environ, "REDIS_ENV_FILE": str(tb.dir / "redis.env"),  # the admin login
                               "REDIS_CONTAINER": tb.docker(f"redis-{i + 1}").name,
                               "SENTINEL_CONTAINER": tb.docker(f"sentinel-{i + 1}").name})


def _write_acl_files(tb: Testbed, users: dict[str, Login]) -> None:
    for node in NAMES:
        for sub, text in (("conf", render_redis_acl(users)), ("sentinel", render_sentinel_acl(users))):
            (tb.dir / node / sub / "users.acl").write_text(text)  # same owner and mode: rewritten in place


def test_a_changed_users_acl_is_taken_by_acl_load_without_a_restart(tb):
    """What the deploy runs when users.acl changes: keybuzz-redis-settings acl-load on every node (ACL LOAD in its
    Redis and its Sentinel); a file Redis refuses fails the run and changes nothing."""
    _heal(tb)
    rotated = dict(tb.logins, haproxy=Login("tb-haproxy", "tb-rotated-" + str(time.time_ns())))
    def run_ids() -> list[str]:
        return ([_run_id(tb.redis_client(ip)) for ip in tb.redis_ips]
                + [_run_id(tb.redis_client(ip, 26379)) for ip in tb.sentinel_ips])
    before = run_ids()
    try:
        _write_acl_files(tb, rotated)
        for i in range(3):
            proc = _settings_tool(tb, i, "acl-load")
            assert proc.returncode == 0, proc.stderr
        for ip, port in [(ip, 6379) for ip in tb.redis_ips] + [(ip, 26379) for ip in tb.sentinel_ips]:
            assert tb.redis_client(ip, port, login=rotated["haproxy"]).ping(), (ip, port)
            with pytest.raises(redis.exceptions.AuthenticationError):
                tb.redis_client(ip, port, login=tb.logins["haproxy"]).ping()
        # a users.acl Redis refuses: the run fails, saying so, and the loaded users stay as they were
        path = tb.dir / NAMES[0] / "conf" / "users.acl"
        path.write_text(render_redis_acl(tb.logins) + "user broken on nopass +no-such-command\n")
        proc = _settings_tool(tb, 0, "acl-load")
        assert proc.returncode == 1 and "Redis refused users.acl" in proc.stderr, proc.stderr
        assert tb.redis_client(tb.redis_ips[0], login=rotated["haproxy"]).ping()
        with pytest.raises(redis.exceptions.AuthenticationError):
            tb.redis_client(tb.redis_ips[0], login=tb.logins["haproxy"]).ping()
        assert run_ids() == before  # nothing restarted
    finally:  # back to the testbed's own logins (the followers inside HAProxy use them)
        _write_acl_files(tb, tb.logins)
        for i in range(3):
            proc = _settings_tool(tb, i, "acl-load")
            assert proc.returncode == 0, proc.stderr


def test_the_deploys_see_a_first_install_only_when_no_sentinel_could_be_hiding_a_master(tb):
    """deploys/redis.py makes redis-01 master only on a first install; a refused login or a Sentinel it
    cannot reach is never one (issue 10 §4: it would create a second master)."""
    from keybuzz.redis.client import CLOSED, REFUSED_LOGIN, UNKNOWN, cluster_view

    _heal(tb)
    view = cluster_view(tb.sentinel_ips, tb.admin)
    assert view.master and not view.first_install
    wrong = cluster_view(tb.sentinel_ips, Login(tb.admin.user, "not-the-password"))
    assert wrong.master is None and wrong.refused_login and not wrong.first_install
    assert wrong.replies == (REFUSED_LOGIN,) * 3
    # nothing listens on 26379 of the Redis containers: as on hosts where Redis is not installed yet
    fresh = cluster_view(tb.redis_ips, tb.admin)
    assert fresh.replies == (CLOSED,) * 3 and fresh.first_install
    # one not installed yet and one it cannot reach (an address nobody holds: timeout): not a first install
    mixed = cluster_view([tb.redis_ips[0], tb.ip(99)], tb.admin)
    assert mixed.replies[0] == CLOSED and mixed.replies[1].startswith("error: ") and not mixed.first_install
    assert UNKNOWN not in mixed.replies + fresh.replies


# ---------------------------------------------------------------- a returning old master (issue 10 §2)

def test_a_returning_old_master_is_never_a_master_not_even_for_a_moment(tb):
    """Kill the master, wait for the failover, start it again as systemd would (keybuzz-redis-start-gate, then
    the container) and ask its ROLE every 50 ms from the moment it accepts connections: never `master`."""
    _heal(tb)
    old_i = tb.master_index()
    old = f"{tb.redis_ips[old_i]}:6379"
    tb.kill_redis(old_i)
    new = _switched_away_from(tb, old)
    tb.start_redis(old_i)
    client = tb.redis_client(tb.redis_ips[old_i], timeout=0.5)
    roles = roles_until_replica_of(client, new.split(":")[0], seconds=30)
    assert roles, "the old master never accepted connections"
    assert "master" not in roles, f"the old master answered ROLE master {roles.count('master')} times"
    assert roles[-1] == "slave", roles[-5:]
    assert tb.sentinel_master() == new  # no second failover
    _heal(tb)


# ---------------------------------------------------------------- the follower is never silent (issue 10 §4)

def _stale(tb: Testbed, name: str = "stale.cfg") -> dict[str, str]:
    """A private copy of haproxy.cfg pointing at a replica (a missed failover), which the running followers
    never touch (they would fix haproxy.cfg itself between two lines of a test); returns the settings that make
    a run of the script work on it. Its reload is the real one (HAProxy keeps reading haproxy.cfg)."""
    master = tb.cfg_master()
    replica = next(f"{ip}:6379" for ip in tb.redis_ips if f"{ip}:6379" != master)
    path = tb.dir / "haproxy" / "conf" / name
    path.write_text(tb.haproxy_cfg().replace(f"server redis-master {master} check",
                                             f"server redis-master {replica} check"))
    return {"HAPROXY_CFG": f"{CONTAINER_CFG_DIR}/{name}"}


def _cfg_master_of(tb: Testbed, name: str) -> str | None:
    from keybuzz.haproxy.settings import cfg_master

    return cfg_master((tb.dir / "haproxy" / "conf" / name).read_text().splitlines())


def test_a_hung_haproxy_check_or_reload_is_cut_short_and_the_lock_released(tb):
    _heal(tb)
    run_safety_bound_s = 10  # a run that is cut short (2 s timeouts here) ends well within this; not a target
    start = time.monotonic()
    rc, out = tb.update({**_stale(tb), "HAPROXY_CHECK_CMD": "tail -f", "CHECK_TIMEOUT": "2"}, timeout=30)
    assert rc == 4 and "invalid" in out and time.monotonic() - start < run_safety_bound_s + 5, out
    rc, out = tb.update({**_stale(tb), "HAPROXY_RELOAD_CMD": "sleep 600", "RELOAD_TIMEOUT": "2"}, timeout=30)
    assert rc == 7 and "reload failed or took more than 2 s" in out, out
    start = time.monotonic()
    rc, out = tb.update(_stale(tb))  # the lock is free again at once
    assert rc == 0 and time.monotonic() - start < run_safety_bound_s, out
    assert _cfg_master_of(tb, "stale.cfg") == tb.cfg_master()
    (tb.dir / "haproxy" / "conf" / "stale.cfg").unlink()


def test_exit_codes_say_lock_busy_and_reload_failed(tb):
    _heal(tb)
    holder = _hold_lock(tb)
    try:
        rc, out = tb.update({"LOCK_WAIT": "1"})
    finally:
        _release_lock(tb, holder)
    assert rc == 5 and "lock busy" in out, out
    rc, out = tb.update({**_stale(tb), "HAPROXY_RELOAD_CMD": "false"})
    assert rc == 7 and "reload failed" in out, out
    (tb.dir / "haproxy" / "conf" / "stale.cfg").unlink()


def test_temporary_files_and_the_lock_live_in_a_root_only_runtime_directory(tb):
    _heal(tb)
    # a /tmp it cannot write to (a full root disk, a broken TMPDIR) must not look like "no majority"
    rc, out = tb.update(env={"TMPDIR": "/nonexistent-tmp"})
    assert (rc, out) == (0, ""), out
    rc, out = tb.exec("haproxy", f"stat -c '%a %U' {UPDATE_RUN_DIR} && test -f {UPDATE_LOCK} && echo lock-there")
    assert out.split() == ["700", "root", "lock-there"], out


def test_the_script_never_touches_another_writers_candidate_haproxy_cfg(tb):
    """The haproxy deploy writes its candidate beside haproxy.cfg too (keybuzz.ops.validated_file): the script's
    own candidate has a unique name, so neither ever overwrites or installs the other's."""
    _heal(tb)
    conf = tb.dir / "haproxy" / "conf"
    settings = _stale(tb)
    others = {conf / "stale.cfg.keybuzz-new": "the deploy's candidate (its former name)\n",
              conf / "stale.cfg.keybuzz-new.0123456789ab": "the deploy's candidate\n"}
    for path, text in others.items():
        path.write_text(text)
    rc, out = tb.update(settings)
    assert rc == 0 and _cfg_master_of(tb, "stale.cfg") == tb.cfg_master(), out
    assert {p: p.read_text() for p in others} == others
    assert sorted(p.name for p in conf.iterdir()) == sorted(["haproxy.cfg", "stale.cfg", *(p.name for p in others)])
    for path in [*others, conf / "stale.cfg"]:
        path.unlink()


def test_a_follower_that_cannot_follow_for_longer_than_fail_after_fails_and_says_why(tb):
    """redis-update-master.service sets FAIL_AFTER=60 (3 s here): a failure younger than that is logged and
    exits 0; an older one exits with its code (the unit fails: systemctl --failed) and says since when.
    (A runtime directory of its own: the running followers share the real one and would reset it.)"""
    _heal(tb)
    own = _OWN_RUN
    nobody = {**own, "SENTINELS": " ".join(tb.ip(n) for n in (97, 98, 99))}
    rc, out = tb.update(own, env={"FAIL_AFTER": "3"})
    assert (rc, out) == (0, "")
    runs = []

    def failed() -> bool:  # one run against Sentinels nobody answers for (about 1 s: the query timeout)
        runs.append(tb.update(nobody, env={"FAIL_AFTER": "3"}))
        return runs[-1][0] != 0
    tb.wait_for(failed, 30, 0.2, "a failure older than FAIL_AFTER failing the run")
    # each run says for how long it has been failing: exit 0 below FAIL_AFTER, then its code (3, no majority)
    assert len(runs) >= 2, runs
    for rc, out in runs[:-1]:
        assert rc == 0 and re.search(r"could not follow \(code 3\) for [0-2] s;", out), out
    rc, out = runs[-1]
    assert rc == 3 and re.search(r"NOT FOLLOWING the Redis master for ([3-9]|[1-9][0-9]+) s \(code 3;", out), out
    assert "last successful follow: 2" in out, out  # the time of the successful run above
    rc, out = tb.update(own, env={"FAIL_AFTER": "3"})
    assert (rc, out) == (0, "")
    assert tb.exec("haproxy", f"test -e {own['RUN_DIR']}/failing-since")[0] == 1  # following again: reset


def test_the_watcher_bounds_each_update_run(tb):
    """A hung update run (a stuck docker exec, socat...) must not stop the watcher from following."""
    _heal(tb)
    hung = tb.dir / "haproxy" / "bin" / "hung-update"
    hung.write_text("#!/bin/sh\nexec sleep 600\n")
    hung.chmod(0o755)
    rc, out = tb.exec("haproxy", "REDIS_UPDATE_MASTER=/usr/local/keybuzz-bin/hung-update UPDATE_TIMEOUT=1 "
                                 "setsid nohup /usr/local/keybuzz-bin/redis-master-watch.sh >/tmp/hung-watch.log "
                                 "2>&1 & echo $!")
    pgid = int(out.strip())
    try:
        tb.wait_for(lambda: "timed out after 1 s" in tb.exec("haproxy", "cat /tmp/hung-watch.log")[1], 15, 0.3,
                    "the watcher cutting a hung update run short")
    finally:
        tb.exec("haproxy", f"kill -- -{pgid}")


def test_the_start_gate_never_guesses(tb):
    """No majority (Sentinels it cannot reach, with data here) or a login the Sentinels refuse: the gate asks
    again until GATE_WAIT, then fails and removes the previous answer (Redis then refuses to start)."""
    _heal(tb)
    out = tb.dir / "gate-out.conf"
    nobody = " ".join(tb.ip(n) for n in (97, 98, 99))
    wrong = tb.dir / "wrong.env"
    wrong.write_text(env_file(Login(tb.admin.user, "not-the-password"), "admin"))
    for case, overrides in (("unreachable", {"SENTINELS": nobody}), ("refused login", {"REDIS_ENV_FILE": str(wrong)})):
        out.write_text("replicaof no one\n")  # a stale answer from the previous start
        start = time.monotonic()
        gate = tb.start_gate(0, OUT=str(out), GATE_WAIT="3", **overrides)
        assert gate.returncode == 1 and "no majority of Sentinels" in gate.stderr, (case, gate.stderr)
        assert time.monotonic() - start < 30 and not out.exists(), case  # 30 s: a safety bound for GATE_WAIT 3 s
    # the real Sentinels: the master's node starts as master, the others as its replicas
    master_ip = tb.sentinel_master().split(":")[0]
    for i, ip in enumerate(tb.redis_ips):
        gate = tb.start_gate(i, OUT=str(out))
        assert gate.returncode == 0, gate.stderr
        assert out.read_text().splitlines()[-1] == ("replicaof no one" if ip == master_ip
                                                   else f"replicaof {master_ip} 6379")


def test_the_master_is_handed_over_before_a_restart_and_no_acknowledged_write_is_lost(tb):
    """What the deploy runs before restarting the master (keybuzz-redis-settings handover): writes paused,
    SENTINEL FAILOVER, back when the node is a replica; a client writing through HAProxy loses nothing."""
    from keybuzz.redis.client import WriteProbe

    _heal(tb)
    old_i = tb.master_index()
    old = tb.sentinel_master()
    probe = WriteProbe(tb.haproxy_ip, 6379, tb.logins["app"], prefix="handover:", ttl=300, max_seconds=60).start()
    try:
        tb.wait_for(lambda: sum(w.replicated for w in probe.writes) >= 10, 10, 0.05,
                    "writes acknowledged by a replica before the handover")
        proc = _settings_tool(tb, old_i, "handover")
        assert proc.returncode == 0 and "handed over" in proc.stdout, proc.stdout + proc.stderr
        assert tb.role(tb.redis_ips[old_i]) == "slave"
        new = tb.wait_for(lambda: (m := tb.sentinel_master()) != old and m, 10, 0.1, "the Sentinels' new master")
        _switched_away_from(tb, old)
        switched = time.monotonic()
        tb.wait_for(lambda: probe.resumed_after(switched), 10, 0.05, "a write through HAProxy after the switch")
    finally:
        probe.stop()
    master = tb.redis_client(new.split(":")[0])
    lost_acked, acked = probe.lost(master)[:2]
    assert acked > 0 and lost_acked == 0, (acked, lost_acked)
    # not the master any more: a second run hands nothing over
    again = _settings_tool(tb, old_i, "handover")
    assert again.returncode == 0 and "nothing to hand over" in again.stdout
    _heal(tb)


def test_wait_sentinel_returns_only_once_no_sentinel_is_still_in_a_failover(tb):
    """HOST_READY's `keybuzz-redis-settings wait-sentinel` (after a host's restart, before the next host's): while
    a failover runs, its leader Sentinel names the old master until the replicas are reconfigured; restarting the
    promoted node then leaves the leader stuck (the `_heal` finding). Run on a node whose Sentinel is NOT the
    leader, as the next host of a rolling restart would, it must not return before every Sentinel names the new
    master with flags exactly `master`. The old check (the local Sentinel knows a peer) returned at once."""
    _heal(tb)
    old = tb.sentinel_master()
    leader = 0
    waiter = next(i for i in range(3) if i != leader)
    in_progress: list[float] = []
    result: dict[str, object] = {}

    def wait_sentinel():
        result["proc"] = _settings_tool(tb, waiter, "wait-sentinel")
        result["at"] = time.monotonic()

    assert tb.redis_client(tb.sentinel_ips[leader], 26379).execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
    thread = threading.Thread(target=wait_sentinel, daemon=True)
    thread.start()
    deadline = time.monotonic() + 150
    settled_at = None
    # every Sentinel's view every 0.1 s, until the tool has returned AND every Sentinel has ended (bounded)
    while (thread.is_alive() or settled_at is None) and time.monotonic() < deadline:
        busy = False
        for i in range(3):
            try:
                busy |= tb.sentinel_state(i).get("flags") != "master"
            except (redis.RedisError, OSError):
                busy = True
        if busy:
            in_progress.append(time.monotonic())
        elif settled_at is None and in_progress:
            settled_at = time.monotonic()
        time.sleep(0.1)
    thread.join(5)
    proc = result["proc"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert in_progress and settled_at, "no Sentinel seen in its failover, or never ended: the test proved nothing"
    assert in_progress[-1] < result["at"], (f"wait-sentinel returned {in_progress[-1] - result['at']:.2f} s "
                                            "before the last Sentinel ended its failover")
    assert tb.sentinel_master() != old
    _heal(tb)

def test_the_haproxy_ready_command_waits_until_haproxy_serves(tb):
    """What the haproxy deploy runs after restarting HAProxy on one host, before the next (restart_if(ready=)):
    it returns at once when HAProxy serves, and waits (bounded) while nothing listens."""
    from keybuzz.haproxy.settings import READY_COMMAND, STATS_PORT

    safety_bound_s = 5  # "at once" on a busy machine (docker exec included); not a target
    start = time.monotonic()
    rc, out = tb.exec("haproxy", READY_COMMAND, timeout=90)
    assert rc == 0 and time.monotonic() - start < safety_bound_s, out
    not_serving = READY_COMMAND.replace(f"/{STATS_PORT})", "/8499)").replace("timeout 60", "timeout 2")
    assert not_serving != READY_COMMAND
    start = time.monotonic()
    rc, out = tb.exec("haproxy", not_serving, timeout=30)
    # it waited (its 2 s timeout here), and then gave up: 124
    assert rc == 124 and 1.5 < time.monotonic() - start < 2 + safety_bound_s, out
