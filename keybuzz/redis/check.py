"""Checks of the Redis layer (design §G), against the lab or production alike (Target.from_env()).

    invoke check --name redis             diag: role + offset of each node, Sentinel agreement, HAProxy's master,
                                          each HAProxy host's follower (failed units, last successful follow)
    invoke check --name redis --failover  controlled SENTINEL FAILOVER, write gap seen through the load balancer
    invoke check --name redis --perf      bounded benchmark through the load balancer (SET/GET, 5 s at most)

Only namespaced keys (keybuzz:check:*) with a TTL are written; nothing else is touched. No secret is printed.

Example::

    print(diag(Target.from_env()))
    # -> OK   redis diag
      # -> redis-01 172.30.0.21 master offset=1234 replicas=2
      ...
"""

from __future__ import annotations

import subprocess
import time

import redis

from keybuzz import ssh
from keybuzz.checks import Report, Target
from keybuzz.haproxy.client import server_address
from keybuzz.redis.client import WriteProbe, ask_sentinels, no_retry_client
from keybuzz.redis.settings import MASTER_NAME, REDIS_PORT, SENTINEL_PORT, Login, logins, majority

FAILOVER_BOUND_S = 60  # a controlled failover that takes longer than this is a failure
PAUSE_MS = 10000  # writes held on the old master during the switch (released as soon as HAProxy follows)
PERF_SECONDS = 5
PERF_MAX_OPS = 20000
FOLLOW_STALE_S = 60  # redis-update-master.service's FAIL_AFTER: a follower silent longer than this is a failure
# read-only, no secret: the follower units' state, its state files (/run/keybuzz-redis-update), its last log line
FOLLOWER_PROBE = ("systemctl is-failed redis-update-master.service redis-master-watch.service; "
                  "d=/run/keybuzz-redis-update; echo \"last=$(cat $d/last-follow 2>/dev/null) "
                  "since=$(cat $d/failing-since 2>/dev/null) now=$(date +%s)\"; "
                  "journalctl -u redis-update-master.service -n 1 -o cat --no-pager 2>/dev/null")


def follower_line(name: str, probe_output: str) -> tuple[str, bool]:
    r"""One diag line from FOLLOWER_PROBE's output on HAProxy host `name`: ok when neither unit failed and the
    last successful follow is at most FOLLOW_STALE_S old (the timer runs every 15 s).

    >>> follower_line("haproxy-01", "active\nactive\nlast=1000 since= now=1010\n")
    ('haproxy-01 follower: last successful follow 10 s ago', True)
    >>> line, ok = follower_line("haproxy-01", "failed\nactive\nlast=1000 since=1030 now=1200\nNOT FOLLOWING (code 3)")
    >>> ok, line.split(", ")[1:]
    (False, ['not following for 170 s', 'last successful follow 200 s ago; journal: NOT FOLLOWING (code 3)'])
    """
    lines = probe_output.splitlines()
    states = dict(zip(("redis-update-master.service", "redis-master-watch.service"), lines[:2], strict=False))
    fields = dict(f.partition("=")[::2] for f in (lines[2].split() if len(lines) > 2 else []))
    now = int(fields.get("now") or 0)
    last = int(fields["last"]) if fields.get("last", "").isdigit() else None
    since = int(fields["since"]) if fields.get("since", "").isdigit() else None
    failed = [unit for unit, state in states.items() if state.strip() == "failed"]
    ok = not failed and last is not None and now - last <= FOLLOW_STALE_S
    words = [f"{unit} FAILED" for unit in failed]
    if since is not None:
        words.append(f"not following for {now - since} s")
    words.append(f"last successful follow {now - last} s ago" if last is not None else "no successful follow yet")
    line = f"{name} follower: " + ", ".join(words)
    if not ok and len(lines) > 3:
        line += f"; journal: {lines[3].strip()}"
    return line, ok


def _logins(target: Target) -> dict[str, Login]:
    """The checks ask nodes and Sentinels as the admin user and write through the load balancer as the
    applications do (Redis's `default` user, REDIS_PASSWORD)."""
    return logins(target.secrets("redis"))


def app_privileges(client: redis.Redis) -> tuple[str, bool]:
    """(user the connection runs as, whether it is refused an admin command): what the applications' login can do."""
    whoami = client.execute_command("ACL", "WHOAMI")
    try:
        client.config_get("maxmemory")
        return whoami, False
    except redis.exceptions.NoPermissionError:
        return whoami, True


def _nodes(target: Target) -> list[tuple[str, str]]:
    return [(s.name, s.ip) for s in target.plan.group("redis")]


def haproxy_master(ip: str, timeout: float = 2.0) -> str | None:
    """'ip:port' HAProxy at `ip` uses for be_redis_master/redis-master (stats CSV, private network)."""
    return server_address(ip, "be_redis_master", "redis-master", timeout)


def _node_line(client: redis.Redis, name: str, ip: str) -> tuple[str, str | None]:
    info = client.info("replication")
    role = info.get("role")
    if role == "master":
        return (f"{name} {ip} master offset={info.get('master_repl_offset')} "
                f"replicas={info.get('connected_slaves')}", role)
    return (f"{name} {ip} replica of {info.get('master_host')} link={info.get('master_link_status')} "
            f"offset={info.get('slave_repl_offset')}", "slave")


