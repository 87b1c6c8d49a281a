"""Benchmark of the DB layer on the container testbed (keybuzz/db/testbed.py), bounded in count and time.

1. Write gap through HAProxy 5432 when the primary is killed (p50/max over --kills kills), with the project's
   Patroni timings AND with Patroni's defaults (ttl 30, loop_wait 10, retry_timeout 10), each on its own
   fresh testbed in the same run; --host also kills the node's etcd member and address (the host's death).
2. Planned switchover gap (POST /switchover), --switchovers times.
3. Committed transactions lost (acknowledged to the client, missing afterwards): target 0.
4. pgbench TPS/latency through HAProxy vs directly on the primary, synchronous vs asynchronous commit
   (synchronous_commit=local per session: the price of zero loss), --pgbench-seconds each.

Usage: .venv/bin/python bench/db_failover.py --kills 5 [--host] [--switchovers 3] [--pgbench-seconds 15]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keybuzz.db import client  # noqa: E402
from keybuzz.db.client import ProbeWriter  # noqa: E402
from keybuzz.db.settings import DEFAULT  # noqa: E402
from keybuzz.db.testbed import APP_DB, APP_USER, NAMES, Testbed  # noqa: E402
from keybuzz.waiting import wait_for  # noqa: E402

MAX_SECONDS = 1800  # the whole run


def kill_gaps(tb: Testbed, kills: int, host: bool, deadline: float) -> tuple[list[float], int, int]:
    gaps, lost, acked = [], 0, 0
    for k in range(kills):
        if time.monotonic() > deadline:
            print("  time bound reached", flush=True)
            break
        tb.wait_healthy(240)
        old = tb.primary_index()
        w = ProbeWriter(tb.lb(5432), interval=0.05, seconds=150, max_rows=6000).start()
        try:
            wait_for(lambda w=w: w.acked_count() >= 20, 20, 0.2, "commits before the kill")
            t_kill = time.monotonic()
            tb.kill_node(old) if host else tb.kill(old, "patroni")
            wait_for(lambda w=w, t=t_kill: w.acked_since(t) >= 20, 120, 0.2, "commits after the kill")
        finally:
            w.stop()
        gap = w.gap_after(t_kill)
        n_lost = w.lost(tb.lb(5432))
        gaps.append(gap)
        lost += n_lost
        acked += w.acked_count()
        print(f"  kill {k + 1}: {NAMES[old]} -> {NAMES[tb.primary_index()]}  gap {gap:.2f} s  "
              f"acked {w.acked_count()}  lost {n_lost}", flush=True)
        tb.revive_node(old)
    return gaps, lost, acked


def switchover_gaps(tb: Testbed, count: int) -> tuple[list[float], int]:
    gaps, lost = [], 0
    for k in range(count):
        tb.wait_healthy(240)
        old = tb.primary_index()
        w = ProbeWriter(tb.lb(5432), interval=0.02, seconds=60, max_rows=3000).start()
        try:
            wait_for(lambda w=w: w.acked_count() >= 20, 20, 0.2, "commits before the switchover")
            t0 = time.monotonic()
            status, text = client.switchover(tb.node_ip(old), NAMES[old], None, tb.rest_auth)
            if status != 200:
                raise RuntimeError(f"switchover: HTTP {status} {text[:200]}")
            wait_for(lambda w=w, t=t0, o=old: w.acked_since(t) >= 20 and tb.primary_index() != o, 60, 0.2,
                     "commits after the switchover")
        finally:
            w.stop()
        gaps.append(w.gap_after(t0))
        n_lost = w.lost(tb.lb(5432))
        lost += n_lost
        print(f"  switchover {k + 1}: gap {gaps[-1]:.2f} s  lost {n_lost}", flush=True)
    return gaps, lost


def pgbench(tb: Testbed, seconds: int) -> list[str]:
    """pgbench inside the primary's Patroni container (the client is pgbench 15), against HAProxy or the
    primary's own address; the password reaches it through a 0600 pgpass file piped on stdin."""
    tb.wait_healthy(240)
    p = tb.primary_index()
    cname = tb.container(p, "patroni").name
    pgpass = "".join(f"{h}:*:{APP_DB}:{APP_USER}:{tb.app_pass}\n" for h in (tb.haproxy_ip, tb.node_ip(p)))
    subprocess.run(["docker", "exec", "-i", cname, "sh", "-c", "umask 077; cat > /tmp/bench.pgpass"],
                   input=pgpass, text=True, check=True, timeout=30)

    def run(host: str, extra_env: list[str], *args: str) -> str:
        cmd = ["docker", "exec", "-e", "PGPASSFILE=/tmp/bench.pgpass", *extra_env, cname,
               "pgbench", "-h", host, "-p", "5432", "-U", APP_USER, *args, APP_DB]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
        if r.returncode:
            raise RuntimeError(f"pgbench failed: {r.stderr[-500:]}")
        return r.stdout

    run(tb.node_ip(p), [], "-i", "-q", "-s", "10")
    lines = []
    for mode, env in (("sync", []), ("async", ["-e", "PGOPTIONS=-c synchronous_commit=local"])):
        for where, host in (("HAProxy", tb.haproxy_ip), ("direct", tb.node_ip(p))):
            out = run(host, env, "-c", "8", "-j", "2", "-T", str(seconds), "-n")
            tps = re.search(r"tps = ([\d.]+)", out)
            lat = re.search(r"latency average = ([\d.]+) ms", out)
            lines.append(f"  pgbench {mode:5s} {where:7s}: {float(tps.group(1)):8.1f} tps, "
                         f"latency {float(lat.group(1)):.2f} ms (8 clients, {seconds} s)")
            print(lines[-1], flush=True)
    subprocess.run(["docker", "exec", cname, "rm", "-f", "/tmp/bench.pgpass"], timeout=30)
    return lines


def summary(name: str, gaps: list[float]) -> str:
    if not gaps:
        return f"{name}: no sample"
    return (f"{name}: p50 {statistics.median(gaps):.2f} s, max {max(gaps):.2f} s over {len(gaps)} "
            f"({', '.join(f'{g:.1f}' for g in gaps)})")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--host", action="store_true", help="kill the whole node (etcd member and address too)")
    ap.add_argument("--switchovers", type=int, default=3)
    ap.add_argument("--pgbench-seconds", type=int, default=15)
    ap.add_argument("--skip-defaults", action="store_true")
    args = ap.parse_args()
    deadline = time.monotonic() + MAX_SECONDS
    report = []
    what = "host death" if args.host else "Patroni/PostgreSQL container killed"
    print(f"chosen timings: ttl {DEFAULT.ttl}, loop_wait {DEFAULT.loop_wait}, retry_timeout {DEFAULT.retry_timeout}",
          flush=True)
    with Testbed() as tb:
        gaps, lost, acked = kill_gaps(tb, args.kills, args.host, deadline)
        report.append(summary(f"gap on {what}, chosen timings", gaps) + f"; lost {lost} of {acked} acked")
        sw, sw_lost = switchover_gaps(tb, args.switchovers)
        report.append(summary("planned switchover gap", sw) + f"; lost {sw_lost}")
        report += pgbench(tb, args.pgbench_seconds)
    if not args.skip_defaults:
        print("Patroni defaults: ttl 30, loop_wait 10, retry_timeout 10", flush=True)
        with Testbed(DEFAULT.with_patroni_defaults()) as tb:
            gaps, lost, acked = kill_gaps(tb, args.kills, args.host, deadline)
            report.append(summary(f"gap on {what}, Patroni defaults", gaps) + f"; lost {lost} of {acked} acked")
    print("\n".join(["", "== results", *report]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
