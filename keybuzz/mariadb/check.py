"""Checks of the MariaDB Galera layer (design §G), against the lab or production alike (Target.from_env()).

    invoke check --name mariadb             diag: cluster size, Primary, each node's state, seqno, flow control,
                                            a write and a read through each node
    invoke check --name mariadb --failover  one node's server killed (docker kill) while writing through every
                                            node: no committed write lost, the node rejoins (systemd restarts it,
                                            IST from a donor) and is Synced again
    invoke check --name mariadb --perf      bounded client-side load (single-row INSERT + SELECT, 5 s per node)

Only the table keybuzz_check of the ERPNext database is written (the application user's own database); no
secret is printed. Status is read with the ProxySQL monitor user (what ProxySQL itself sees).
"""

from __future__ import annotations

import statistics
import time

import pymysql

from keybuzz import ssh
from keybuzz.checks import Report, Target
from keybuzz.mariadb.client import Writer, connect, count, ensure_table, node_status
from keybuzz.mariadb.settings import SERVICE

FAILOVER_BOUND_S = 180  # the killed node must be Synced again within this
PERF_SECONDS = 5
PERF_MAX_OPS = 5000


def _nodes(target: Target) -> list[tuple[str, str]]:
    return [(s.name, s.ip) for s in target.plan.group("mariadb")]


def _creds(target: Target) -> dict[str, str]:
    c = target.secrets("mariadb")
    return {k: c[k].unmask() for k in ("MARIADB_APP_USER", "MARIADB_APP_PASSWORD", "MARIADB_MONITOR_USER",
                                       "MARIADB_MONITOR_PASSWORD")}


def _status(ip: str, c: dict[str, str]) -> dict[str, str] | None:
    return node_status(ip, c["MARIADB_MONITOR_USER"], c["MARIADB_MONITOR_PASSWORD"])


def _app(ip: str, c: dict[str, str], timeout: float = 5):
    return connect(ip, c["MARIADB_APP_USER"], c["MARIADB_APP_PASSWORD"], database=c["MARIADB_APP_USER"],
                   timeout=timeout)


def whole(nodes: list[tuple[str, str]], c: dict[str, str]) -> bool:
    """Every node Synced in one Primary cluster of len(nodes) members."""
    statuses = [_status(ip, c) for _, ip in nodes]
    return (all(s and s.get("wsrep_cluster_status") == "Primary" and s.get("wsrep_local_state_comment") == "Synced"
                and s.get("wsrep_cluster_size") == str(len(nodes)) for s in statuses)
            and len({s["wsrep_cluster_state_uuid"] for s in statuses if s}) == 1)


def diag(target: Target) -> Report:
    report = Report("mariadb diag")
    c = _creds(target)
    nodes = _nodes(target)
    uuids = set()
    for name, ip in nodes:
        s = _status(ip, c)
        if s is None:
            report.add(f"{name} {ip} unreachable", ok=False)
            continue
        ok = (s.get("wsrep_cluster_status") == "Primary" and s.get("wsrep_local_state_comment") == "Synced"
              and s.get("wsrep_cluster_size") == str(len(nodes)) and s.get("wsrep_ready") == "ON")
        uuids.add(s.get("wsrep_cluster_state_uuid"))
        report.add(f"{name} {ip} {s.get('wsrep_cluster_status')} {s.get('wsrep_local_state_comment')} "
                   f"size={s.get('wsrep_cluster_size')} seqno={s.get('wsrep_last_committed')} "
                   f"flow_control_paused={float(s.get('wsrep_flow_control_paused') or 0):.3f} "
                   f"fc_sent={s.get('wsrep_flow_control_sent')} recv_queue_avg={s.get('wsrep_local_recv_queue_avg')}",
                   ok=ok)
    report.add(f"cluster state uuid: {', '.join(sorted(u or '?' for u in uuids))}", ok=len(uuids) == 1)
    tag = f"diag-{int(time.time())}"
    for i, (name, ip) in enumerate(nodes):
        reader_name, reader_ip = nodes[(i + 1) % len(nodes)]
        try:
            with _app(ip, c) as conn:
                ensure_table(conn)
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO keybuzz_check (tag, n) VALUES (%s, %s)", (tag, i))
            with _app(reader_ip, c) as conn:
                seen = i in count(conn, tag)
            report.add(f"write on {name}, read on {reader_name}: {'seen' if seen else 'NOT seen'}", ok=seen)
        except pymysql.err.Error as e:
            report.add(f"write on {name} / read on {reader_name} failed ({type(e).__name__}: {e.args[0]})", ok=False)
    return report


