"""Benchmark (not a test): the write gap clients see when the Redis master is killed, side by side:

  * through HAProxy with the project's follow-up (redis-master-watch on +switch-master + 15 s timer),
  * through HAProxy with the design's literal minimum (15 s timer only, Sentinel defaults: down-after 30 s),
  * a client that asks Sentinel directly (redis-py Sentinel: the floor any LB-based scheme can reach).

Each configuration runs on its own container testbed (keybuzz/redis/testbed.py: 3 Redis + 3 Sentinel +
HAProxy from the project's rendered files). On each kill three probes write every 20 ms at the same time:
through HAProxy with `WAIT 1` (acknowledged = a replica has it), through HAProxy plain, and the direct
Sentinel client. Gap = last acknowledged write before the kill -> first one after it.

    .venv/bin/python bench/redis_failover.py --kills 5 --down-after 3000 [--out /work/notes/redis-results.md]

Bounded: every wait has a timeout; about 10 minutes for the default run on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from redis.backoff import NoBackoff  # noqa: E402
from redis.retry import Retry  # noqa: E402
from redis.sentinel import Sentinel  # noqa: E402

from keybuzz.redis.client import WriteProbe  # noqa: E402
from keybuzz.redis.settings import MASTER_NAME, Login, RedisSettings  # noqa: E402
from keybuzz.redis.testbed import Testbed  # noqa: E402


class DirectSentinelProbe(WriteProbe):
    """WriteProbe whose client asks the Sentinels for the master on every (re)connection (Sentinel queries as
    `sentinel_login`: redis-py's Sentinel client runs SENTINEL MASTERS, more than the haproxy login may)."""

    def __init__(self, sentinels: list[str], login: Login, sentinel_login: Login, **kw):
        super().__init__("sentinel", 0, login, **kw)
        self.sentinel = Sentinel([(ip, 26379) for ip in sentinels], socket_timeout=0.5,
                                 sentinel_kwargs={"username": sentinel_login.user,
                                                  "password": sentinel_login.password, "socket_timeout": 0.5})

    def _connect(self):
        # the master the Sentinels name, asked again on every (re)connection
        return self.sentinel.master_for(MASTER_NAME, username=self.login.user, password=self.login.password,
                                        socket_timeout=0.5,
                                        socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0),
                                        decode_responses=True)


def _heal(tb: Testbed, timeout: float = 90) -> str:
    """Every Redis up again, both replicas attached to the master, HAProxy on it; returns the master."""
    for i in range(3):
        w = tb.docker(f"redis-{i + 1}")
        w.reload()
        if w.status != "running":
            w.start()
    master = tb.wait_for(tb.sentinel_master, timeout, 0.2, "Sentinel majority")

    def healed():
        info = tb.redis_client(master.split(":")[0]).info("replication")
        return info.get("connected_slaves") == 2 and tb.cfg_master() == master
    tb.wait_for(healed, timeout, 0.3, "replicas attached and HAProxy on the master")
    return master


