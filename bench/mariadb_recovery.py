"""Benchmark: recovery of the MariaDB Galera layer from a full outage (issue 12 target: under 2 minutes).

On a throw-away testbed (keybuzz/mariadb/testbed.py: maria-01..03 from the project's rendered files), for each
outage: a writer commits round-robin on the three nodes, the three servers are SIGKILLed at once (every
grastate.dat stays at seqno -1), then the layer's converge (through the deploy's node script with --script,
else on the containers) recovers the cluster from the most advanced node. Measured: the converge time, and the
acknowledged writes missing afterwards on any node (must be 0).

    .venv/bin/python bench/mariadb_recovery.py --outages 3 [--script]

Bounded: --outages (at most 10) and MAX_SECONDS for the whole run. Traffic goes only to the testbed's own
containers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keybuzz.mariadb.client import Writer, connect, count, ensure_table  # noqa: E402
from keybuzz.mariadb.testbed import NAMES, Testbed  # noqa: E402
from keybuzz.waiting import wait_for  # noqa: E402

TARGET_S = 120.0  # issue 12
MAX_SECONDS = 1800


def one_outage(tb: Testbed, run: int, script: bool) -> tuple[float, int, int]:
    """(converge seconds, acknowledged writes, acknowledged writes missing on some node)."""
    a = tb.accounts
    tag = f"bench-outage-{run}-{time.monotonic_ns()}"
    writer = Writer([tb.node_ip(i) for i in range(len(NAMES))], a.app_user, a.app_password, a.app_user, tag,
                    seconds=120).start()
    try:
        wait_for(lambda: len(writer.acked) >= 50, 60, 0.2, "50 writes acknowledged before the outage")
        tb.kill_all()
    finally:
        writer.stop()
    started = time.monotonic()
    done = tb.converge(with_node_script=script)
    tb.wait_cluster(3)
    seconds = time.monotonic() - started
    missing = 0
    for i in range(len(NAMES)):
        with connect(tb.node_ip(i), a.app_user, a.app_password, database=a.app_user) as conn:
            missing = max(missing, len(writer.acked - count(conn, tag)))
    print(f"  outage {run}: recovered in {seconds:.1f} s ({', '.join(done)}); acked {len(writer.acked)}, "
          f"missing {missing}", flush=True)
    return seconds, len(writer.acked), missing


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--outages", type=int, default=3)
    ap.add_argument("--script", action="store_true", help="converge through the deploy's node script")
    args = ap.parse_args()
    deadline = time.monotonic() + MAX_SECONDS
    times, lost = [], 0
    with Testbed() as tb:
        print(f"first install: {tb.converge()}", flush=True)
        tb.wait_cluster(3)
        a = tb.accounts
        with connect(tb.node_ip(0), a.app_user, a.app_password, database=a.app_user) as conn:
            ensure_table(conn)
        for run in range(1, min(args.outages, 10) + 1):
            if time.monotonic() > deadline:
                print("  time bound reached", flush=True)
                break
            seconds, _acked, missing = one_outage(tb, run, args.script)
            times.append(seconds)
            lost += missing
    if not times:
        return 1
    worst = max(times)
    print(f"\nfull outage recovery ({'node script' if args.script else 'containers'}), {len(times)} outages: "
          f"p50 {statistics.median(times):.1f} s, max {worst:.1f} s; missing acknowledged writes {lost}")
    print(f"target < {TARGET_S:.0f} s: {'met' if worst < TARGET_S else 'MISSED'}")
    return 0 if worst < TARGET_S and lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