def failover(target: Target) -> Report:
    """Kill the last node's server (SIGKILL: docker kill) while writing through every node; 0 acknowledged writes
    lost on any node; systemd restarts it and it rejoins (IST), Synced within FAILOVER_BOUND_S."""
    report = Report("mariadb failover")
    c = _creds(target)
    nodes = _nodes(target)
    if not whole(nodes, c):
        report.add("the cluster is not whole (every node Synced, one Primary cluster): no node killed", ok=False)
        return report
    victim, victim_ip = nodes[-1]
    writer = Writer([ip for _, ip in nodes], c["MARIADB_APP_USER"], c["MARIADB_APP_PASSWORD"],
                    c["MARIADB_APP_USER"], f"failover-{int(time.time())}", seconds=240).start()
    try:
        time.sleep(3)
        if len(writer.acked) < 20:
            report.add("writes do not work: no node killed", ok=False)
            return report
        killed_at = time.monotonic()
        answer = ssh.run(victim_ip, f"docker kill {SERVICE}")
        report.add(f"killed the server on {victim} (docker kill {SERVICE})", ok=answer.returncode == 0)
        back = None
        while time.monotonic() - killed_at < FAILOVER_BOUND_S:
            time.sleep(2)
            if whole(nodes, c):
                back = time.monotonic() - killed_at
                break
        report.add(f"{victim} Synced again, cluster of {len(nodes)}" + (f" after {back:.0f}s" if back else
                   f": NOT within {FAILOVER_BOUND_S}s"), ok=back is not None)
        report.metrics["rejoin_s"] = back
    finally:
        writer.stop()
    report.add(f"{len(writer.acked)} writes acknowledged, {writer.errors} refused (the killed node's)",
               ok=len(writer.acked) > 0)
    for name, ip in nodes:
        try:
            with _app(ip, c) as conn:
                lost = len(writer.acked - count(conn, writer.tag))
            report.add(f"{name}: {lost} acknowledged writes missing", ok=lost == 0)
        except pymysql.err.Error as e:
            report.add(f"{name}: cannot read ({type(e).__name__})", ok=False)
    return report


def perf(target: Target) -> Report:
    """PERF_SECONDS of single-row INSERTs then point SELECTs on each node (at most PERF_MAX_OPS each)."""
    report = Report("mariadb perf")
    c = _creds(target)
    tag = f"perf-{int(time.time())}"
    for name, ip in _nodes(target):
        try:
            with _app(ip, c) as conn, conn.cursor() as cur:
                ensure_table(conn)
                for kind, sql in (("insert", "INSERT INTO keybuzz_check (tag, n) VALUES (%s, %s)"),
                                  ("select", "SELECT n FROM keybuzz_check WHERE tag = %s AND n = %s")):
                    lat, end, n = [], time.monotonic() + PERF_SECONDS, 0
                    while time.monotonic() < end and n < PERF_MAX_OPS:
                        t = time.perf_counter()
                        cur.execute(sql, (tag, n))
                        cur.fetchall()
                        lat.append((time.perf_counter() - t) * 1000)
                        n += 1
                    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0]] * 99
                    report.add(f"{name} {kind}: {n / PERF_SECONDS:.0f}/s p50={q[49]:.1f}ms p99={q[98]:.1f}ms")
                    report.metrics[f"{name}_{kind}_per_s"] = n / PERF_SECONDS
                cur.execute("DELETE FROM keybuzz_check WHERE tag = %s", (tag,))
        except pymysql.err.Error as e:
            report.add(f"{name}: {type(e).__name__}: {e.args[0]}", ok=False)
    return report