def run_config(label: str, kills: int, settings: RedisSettings, watch: bool, timer_s: float,
               verbose: bool = False) -> dict:
    """`kills` master kills on a fresh testbed; per probe: gaps, lost writes."""
    results = {"label": label, "lb": [], "direct": [], "lost_wait": 0, "acked_wait": 0, "lost_plain": 0,
               "acked_plain": 0, "direct_lost_wait": 0}
    with Testbed(settings=settings, watch=watch, timer_s=timer_s) as tb:
        tb.wait_ready()
        tb.start_followers()
        time.sleep(2)
        bound = settings.down_after_ms / 1000 + timer_s + 40
        for k in range(kills):
            _heal(tb)
            app = tb.logins["app"]
            lb_wait = WriteProbe(tb.haproxy_ip, 6379, app, prefix=f"bench:{k}:w:", max_seconds=bound + 10)
            lb_plain = WriteProbe(tb.haproxy_ip, 6379, app, wait=False, prefix=f"bench:{k}:p:",
                                  max_seconds=bound + 10)
            direct = DirectSentinelProbe(tb.sentinel_ips, app, tb.admin, prefix=f"bench:{k}:d:",
                                         max_seconds=bound + 10)
            probes = (lb_wait, lb_plain, direct)
            for p in probes:
                p.start()
            time.sleep(1.5)
            old = tb.master_index()
            old_addr = f"{tb.redis_ips[old]}:6379"
            t_kill = time.monotonic()
            tb.kill_redis(old)
            t_dead = time.monotonic()  # kill_redis returns once Docker reports the container dead
            tb.wait_for(lambda a=lb_wait, b=direct, t=t_dead, o=old_addr: a.resumed_after(t) and b.resumed_after(t)
                        and tb.sentinel_master() not in (None, o), bound, 0.2, "writes resuming")
            t_resumed = time.monotonic()
            time.sleep(1)
            for p in probes:
                p.stop()
            if verbose:
                ok_before = [w.t - t_kill for w in lb_wait.writes if w.ok and w.t <= t_kill]
                ok_after = [w.t - t_kill for w in lb_wait.writes if w.ok and w.t > t_dead]
                print(f"      dead +{t_dead - t_kill:.2f} s, wait ended +{t_resumed - t_kill:.2f} s, "
                      f"{len(ok_before)} ok before (last {ok_before[-1] if ok_before else None}), "
                      f"first ok after +{ok_after[0] if ok_after else None}")
            master = tb.redis_client(tb.sentinel_master().split(":")[0])
            gap_lb, gap_direct = lb_wait.gap(t_kill, t_dead), direct.gap(t_kill, t_dead)
            results["lb"].append(gap_lb)
            results["direct"].append(gap_direct)
            lost_w, acked_w, _, _ = lb_wait.lost(master)
            _, _, lost_p, acked_p = lb_plain.lost(master)
            results["lost_wait"] += lost_w
            results["acked_wait"] += acked_w
            results["lost_plain"] += lost_p
            results["acked_plain"] += acked_p
            results["direct_lost_wait"] += direct.lost(master)[0]
            if verbose:
                for name, p in (("lb", lb_wait), ("direct", direct)):
                    errors: dict[str, list[float]] = {}
                    for w in p.writes:
                        if not w.ok and w.t > t_kill:
                            errors.setdefault(w.error.split(" (")[0][:60], []).append(w.t - t_kill)
                    for e, ts in errors.items():
                        print(f"      {name}: {len(ts)} x {e} (+{ts[0]:.2f}..+{ts[-1]:.2f} s)")
                print(tb.logs()[-1200:])
            print(f"  [{label}] kill {k + 1}/{kills}: through HAProxy {gap_lb:.2f} s, direct Sentinel client "
                  f"{gap_direct:.2f} s; lost WAIT-1 {lost_w}/{acked_w}, plain {lost_p}/{acked_p}", flush=True)
    return results


def _stats(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} / {max(values):.2f}"


def table(rows: list[dict], down_after_ms: int) -> str:
    lines = [
        "| configuration | gap through HAProxy p50 / max (s) | direct Sentinel client p50 / max (s) "
        "| HAProxy minus direct, p50 (s) | acked with WAIT 1: lost | plain writes: lost |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = statistics.median([a - b for a, b in zip(r["lb"], r["direct"], strict=True)])
        lines.append(f"| {r['label']} | {_stats(r['lb'])} | {_stats(r['direct'])} | {diff:+.2f} "
                     f"| {r['lost_wait']} of {r['acked_wait']} | {r['lost_plain']} of {r['acked_plain']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--down-after", type=int, default=3000, help="Sentinel down-after-milliseconds (ms)")
    parser.add_argument("--skip-literal", action="store_true", help="skip the slow design-literal configuration")
    parser.add_argument("--out", help="append the results table (markdown) to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the probes' errors and the logs")
    args = parser.parse_args(argv)
    production = RedisSettings()
    configs = [(f"project: +switch-master watcher + 15 s timer, down-after {args.down_after} ms",
                RedisSettings(down_after_ms=args.down_after, failover_timeout_ms=10000), True, 15)]
    if args.down_after != production.down_after_ms:
        configs.append((f"project, production defaults: watcher + timer, down-after {production.down_after_ms} ms",
                        production, True, 15))
    if not args.skip_literal:
        configs.append(("design literal minimum: 15 s timer only, Sentinel defaults (down-after 30 s)",
                        RedisSettings(down_after_ms=30000, failover_timeout_ms=180000), False, 15))
    started = time.monotonic()
    rows = []
    for label, settings, watch, timer_s in configs:
        print(f"== {label}", flush=True)
        rows.append(run_config(label, args.kills, settings, watch, timer_s, args.verbose))
    text = table(rows, args.down_after)
    summary = (f"\nRun: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.kills} kills per configuration "
               f"(docker kill of the master's container), writes every 20 ms, {time.monotonic() - started:.0f} s.\n")
    print(text + summary)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(text + "\n" + summary + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
