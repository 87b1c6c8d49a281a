"""Checks of the DB layer (design §G): `invoke check --name db [--failover] [--perf]`, lab and production alike.

    diag      members, roles, lag, timeline, sync standby (Patroni's /cluster), each etcd member's health,
              where each HAProxy sends 5432 / 6432 (its stats), `SELECT pg_is_in_recovery()` through the LB on
              5432 and 6432 (must be false), with the application user
    failover  a controlled switchover (Patroni REST, authenticated) while a client commits through the LB:
              the write gap and the acknowledged commits lost (must be 0)
    perf      bounded client-side load through the LB on 5432 and 6432: transactions/s and latency

Only the probe table `keybuzz_probe` of the application database is written. No secret is printed.

Example::

    print(diag(Target.from_env()))
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.request

from keybuzz.checks import Report, Target
from keybuzz.db import client
from keybuzz.db.settings import DEFAULT
from keybuzz.haproxy.client import servers_up
from keybuzz.waiting import wait_for

S = DEFAULT
SWITCHOVER_BOUND_S = 60
PERF_SECONDS = 5
PERF_CLIENTS = 4


def _nodes(target: Target) -> list[tuple[str, str]]:
    return [(s.name, s.ip) for s in target.plan.group("db")]


def _app(target: Target, port: int) -> client.Endpoint:
    creds = target.secrets("postgres")
    user = creds["POSTGRES_APP_USER"].unmask()
    return client.Endpoint(target.lb, port, user, creds["POSTGRES_APP_PASS"].unmask(), user)


def _etcd_health(ip: str) -> str:
    try:
        with urllib.request.urlopen(f"http://{ip}:{S.etcd_client_port}/health", timeout=2) as r:  # noqa: S310
            return "healthy" if json.loads(r.read().decode()).get("health") == "true" else "unhealthy"
    except (OSError, ValueError):
        return "no answer"


def diag(target: Target) -> Report:
    report = Report("db diag")
    nodes = _nodes(target)
    try:
        view = client.cluster_any([ip for _, ip in nodes])
    except RuntimeError as e:
        report.add(str(e), ok=False)
        return report
    members = {m["name"]: m for m in view.get("members", [])}
    for name, ip in nodes:
        m = members.get(name)
        if m is None:
            report.add(f"{name} {ip}: not a member", ok=False)
            continue
        running = m.get("state") in ("running", "streaming")
        report.add(f"{name} {ip} {m.get('role')} {m.get('state')} timeline={m.get('timeline')} "
                   f"lag={m.get('lag', 0)}", ok=running)
    leader, sync = client.primary_name(view), client.sync_standbys(view)
    report.add(f"leader {leader}, sync standby {', '.join(sync) or 'none'}", ok=bool(leader) and bool(sync))
    for name, ip in nodes:
        health = _etcd_health(ip)
        report.add(f"etcd {name}: {health}", ok=health == "healthy")
    for h in target.plan.group("haproxy"):
        for backend in ("be_postgres", "be_pgbouncer"):
            up = servers_up(h.ip, backend)
            report.add(f"{h.name} {backend} -> {', '.join(up) if up else up}", ok=up == [leader])
    for port in (S.pg_port, S.pgbouncer_port):
        try:
            recovery = client.in_recovery(_app(target, port))
            report.add(f"through {target.lb}:{port}: pg_is_in_recovery() = {recovery}", ok=recovery is False)
        except Exception as e:  # noqa: BLE001 - reported, never raised
            report.add(f"through {target.lb}:{port}: {type(e).__name__}", ok=False)
    report.metrics.update(leader=leader, sync=sync, timeline=client.timeline(view))
    return report


def failover(target: Target) -> Report:
    report = Report("db failover (planned switchover)")
    nodes = _nodes(target)
    creds = target.secrets("postgres")
    auth = (creds["PATRONI_API_USER"].unmask(), creds["PATRONI_API_PASS"].unmask())
    view = client.cluster_any([ip for _, ip in nodes])
    leader = client.primary_name(view)
    candidates = client.sync_standbys(view)
    if not leader or not candidates:
        report.add(f"no leader or no sync standby to switch to (leader {leader})", ok=False)
        return report
    ip_of = dict(nodes)
    with client.ProbeWriter(_app(target, S.pg_port), interval=0.05, seconds=SWITCHOVER_BOUND_S + 30) as probe:
        wait_for(lambda: probe.acked_count() >= 20, 20, 0.1, "commits through the LB before the switchover")
        t0 = time.monotonic()
        status, text = client.switchover(ip_of[leader], leader, candidates[0], auth)
        if status != 200:
            report.add(f"switchover refused: HTTP {status} {text[:120]}", ok=False)
            return report
        try:
            wait_for(lambda: probe.acked_since(t0 + 0.5) >= 20, SWITCHOVER_BOUND_S, 0.1, "commits after")
        except TimeoutError as e:
            report.add(str(e), ok=False)
    lost = probe.lost(_app(target, S.pg_port))
    gap = probe.gap_after(t0)
    new_leader = client.primary_name(client.cluster_any([ip for _, ip in nodes]))
    report.add(f"{leader} -> {new_leader}: write gap through {target.lb}:{S.pg_port} {gap:.2f} s",
               ok=new_leader == candidates[0])
    report.add(f"acknowledged commits: {probe.acked_count()}, lost: {lost}", ok=lost == 0 and probe.acked_count() > 0)
    report.metrics.update(gap_s=round(gap, 3), acked=probe.acked_count(), lost=lost)
    return report


def _load(ep: client.Endpoint, seconds: float) -> list[float]:
    """One client: a write transaction at a time for `seconds`; the latencies (s)."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    with ep.connect(5, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS keybuzz_probe (run bigint, seq bigint, at timestamptz DEFAULT "
                     "now(), PRIMARY KEY (run, seq))")
        run = int(time.time() * 1000) % 2_000_000_000 + threading.get_ident() % 1000
        seq = 0
        while time.monotonic() < deadline:
            seq += 1
            start = time.monotonic()
            conn.execute("INSERT INTO keybuzz_probe (run, seq) VALUES (%s, %s)", (run, seq))
            latencies.append(time.monotonic() - start)
        conn.execute("DELETE FROM keybuzz_probe WHERE run = %s", (run,))
    return latencies


def perf(target: Target, seconds: float = PERF_SECONDS, clients: int = PERF_CLIENTS) -> Report:
    report = Report(f"db perf ({clients} clients x {seconds:.0f} s of committed inserts through the LB)")
    for port in (S.pg_port, S.pgbouncer_port):
        results: list[list[float]] = []
        ep = _app(target, port)
        threads = [threading.Thread(target=lambda r=results, e=ep: r.append(_load(e, seconds)))
                   for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 30)
        latencies = [x for r in results for x in r]
        if len(results) < clients or not latencies:
            report.add(f"{target.lb}:{port}: {clients - len(results)} client(s) failed", ok=False)
            continue
        tps = len(latencies) / seconds
        report.add(f"{target.lb}:{port}: {tps:.0f} commits/s, latency p50 {statistics.median(latencies) * 1000:.1f}"
                   f" ms, max {max(latencies) * 1000:.1f} ms")
        report.metrics[f"tps_{port}"] = round(tps)
    return report