def diag(target: Target, require_haproxy: bool = False) -> Report:
    """Role and replication offset of each node, each Sentinel's answer and their majority, the master each
    HAProxy points at, and a write + read through the load balancer landing on that master.

    `require_haproxy=False` (the redis layer, deployed before the haproxy layer): when no HAProxy stats page
    answers at all, HAProxy is taken as not deployed yet and not checked. The haproxy layer's check passes
    True (keybuzz/haproxy/check.py): then a silent HAProxy is a failure.
    """
    report = Report("redis diag")
    users = _logins(target)
    admin = users["admin"]
    nodes = _nodes(target)
    masters = []
    for name, ip in nodes:
        client = no_retry_client(ip, REDIS_PORT, admin, timeout=2)
        try:
            line, role = _node_line(client, name, ip)
            report.add(line)
            if role == "master":
                masters.append(ip)
        except (redis.RedisError, OSError) as e:
            report.add(f"{name} {ip} unreachable ({type(e).__name__})", ok=False)
        finally:
            client.close()
    if len(masters) != 1:
        report.add(f"{len(masters)} nodes say they are master (expected exactly 1)", ok=False)

    report.add(f"logins: nodes and Sentinels asked as {admin.user}; writes through the load balancer as the "
               "applications' `default` user")
    answers = ask_sentinels([ip for _, ip in nodes], admin, timeout=2)
    agreed = majority(answers, len(nodes))
    for (name, _), answer in zip(nodes, answers, strict=True):
        report.add(f"sentinel {name}: master {answer or '(no answer)'}", ok=answer is not None)
    report.add(f"Sentinel majority: {agreed or 'NONE'}", ok=agreed is not None)
    if agreed and masters and agreed != f"{masters[0]}:{REDIS_PORT}":
        report.add(f"Sentinels name {agreed} but {masters[0]} says it is master", ok=False)

    pointed = {server.name: haproxy_master(server.ip) for server in target.plan.group("haproxy")}
    if not any(pointed.values()) and not require_haproxy:
        # the redis layer comes before the haproxy layer (§G order): on a first install HAProxy is not there
        # yet, which must not fail the redis layer; once any HAProxy answers, all of them must be right
        report.add("no HAProxy stats page answers: HAProxy layer not deployed yet, load balancer not checked")
        return report
    for name, addr in pointed.items():
        report.add(f"{name} be_redis_master -> {addr or '(stats unreachable)'}", ok=addr is not None and addr == agreed)
    for server in target.plan.group("haproxy"):  # the follower says why it does not follow (issue 10 §4)
        try:
            answer = ssh.run(server.ip, FOLLOWER_PROBE, timeout=30)
            if answer.returncode == 255:  # ssh itself failed: say so, not "never followed"
                report.add(f"{server.name} follower: state unknown (ssh failed)", ok=False)
            else:
                report.add(*follower_line(server.name, answer.stdout))
        except (OSError, subprocess.SubprocessError) as e:
            report.add(f"{server.name} follower: state unknown ({type(e).__name__})", ok=False)

    lb = no_retry_client(target.lb, REDIS_PORT, users["app"], timeout=2)
    try:
        key = f"keybuzz:check:diag:{time.time_ns()}"
        lb.set(key, "1", ex=60)
        lb_run_id = lb.info("server")["run_id"]
        report.add(f"write through {target.lb}:{REDIS_PORT} OK")
        whoami, refused = app_privileges(lb)
        report.add(f"applications' login through {target.lb}:{REDIS_PORT}: user {whoami}, CONFIG "
                   + ("refused (no admin command)" if refused else "ALLOWED: the ACL users are not applied"),
                   ok=refused)
        if agreed:
            master_client = no_retry_client(agreed.split(":")[0], REDIS_PORT, admin, timeout=2)
            same = master_client.info("server")["run_id"] == lb_run_id and master_client.get(key) == "1"
            master_client.close()
            report.add("the load balancer reaches the Sentinels' master", ok=same)
    except (redis.RedisError, OSError) as e:
        report.add(f"write through {target.lb}:{REDIS_PORT} failed ({type(e).__name__})", ok=False)
    finally:
        lb.close()
    return report


