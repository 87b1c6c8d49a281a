"""Benchmark (not a test), in the lab: how long after the Sentinels switch does a write through the load balancer
succeed again (issue 10 §1: "majority switched -> first write through the LB", target <= 0.5 s p50, <= 1 s max).

For each kill: the Redis master's whole host is SIGKILLed (`docker kill` of its container: a power cut) while
  * a writer (plain redis-py, no project code) SETs through the LB stand-in every 20 ms on a fresh socket after
    any error, each command with a 0.5 s socket timeout;
  * a watcher asks the three Sentinels `SENTINEL get-master-addr-by-name` every 20 ms (plain redis-py);
switched = the first moment a majority (2 of 3) names another master; follow = first successful write after it
minus switched (negative: the write path was back before the majority agreed, e.g. via a Sentinel's own view).
Then the host is started again and the next kill waits until the old master is a replica with its link up.
Needs a lab with base_os, redis and haproxy deployed; bounded in count and time.

    .venv/bin/python bench/redis_lab_follow.py --kills 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from keybuzz import credentials  # noqa: E402
from keybuzz.lab import lab  # noqa: E402

NODES = {h.name: h.ip for h in lab.TOPOLOGY if h.role == "redis"}
KILL_BOUND_S = 90  # per kill: the failover and the first write after it must come within this


def _logins() -> tuple[tuple[str, str], tuple[str, str]]:
    """(app user, password), (admin user, password) from the lab's credentials file."""
    c = credentials.load("redis")
    app = ("default", c["REDIS_PASSWORD"].unmask())
    admin = (c["REDIS_ADMIN_USER"].unmask(), c["REDIS_ADMIN_PASSWORD"].unmask())
    return app, admin


def _client(ip: str, port: int, login: tuple[str, str], timeout: float) -> redis.Redis:
    return redis.Redis(host=ip, port=port, username=login[0], password=login[1], socket_timeout=timeout,
                       socket_connect_timeout=timeout, retry=None, decode_responses=True)


def majority_master(sentinels: list[redis.Redis]) -> str | None:
    answers = []
    for s in sentinels:
        try:
            reply = s.execute_command("SENTINEL", "get-master-addr-by-name", "keybuzz-master")
            answers.append(reply[0] if reply else None)
        except (redis.RedisError, OSError):
            answers.append(None)
    for a in set(answers) - {None}:
        if answers.count(a) >= 2:
            return a
    return None


def one_kill(app, admin) -> dict:
    sentinels = [_client(ip, 26379, admin, 0.3) for ip in NODES.values()]
    old = majority_master(sentinels)
    victim = next(n for n, ip in NODES.items() if ip == old)
    writes: list[tuple[float, bool]] = []
    stop = threading.Event()

    def write() -> None:
        client = _client(lab.LB_IP, 6379, app, 0.5)
        n = 0
        while not stop.is_set():
            n += 1
            try:
                client.set(f"keybuzz:bench:follow:{n}", "1", ex=120)
                writes.append((time.monotonic(), True))
            except (redis.RedisError, OSError):
                writes.append((time.monotonic(), False))
                client.close()
                client = _client(lab.LB_IP, 6379, app, 0.5)
            stop.wait(0.02)
        client.close()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        time.sleep(1)
        killed = time.monotonic()
        lab.kill_host(victim)
        switched = None
        while time.monotonic() - killed < KILL_BOUND_S:
            if switched is None and majority_master(sentinels) not in (None, old):
                switched = time.monotonic()
            if switched is not None and any(ok and t > switched for t, ok in writes):
                break
            time.sleep(0.02)
    finally:
        stop.set()
        writer.join(10)
        lab.start_host(victim)
    if switched is None:
        raise SystemExit(f"no failover within {KILL_BOUND_S} s of killing {victim}")
    first_after_switch = next(t for t, ok in writes if ok and t > switched)
    # `docker kill` returns after the kill: the outage starts at the first failed write after the call began
    first_failed = next((t for t, ok in writes if not ok and t > killed), first_after_switch)
    last_before = max((t for t, ok in writes if ok and t < first_failed), default=killed)
    # back to normal before the next kill: the old master a linked replica (or still the master: Sentinel decides)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            info = _client(old, 6379, admin, 0.5).info("replication")
            if info.get("master_link_status") == "up" and majority_master(sentinels) not in (None, old):
                break
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.5)
    else:
        raise SystemExit(f"{victim} did not come back as a linked replica within 240 s")
    for s in sentinels:
        s.close()
    return {"victim": victim, "switch_s": switched - killed, "follow_s": first_after_switch - switched,
            "gap_s": first_after_switch - last_before,
            "failed_writes": sum(1 for t, ok in writes if not ok and t > killed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    args = parser.parse_args()
    if not 1 <= args.kills <= 30:
        raise SystemExit("--kills: 1..30")
    import os

    os.environ.update(lab.env())
    app, admin = _logins()
    rows = []
    for i in range(args.kills):
        row = one_kill(app, admin)
        rows.append(row)
        print(f"kill {i + 1}/{args.kills} of {row['victim']}: switch {row['switch_s']:.2f} s after the kill, "
              f"first write {row['follow_s']:+.2f} s after the switch, gap {row['gap_s']:.2f} s, "
              f"{row['failed_writes']} failed writes", flush=True)
    follow = [r["follow_s"] for r in rows]
    gap = [r["gap_s"] for r in rows]
    print(f"\n{len(rows)} master host kills (lab, down-after 5 s, LB stand-in -> haproxy-01/02)\n")
    print("| measure | p50 | max |\n|---|---|---|")
    for what, values, sign in (("majority switched -> first write through the LB", follow, "+"),
                               ("write gap (last write before the kill -> first after)", gap, "")):
        print(f"| {what} | {statistics.median(values):{sign}.2f} s | {max(values):{sign}.2f} s |")


if __name__ == "__main__":
    main()
