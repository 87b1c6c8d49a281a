"""HAProxy follows Redis failovers (design §C), on real containers: 3 Redis + 3 Sentinel + HAProxy started
from the project's rendered files, with the real redis-update-master.sh and redis-master-watch.sh running
inside the HAProxy container (keybuzz/redis/testbed.py). Sentinel down-after is 2 s here (production: 5 s).

Tests share one testbed (module fixture) and each leaves it healthy: 3 Redis up, 3 Sentinels up,
followers running. About 2-3 minutes on 2 cores.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import redis

from helpers import roles_until_replica_of
from keybuzz.haproxy.settings import CONTAINER_CFG_DIR, UPDATE_LOCK, UPDATE_RUN_DIR
from keybuzz.redis.settings import Login, env_file, render_redis_acl, render_sentinel_acl
from keybuzz.redis.testbed import NAMES, Testbed  # noqa: E402

DOWN_AFTER_MS = 2000
# kill -> Sentinel decision (down-after + election) -> HAProxy switch: generous bound for a busy CI machine
SWITCH_BOUND_S = DOWN_AFTER_MS / 1000 + 8


@pytest.fixture(scope="module")
def tb():
    with Testbed(down_after_ms=DOWN_AFTER_MS, watch=True, timer_s=15) as testbed:
        testbed.wait_ready()
        testbed.start_followers()
        testbed.wait_for(lambda: "subscribe" not in testbed.logs(), 5)
        yield testbed


def _heal(tb: Testbed) -> None:
    """Every container running again, replication and Sentinel discovery complete, HAProxy on the master."""
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
        info = tb.redis_client(master.split(":")[0]).info("replication")
        return info.get("connected_slaves") == 2 and tb.cfg_master() == master and tb.runtime_master() == master
    tb.wait_for(healed, 40, 0.3, "replicas reattached and HAProxy on the master")


def _switched_away_from(tb: Testbed, old: str) -> str:
    """Wait until haproxy.cfg and the running HAProxy name a new master; return it."""
    def moved():
        cfg, run = tb.cfg_master(), tb.runtime_master()
        return cfg if cfg and cfg != old and cfg == run else None
    return tb.wait_for(moved, SWITCH_BOUND_S, 0.05, f"HAProxy leaving {old}")


def _run_id(client: redis.Redis) -> str:
    return client.info("server")["run_id"]


def test_kill_master_writes_through_haproxy_resume_on_the_new_master(tb):
    old_i = tb.master_index()
    old = f"{tb.redis_ips[old_i]}:6379"
    lb = tb.lb_client(timeout=0.5)
    lb.set("before-kill", "1")
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
    assert gap < SWITCH_BOUND_S


def test_old_master_rejoins_as_replica_and_haproxy_never_sends_it_a_write(tb):
    dead = [i for i in range(3) if tb.role(tb.redis_ips[i]) is None]
    assert dead, "the previous test leaves the killed master down"
    old_ip = tb.redis_ips[dead[0]]
    master = tb.sentinel_master()
    lb = tb.lb_client(timeout=0.5)
    tb.start_redis(dead[0])
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
    assert seen_cfg == {master}
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
        # the bound: NO_MAJORITY_MAINT 5 s + the guard's 2 s + one Sentinel query timeout (1 s), and margin
        assert 5 <= stopped_after <= 12, f"writes stopped {stopped_after:.1f} s after the majority was lost"
    finally:
        tb.start_sentinel(1)
        tb.start_sentinel(2)
    tb.wait_for(lambda: not refused(), 30, 0.2, "HAProxy serving again once a majority answers")
    assert "be_redis_master out of maintenance" in tb.logs()
    print(f"\nfail closed: writes through HAProxy refused {stopped_after:.1f} s after 2 of 3 Sentinels went away")
    _heal(tb)


# settings of the update runs that ask fake or unreachable Sentinels (see the tests that use it)
_OWN_RUN = {"RUN_DIR": "/run/keybuzz-redis-update-test", "NO_MAJORITY_MAINT": "3600"}


def _fake_sentinels(tb: Testbed, replies: list[str]) -> str:
    """Start fake Sentinels inside the HAProxy container (ports 27001..), one per raw RESP reply (sent after
    the +OK that answers redis-cli's AUTH); returns the SENTINELS value naming them."""
    tb.exec("haproxy", "pkill -f 'TCP-LISTEN:270' ; true")
    addrs = []
    for n, reply in enumerate(replies):
        port = 27001 + n
        fake = tb.dir / "haproxy" / "bin" / f"fake-sentinel-{port}"
        fake.with_suffix(".reply").write_bytes(("+OK\r\n" + reply).encode())
        fake.write_text(f"#!/bin/sh\ncat /usr/local/keybuzz-bin/{fake.name}.reply\nsleep 0.3\n")
        fake.chmod(0o755)
        tb.exec("haproxy", f"setsid nohup socat TCP-LISTEN:{port},fork,reuseaddr "
                           f"EXEC:/usr/local/keybuzz-bin/{fake.name} >/dev/null 2>&1 &")
        addrs.append(f"127.0.0.1:{port}")
    time.sleep(0.3)
    return " ".join(addrs)


def _addr_reply(ip: str, port: str = "6379") -> str:
    return f"*2\r\n${len(ip)}\r\n{ip}\r\n${len(port)}\r\n{port}\r\n"


@pytest.mark.parametrize("case", ["unreachable", "not-sentinels", "garbage", "no-majority", "majority-names-replica",
                                  "majority-names-unknown-node", "malformed-address", "empty-answers"])
def test_bad_sentinel_answers_leave_haproxy_cfg_untouched_and_haproxy_serving(tb, case):
    _heal(tb)
    master = tb.cfg_master()
    replica = next(ip for ip in tb.redis_ips if f"{ip}:6379" != master)
    if case == "unreachable":
        sentinels = " ".join(tb.ip(n) for n in (97, 98, 99))  # nobody there (own test subnet)
    elif case == "not-sentinels":
        sentinels = " ".join(f"{ip}:6379" for ip in tb.redis_ips)  # Redis answers ERR unknown command
    elif case == "garbage":
        sentinels = _fake_sentinels(tb, ["garbage\r\n", "*2\r\n$3\r\nabc\r\n$2\r\nxx\r\n", "-ERR no\r\n"])
    elif case == "no-majority":
        sentinels = _fake_sentinels(tb, [_addr_reply(ip) for ip in tb.redis_ips])
    elif case == "majority-names-replica":
        sentinels = _fake_sentinels(tb, [_addr_reply(replica)] * 3)
    elif case == "majority-names-unknown-node":
        sentinels = _fake_sentinels(tb, [_addr_reply(tb.ip(77))] * 3)
    elif case == "malformed-address":
        sentinels = _fake_sentinels(tb, [_addr_reply("999.1.1.1")] * 2 + [_addr_reply("1.2.3", "x")])
    else:
        sentinels = _fake_sentinels(tb, ["*-1\r\n", "*0\r\n", "$0\r\n\r\n"])
    before_cfg, before_pids = tb.haproxy_cfg(), tb.haproxy_pids()
    # a runtime directory of its own, and no fail-closed: these runs ask fake Sentinels, while the HAProxy they
    # would put in maintenance is the real one (its real followers see the real majority)
    rc, out = tb.update({"SENTINELS": sentinels, **_OWN_RUN})
    not_a_master = case in ("majority-names-replica", "majority-names-unknown-node")
    assert rc == (6 if not_a_master else 3), out  # 6 "not a master", 3 "no majority" (script header)
    expected = {"majority-names-replica": "does not answer ROLE master",
                "majority-names-unknown-node": "which is not a Redis node"}.get(case, "no majority of Sentinels")
    assert expected in out  # refused for the right reason, not by accident
    assert tb.haproxy_cfg() == before_cfg
    assert tb.haproxy_pids() == before_pids  # no reload
    assert tb.runtime_master() == master
    assert tb.lb_client().set(f"serving-{case}", "1")
    tb.exec("haproxy", "pkill -f 'TCP-LISTEN:270' ; true")


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


def _point_cfg_at(tb: Testbed, addr: str) -> None:
    """Make haproxy.cfg stale (as after a missed failover), without touching the running HAProxy."""
    path = tb.dir / "haproxy/conf/haproxy.cfg"
    current = tb.cfg_master()
    path.write_text(path.read_text().replace(f"server redis-master {current} check",
                                             f"server redis-master {addr} check"))


def test_an_invalid_candidate_config_is_never_installed_and_a_valid_one_is(tb):
    _heal(tb)
    master = tb.cfg_master()
    replica = next(f"{ip}:6379" for ip in tb.redis_ips if f"{ip}:6379" != master)
    _point_cfg_at(tb, replica)
    stale = tb.haproxy_cfg()
    rc, out = tb.update({"HAPROXY_CHECK_CMD": "false"})  # haproxy -c says no
    assert rc == 4 and "invalid" in out
    assert tb.haproxy_cfg() == stale
    assert not [p.name for p in (tb.dir / "haproxy/conf").iterdir() if p.name != "haproxy.cfg"]  # no leftover
    rc, out = tb.update()
    assert rc == 0 and f"server redis-master {replica} -> {master} (validated)" in out
    assert tb.cfg_master() == master
    rc, out = tb.exec("haproxy", "haproxy -c -q -f /usr/local/etc/haproxy/haproxy.cfg")
    assert rc == 0, out


def test_one_run_at_a_time(tb):
    _heal(tb)
    tb.exec("haproxy", f"setsid nohup flock {UPDATE_LOCK} sleep 2 >/dev/null 2>&1 &")
    time.sleep(0.2)
    start = time.monotonic()
    rc, _ = tb.update()
    assert rc == 0 and time.monotonic() - start >= 1.5  # it waited for the holder


def test_reload_keeps_established_sessions_of_other_backends(tb):
    _heal(tb)
    amqp_standin = redis.Redis(host=tb.haproxy_ip, port=5672, socket_timeout=2, retry=None)
    conn = amqp_standin.connection_pool.get_connection()
    conn.send_command("PING")
    assert conn.read_response() == b"PONG"
    pids = tb.haproxy_pids()
    rc, _ = tb.exec("haproxy", "kill -USR2 1")  # what `systemctl reload haproxy` sends (ExecReload)
    assert rc == 0
    tb.wait_for(lambda: tb.haproxy_pids() != pids, 10, 0.1, "a new HAProxy worker")
    conn.send_command("PING")  # the same TCP connection, now served by the old worker
    assert conn.read_response() == b"PONG"
    amqp_standin.connection_pool.release(conn)


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


def test_a_changed_users_acl_is_taken_by_acl_load_without_a_restart(tb):
    """What the deploy does when users.acl changes (keybuzz-redis-settings acl-load): ACL LOAD everywhere."""
    _heal(tb)
    rotated = dict(tb.logins, haproxy=Login("tb-haproxy", "tb-rotated-" + str(time.time_ns())))
    run_ids = [_run_id(tb.redis_client(ip)) for ip in tb.redis_ips]
    for node in NAMES:
        for sub, text in (("conf", render_redis_acl(rotated)), ("sentinel", render_sentinel_acl(rotated))):
            path = tb.dir / node / sub / "users.acl"
            path.write_text(text)  # same owner and mode: the file is rewritten in place
    for ip, port in [(ip, 6379) for ip in tb.redis_ips] + [(ip, 26379) for ip in tb.sentinel_ips]:
        assert tb.redis_client(ip, port).execute_command("ACL", "LOAD") in ("OK", b"OK", True)
    assert tb.redis_client(tb.redis_ips[0], login=rotated["haproxy"]).execute_command("ROLE")
    with pytest.raises(redis.exceptions.AuthenticationError):
        tb.redis_client(tb.redis_ips[0], login=tb.logins["haproxy"]).ping()
    assert [_run_id(tb.redis_client(ip)) for ip in tb.redis_ips] == run_ids  # nothing restarted
    # back to the testbed's own logins (the followers inside HAProxy use them)
    for node in NAMES:
        (tb.dir / node / "conf" / "users.acl").write_text(render_redis_acl(tb.logins))
        (tb.dir / node / "sentinel" / "users.acl").write_text(render_sentinel_acl(tb.logins))
    for ip, port in [(ip, 6379) for ip in tb.redis_ips] + [(ip, 26379) for ip in tb.sentinel_ips]:
        tb.redis_client(ip, port).execute_command("ACL", "LOAD")


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
    start = time.monotonic()
    rc, out = tb.update({**_stale(tb), "HAPROXY_CHECK_CMD": "tail -f", "CHECK_TIMEOUT": "2"}, timeout=30)
    assert rc == 4 and "invalid" in out and time.monotonic() - start < 15, out
    rc, out = tb.update({**_stale(tb), "HAPROXY_RELOAD_CMD": "sleep 600", "RELOAD_TIMEOUT": "2"}, timeout=30)
    assert rc == 7 and "reload failed or took more than 2 s" in out, out
    start = time.monotonic()
    rc, out = tb.update(_stale(tb))  # the lock is free again at once
    assert rc == 0 and time.monotonic() - start < 10 and _cfg_master_of(tb, "stale.cfg") == tb.cfg_master(), out
    (tb.dir / "haproxy" / "conf" / "stale.cfg").unlink()


def test_exit_codes_say_lock_busy_and_reload_failed(tb):
    _heal(tb)
    tb.exec("haproxy", f"mkdir -p {UPDATE_RUN_DIR}; setsid nohup flock {UPDATE_LOCK} sleep 4 >/dev/null 2>&1 &")
    time.sleep(0.3)
    rc, out = tb.update({"LOCK_WAIT": "1"})
    assert rc == 5 and "lock busy" in out, out
    time.sleep(4)
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
    rc, out = tb.update(nobody, env={"FAIL_AFTER": "3"})
    assert rc == 0 and "could not follow (code 3)" in out, out
    time.sleep(3.5)
    rc, out = tb.update(nobody, env={"FAIL_AFTER": "3"})
    assert rc == 3 and "NOT FOLLOWING the Redis master for" in out and "last successful follow: 2" in out, out
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
        assert time.monotonic() - start < 30 and not out.exists(), case
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
    from keybuzz import ROOT
    from keybuzz.redis.client import WriteProbe

    _heal(tb)
    old_i = tb.master_index()
    old = tb.sentinel_master()
    env_path = tb.dir / "redis.env"  # the admin login, as on a Redis node
    probe = WriteProbe(tb.haproxy_ip, 6379, tb.logins["app"], prefix="handover:", ttl=300, max_seconds=60).start()
    time.sleep(1)
    proc = subprocess.run(["bash", str(ROOT / "templates/redis/keybuzz-redis-settings"), "handover"],
                          capture_output=True, text=True, timeout=90,
                          env={**os.environ, "REDIS_ENV_FILE": str(env_path),
                               "REDIS_CONTAINER": tb.docker(f"redis-{old_i + 1}").name,
                               "SENTINEL_CONTAINER": tb.docker(f"sentinel-{old_i + 1}").name})
    try:
        assert proc.returncode == 0 and "handed over" in proc.stdout, proc.stdout + proc.stderr
        assert tb.role(tb.redis_ips[old_i]) == "slave"
        new = tb.wait_for(lambda: (m := tb.sentinel_master()) != old and m, 10, 0.1, "the Sentinels' new master")
        _switched_away_from(tb, old)
        time.sleep(1)
    finally:
        probe.stop()
    master = tb.redis_client(new.split(":")[0])
    lost_acked, acked = probe.lost(master)[:2]
    assert acked > 0 and lost_acked == 0, (acked, lost_acked)
    # not the master any more: a second run hands nothing over
    again = subprocess.run(["bash", str(ROOT / "templates/redis/keybuzz-redis-settings"), "handover"],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "REDIS_ENV_FILE": str(env_path),
                                "REDIS_CONTAINER": tb.docker(f"redis-{old_i + 1}").name,
                                "SENTINEL_CONTAINER": tb.docker(f"sentinel-{old_i + 1}").name})
    assert again.returncode == 0 and "nothing to hand over" in again.stdout
    _heal(tb)


def test_the_haproxy_ready_command_waits_until_haproxy_serves(tb):
    """What the haproxy deploy runs after restarting HAProxy on one host, before the next (restart_if(ready=)):
    it returns at once when HAProxy serves, and waits (bounded) while nothing listens."""
    from keybuzz.haproxy.settings import READY_COMMAND, STATS_PORT

    start = time.monotonic()
    rc, out = tb.exec("haproxy", READY_COMMAND, timeout=90)
    assert rc == 0 and time.monotonic() - start < 5, out
    not_serving = READY_COMMAND.replace(f"/{STATS_PORT})", "/8499)").replace("timeout 60", "timeout 2")
    start = time.monotonic()
    rc, out = tb.exec("haproxy", not_serving, timeout=30)
    assert rc == 124 and 1.5 < time.monotonic() - start < 10, out