def failover(target: Target) -> Report:
    """`SENTINEL FAILOVER keybuzz-master`, while writing through the load balancer every 20 ms; reports the
    write gap, the new master and whether acknowledged (WAIT 1) writes all survived."""
    report = Report("redis failover (controlled)")
    users = _logins(target)
    admin = users["admin"]
    sentinel_ips = [ip for _, ip in _nodes(target)]
    before = majority(ask_sentinels(sentinel_ips, admin), len(sentinel_ips))
    if not before:
        report.add("no Sentinel majority before the failover: not started", ok=False)
        return report
    probe = WriteProbe(target.lb, REDIS_PORT, users["app"], prefix="keybuzz:check:failover:", ttl=300,
                       max_seconds=FAILOVER_BOUND_S + 10).start()
    time.sleep(1)
    t0 = time.monotonic()
    # Writes pause on the old master first (as Redis' own FAILOVER does): SENTINEL FAILOVER promotes a
    # replica while the old master still accepts writes until it is reconfigured, and writes accepted there
    # in that window (even acknowledged by WAIT 1 from the other replica) are lost. Paused clients get an
    # error instead (HAProxy cuts their sessions at the switch), never a silent loss.
    old_master = no_retry_client(before.split(":")[0], REDIS_PORT, admin, timeout=2)
    try:
        old_master.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
        report.add(f"writes paused on {before} (at most {PAUSE_MS} ms)")
    except (redis.RedisError, OSError) as e:
        report.add(f"could not pause writes on {before} ({type(e).__name__}): not started", ok=False)
        probe.stop()
        return report
    finally:
        old_master.close()
    for ip in sentinel_ips:  # the first Sentinel that answers starts it
        client = no_retry_client(ip, SENTINEL_PORT, admin, timeout=2)
        try:
            client.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
            report.add(f"SENTINEL FAILOVER sent to {ip}")
            break
        except (redis.RedisError, OSError):
            continue
        finally:
            client.close()
    else:
        probe.stop()
        report.add("no Sentinel accepted SENTINEL FAILOVER", ok=False)
        return report
    after = None
    followed = False
    deadline = t0 + FAILOVER_BOUND_S
    while time.monotonic() < deadline:
        after = majority(ask_sentinels(sentinel_ips, admin), len(sentinel_ips))
        if after and after != before and all(haproxy_master(s.ip) == after for s in target.plan.group("haproxy")):
            followed = True
            break
        time.sleep(0.2)
    old_master = no_retry_client(before.split(":")[0], REDIS_PORT, admin, timeout=2)
    try:
        old_master.execute_command("CLIENT", "UNPAUSE")  # it is a replica now: late writes get READONLY
    except (redis.RedisError, OSError):
        pass
    finally:
        old_master.close()
    time.sleep(2)  # a few writes after the switch
    probe.stop()
    if not after or after == before:
        report.add(f"master still {before} after {FAILOVER_BOUND_S} s", ok=False)
        return report
    report.add(f"master {before} -> {after}; " + ("every HAProxy follows" if followed else
               f"an HAProxy still points elsewhere after {FAILOVER_BOUND_S} s"), ok=followed)
    gap = probe.gap_after(t0)
    failed = sum(1 for w in probe.writes if not w.ok and w.t > t0)
    report.add(f"write gap through {target.lb}: {gap:.2f} s ({failed} failed attempts)" if gap is not None
               else "no write succeeded after the failover", ok=gap is not None)
    report.metrics.update(gap_s=gap, old=before, new=after)
    master = no_retry_client(after.split(":")[0], REDIS_PORT, admin, timeout=2)
    try:
        lost_repl, repl, lost_plain, plain = probe.lost(master)
    finally:
        master.close()
    # a loss of 0 only means something when writes were acknowledged at all
    report.add(f"acknowledged with WAIT 1: {repl}, lost {lost_repl}; plain: {plain}, lost {lost_plain}",
               ok=lost_repl == 0 and repl > 0)
    report.metrics.update(lost_replicated=lost_repl, replicated=repl, lost_plain=lost_plain)
    return report


def perf(target: Target) -> Report:
    """Bounded benchmark through the load balancer: single-client SET/GET round trips and pipelined SETs
    (at most PERF_SECONDS s and PERF_MAX_OPS operations each)."""
    report = Report("redis perf (through the load balancer)")
    client = no_retry_client(target.lb, REDIS_PORT, _logins(target)["app"], timeout=2)
    try:
        latencies = []
        start = time.monotonic()
        while len(latencies) < PERF_MAX_OPS // 4 and time.monotonic() - start < PERF_SECONDS:
            t = time.perf_counter()
            client.set(f"keybuzz:check:perf:{len(latencies) % 100}", "x" * 64, ex=60)
            client.get(f"keybuzz:check:perf:{len(latencies) % 100}")
            latencies.append(time.perf_counter() - t)
        latencies.sort()
        p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
        report.add(f"SET+GET round trips: {len(latencies)} in {time.monotonic() - start:.1f} s, "
                   f"p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms")
        start, done = time.monotonic(), 0
        while done < PERF_MAX_OPS and time.monotonic() - start < PERF_SECONDS:
            pipe = client.pipeline(transaction=False)
            for i in range(100):
                pipe.set(f"keybuzz:check:perf:p{i}", "x" * 64, ex=60)
            pipe.execute()
            done += 100
        rate = done / (time.monotonic() - start)
        report.add(f"pipelined SET: {done} in {time.monotonic() - start:.1f} s = {rate:,.0f} ops/s")
        report.metrics.update(p50_ms=p50 * 1000, p99_ms=p99 * 1000, pipelined_ops_s=rate)
    except (redis.RedisError, OSError) as e:
        report.add(f"benchmark failed: {type(e).__name__}", ok=False)
    finally:
        client.close()
    return report
