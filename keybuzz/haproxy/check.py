"""Checks of the haproxy layer (`invoke check --name haproxy [--failover] [--perf]`).

    diag      the Redis path must go through HAProxy: every HAProxy answers and points at the Sentinel
              majority's master (no "not deployed yet" leniency)
    failover  the HAProxy tier loses a host: HAProxy is stopped on the last host of the group while probes open
              new connections through the load balancer on 6379 (Redis) and 5672 (AMQP) every 50 ms; the report
              gives, per port, how long new connections failed (the load balancer's own detection time) and how
              many did; then HAProxy is started again and the probes must see every port answer
    perf      the Redis path's round trips through the load balancer (keybuzz.redis.check.perf)

Example::

    print(failover(Target.from_env()))
"""

from __future__ import annotations

import time

from keybuzz import ssh
from keybuzz.checks import Report, Target
from keybuzz.haproxy.client import ConnectProbe, wait_quiet
from keybuzz.haproxy.settings import READY_COMMAND
from keybuzz.redis import check as _redis

# The ports whose new connections the failover check watches, and what answers there without credentials.
PROBED = {6379: "redis", 5672: "amqp"}
# Longest failure window the check accepts: with the Hetzner LB settings the README recommends (interval 3 s,
# timeout 1 s, retries 1) the lab's stand-in measured 8.5-11.7 s (bench/lb_failover.py, host SIGKILLed x10);
# Hetzner's defaults (15 s, 10 s, 3 retries) give about a minute and fail this check on purpose.
WINDOW_BOUND_S = 15.0
WATCH_S = 75.0  # how long the probes watch after the stop (Hetzner's defaults would need about 60 s)
SETTLED_S = 3.0  # every probe answering this long in a row: the load balancer has taken the host out


def diag(target: Target):
    """Redis diag that requires every HAProxy to answer and point at the Sentinel majority's master."""
    return _redis.diag(target, require_haproxy=True)


perf = _redis.perf


def _run(ip: str, command: str, timeout: float = 90) -> bool:
    return ssh.run(ip, command, timeout=timeout).returncode == 0


def failover(target: Target, stop: str = "systemctl stop haproxy", start: str = "systemctl start haproxy") -> Report:
    """Stop HAProxy on one host while clients open new connections through the LB; measure what they lost.

    `stop` / `start` run on the victim over SSH (the lab's bench kills the whole host instead).
    """
    report = Report("haproxy failover (one HAProxy host stopped)")
    hosts = [s for s in target.plan.group("haproxy") if s.ip]
    if len(hosts) < 2:
        report.add(f"{len(hosts)} HAProxy host(s) with an address: the tier needs two to survive one", ok=False)
        return report
    victim = hosts[-1]
    probes = {port: ConnectProbe(target.lb, port, protocol) for port, protocol in PROBED.items()}
    for probe in probes.values():
        probe.start(seconds=WATCH_S + 30)
    try:
        time.sleep(2)
        before = {port: len(p.failed) for port, p in probes.items()}
        if any(before.values()):
            report.add(f"new connections through {target.lb} already failed before the stop "
                       f"({', '.join(f'{port}: {n}' for port, n in before.items())}): fix that first", ok=False)
            return report
        stopped_at = time.monotonic()
        if not _run(victim.ip, stop):
            report.add(f"could not stop HAProxy on {victim.name} (`{stop}`)", ok=False)
            return report
        settled = wait_quiet(list(probes.values()), stopped_at, SETTLED_S, WATCH_S)
    finally:
        for probe in probes.values():
            probe.stop()
        started = _run(victim.ip, start) and _run(victim.ip, READY_COMMAND)
    for port, probe in probes.items():
        window, failed = probe.window(stopped_at), len(probe.failures_since(stopped_at))
        report.metrics[f"window_{port}_s"] = window
        report.metrics[f"failed_{port}"] = failed
        report.add(f"{PROBED[port]} {target.lb}:{port}: new connections failed for {window:.1f} s after "
                   f"{victim.name} stopped ({failed} of {probe.attempts} attempts)",
                   ok=settled and window <= WINDOW_BOUND_S)
    if not settled:
        report.add(f"new connections were still failing {WATCH_S:.0f} s after the stop: the load balancer does "
                   f"not take a dead HAProxy out (its health checks: README, HAProxy tier)", ok=False)
    elif max(report.metrics[f"window_{port}_s"] for port in probes) > WINDOW_BOUND_S:
        report.add(f"over {WINDOW_BOUND_S:.0f} s: set the load balancer's health checks as the README recommends "
                   "(interval 3 s, timeout 1 s, retries 1)", ok=False)
    report.add(f"HAProxy on {victim.name} started again and serving" if started
               else f"HAProxy on {victim.name} did not come back: `{start}` there", ok=started)
    return report

