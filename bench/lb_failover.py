"""Benchmark (not a test), in the lab: how long NEW connections through the load balancer fail when a host dies.

Two kinds of victim, each SIGKILLed as a whole host (`docker kill` of its container: no RST, no FIN, like a
power cut) while probes open a new connection every 50 ms through the LB stand-in on 6379 (Redis: PING) and
5672 (AMQP: protocol header), and count the ones that got no answer:

  --victim haproxy   haproxy-02: the load balancer must take it out (its health checks decide the window);
                     --lb-checks picks the stand-in's profile (lab/lab.yaml health_checks: lab | hetzner)
  --victim queue     queue-03, a RabbitMQ node: HAProxy must stop sending new connections to it (be_rabbitmq:
                     out at the first connect that fails, observe layer4; timeout connect 300 ms; checks
                     every 500 ms)

After each kill the host is started again and the next kill waits until every probe has answered for 5 s.
Needs a lab with base_os, redis, rabbitmq and haproxy deployed (`invoke lab.up`); bounded in count and time.

    .venv/bin/python bench/lb_failover.py --victim haproxy --lb-checks hetzner --kills 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from keybuzz.haproxy.client import ConnectProbe, answers, wait_quiet  # noqa: E402
from keybuzz.haproxy.settings import READY_COMMAND  # noqa: E402
from keybuzz.lab import lab  # noqa: E402

PORTS = {"haproxy": {6379: "redis", 5672: "amqp"}, "queue": {5672: "amqp"}}
VICTIM = {"haproxy": "haproxy-02", "queue": "queue-03"}
WATCH_S = 90  # per kill: the probes' bound (Hetzner's default checks would need about 60 s)


def settled(ports: dict[int, str], seconds: float = 5.0, bound: float = 240.0) -> None:
    """Wait until a new connection on every port has answered, every 0.1 s, for `seconds` in a row."""
    deadline, since = time.monotonic() + bound, time.monotonic()
    while time.monotonic() - since < seconds:
        if time.monotonic() > deadline:
            raise SystemExit(f"the LB did not serve every port for {seconds} s within {bound} s")
        if not all(answers(lab.LB_IP, port, protocol) for port, protocol in ports.items()):
            since = time.monotonic()
        time.sleep(0.1)


def one_kill(victim: str, ports: dict[int, str]) -> dict[int, tuple[float, int]]:
    """{port: (window s, failed attempts)} for one kill of `victim`."""
    settled(ports)
    probes = {port: ConnectProbe(lab.LB_IP, port, protocol).start(WATCH_S) for port, protocol in ports.items()}
    try:
        time.sleep(1)
        killed_at = time.monotonic()
        lab.kill_host(victim)
        wait_quiet(list(probes.values()), killed_at, quiet_s=5, bound_s=WATCH_S)  # done once none failed for 5 s
    finally:
        for probe in probes.values():
            probe.stop()
        lab.start_host(victim)
        if victim.startswith("haproxy"):
            lab.exec(victim, READY_COMMAND, timeout=90)
    return {port: (p.window(killed_at), len(p.failures_since(killed_at))) for port, p in probes.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--victim", choices=sorted(VICTIM), default="haproxy")
    parser.add_argument("--lb-checks", choices=sorted(lab.LB_CHECKS), default="lab")
    parser.add_argument("--kills", type=int, default=10)
    args = parser.parse_args()
    if not 1 <= args.kills <= 30:
        raise SystemExit("--kills: 1 to 30")
    lab.configure_lb(args.lb_checks)
    ports, victim = PORTS[args.victim], VICTIM[args.victim]
    rows: dict[int, list[tuple[float, int]]] = {port: [] for port in ports}
    try:
        for n in range(1, args.kills + 1):
            result = one_kill(victim, ports)
            for port, value in result.items():
                rows[port].append(value)
            print(f"kill {n}/{args.kills} of {victim}: " + ", ".join(
                f"{port}: {w:.2f} s ({f} failed)" for port, (w, f) in result.items()), flush=True)
    finally:
        lab.configure_lb("lab")
    checks = lab.LB_CHECKS[args.lb_checks]
    print(f"\n{victim} host SIGKILLed x{args.kills}, LB checks {args.lb_checks} {checks}\n")
    print("| port | window p50 | window max | failed new connections (p50 / max) |\n|---|---|---|---|")
    for port, values in rows.items():
        windows, failed = [w for w, _ in values], [f for _, f in values]
        print(f"| {port} ({ports[port]}) | {statistics.median(windows):.2f} s | {max(windows):.2f} s | "
              f"{statistics.median(failed):.0f} / {max(failed)} |")


if __name__ == "__main__":
    main()
