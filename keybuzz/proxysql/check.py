"""Checks of the ProxySQL layer (design §G), against production or the lab (Target.from_env()).

    invoke check --name proxysql             diag: the writer of each ProxySQL (admin interface, over SSH), one
                                             write through each ProxySQL and through the LB landing on it
    invoke check --name proxysql --failover  the writer's MariaDB stopped while writing through the LB: writes
                                             move to another node, none acknowledged is lost; then it rejoins
    invoke check --name proxysql --perf      bounded: sequential committed writes through the LB (5 s at most)

NOT EXERCISED HERE: no registry this project reaches ships ProxySQL, so these run only where ProxySQL runs
(production, or a lab that has the image). Only the check table `keybuzz_proxysql_check` in the application
database is written. No secret is printed. The MariaDB LB address is $KEYBUZZ_MARIADB_LB_ADDRESS (default
10.0.0.20, design §A): a target of client traffic, never an address ProxySQL binds.
"""

from __future__ import annotations

import os
import time

from keybuzz import ssh
from keybuzz.checks import Report, Target
from keybuzz.proxysql.client import online_writers, proxysql_rows, rows_present, write_probe
from keybuzz.proxysql.settings import ProxySQLSecrets
from keybuzz.waiting import wait_for

MARIADB_SERVICE = "mariadb"  # the MariaDB layer's systemd unit on maria-01..03
FAILOVER_BOUND_S = 60  # writes must land on another node within this after the writer's MariaDB stops
REJOIN_BOUND_S = 300  # the stopped node must be back (Synced, a writer candidate again) within this
PERF_SECONDS = 5
PERF_MAX_WRITES = 5000


def mariadb_lb() -> str:
    return os.environ.get("KEYBUZZ_MARIADB_LB_ADDRESS", "10.0.0.20")


def _secrets(target: Target) -> ProxySQLSecrets:
    return ProxySQLSecrets.from_bricks(target.secrets("proxysql"), target.secrets("mariadb"))


def _writers(target: Target, report: Report) -> dict[str, list[str]]:
    out = {}
    for s in target.plan.group("proxysql"):
        try:
            rows = proxysql_rows(s.ip)
        except Exception as e:  # noqa: BLE001 - one line per ProxySQL, the report says what failed
            report.add(f"{s.name} {s.ip}: admin interface not read ({type(e).__name__}: {e})", ok=False)
            continue
        writers = online_writers(rows)
        layout = ", ".join(f"hg{r.hostgroup}:{r.hostname}:{r.status}" for r in rows)
        report.add(f"{s.name} {s.ip}: writer {writers or 'none'} ({layout})", ok=len(writers) == 1)
        out[s.name] = writers
    return out


def diag(target: Target) -> Report:
    report = Report("proxysql diag")
    secrets = _secrets(target)
    writers = _writers(target, report)
    chosen = {w[0] for w in writers.values() if len(w) == 1}
    report.add(f"both ProxySQLs use the same writer: {sorted(chosen)}", ok=len(chosen) == 1)
    names = {s.ip: s.name for s in target.plan.group("mariadb")}
    for s in target.plan.group("proxysql"):
        try:
            node, _ = write_probe(s.ip, secrets)
            report.add(f"write through {s.name} committed on {names.get(node, node)}",
                       ok=writers.get(s.name) == [node])
        except Exception as e:  # noqa: BLE001
            report.add(f"write through {s.name} failed ({type(e).__name__}: {e})", ok=False)
    try:
        node, _ = write_probe(mariadb_lb(), secrets)
        report.add(f"write through the LB {mariadb_lb()} committed on {names.get(node, node)}", ok=node in chosen)
    except Exception as e:  # noqa: BLE001
        report.add(f"write through the LB {mariadb_lb()} failed ({type(e).__name__}: {e})", ok=False)
    return report


def failover(target: Target) -> Report:
    """Stop the writer's MariaDB while writing through the LB (bounded), see writes move, count what was lost."""
    report = Report("proxysql failover")
    secrets = _secrets(target)
    lb = mariadb_lb()
    writer, _ = write_probe(lb, secrets)
    victim = next((s for s in target.plan.group("mariadb") if s.ip == writer), None)
    if victim is None:
        report.add(f"the writer {writer} is not a mariadb host of servers.tsv", ok=False)
        return report
    report.add(f"writer before: {victim.name} {writer}")
    acknowledged: list[int] = []
    errors = 0
    # a clean stop: the unit restarts a killed container by itself (Restart=always), a stop keeps it down
    stop = ssh.run(victim.ip, f"systemctl stop {MARIADB_SERVICE}", timeout=120)
    report.add(f"stopped {MARIADB_SERVICE} on {victim.name}", ok=stop.returncode == 0)
    stopped_at = time.monotonic()
    new_writer = None
    while time.monotonic() - stopped_at < FAILOVER_BOUND_S:
        try:
            node, row_id = write_probe(lb, secrets, timeout=3)
            acknowledged.append(row_id)
            if node != writer:
                new_writer = node
                break
        except Exception:  # noqa: BLE001 - a refused write during the switch is expected; counted
            errors += 1
            time.sleep(0.2)
    gap = time.monotonic() - stopped_at
    report.add(f"writes moved to {new_writer} after {gap:.1f} s ({errors} refused meanwhile)",
               ok=new_writer is not None)
    report.metrics.update(failover_seconds=round(gap, 1), refused_writes=errors)
    for _ in range(20):  # a few more writes on the new writer
        try:
            acknowledged.append(write_probe(lb, secrets, timeout=3)[1])
        except Exception:  # noqa: BLE001
            errors += 1
    start = ssh.run(victim.ip, f"systemctl start {MARIADB_SERVICE}", timeout=120)
    report.add(f"started {MARIADB_SERVICE} on {victim.name} again", ok=start.returncode == 0)
    try:
        present = rows_present(lb, secrets, acknowledged)
        report.add(f"acknowledged writes present: {present}/{len(acknowledged)}",
                   ok=present == len(acknowledged) and len(acknowledged) > 0)
        report.metrics.update(acknowledged=len(acknowledged), lost=len(acknowledged) - present)
    except Exception as e:  # noqa: BLE001
        report.add(f"reading back the acknowledged writes failed ({type(e).__name__}: {e})", ok=False)
    def routable_again() -> bool:
        return all(any(r.hostname == victim.ip and r.status == "ONLINE" for r in proxysql_rows(s.ip))
                   for s in target.plan.group("proxysql"))

    try:
        wait_for(routable_again, REJOIN_BOUND_S, interval=2, what=f"{victim.name} ONLINE again in every ProxySQL")
        # the first node of servers.tsv has the highest weight: ProxySQL makes it the writer again (failback)
        now = [online_writers(proxysql_rows(s.ip)) for s in target.plan.group("proxysql")]
        report.add(f"{victim.name} rejoined; writers now {now}")
    except TimeoutError as e:
        report.add(str(e), ok=False)
    return report


def perf(target: Target, seconds: float = PERF_SECONDS, max_writes: int = PERF_MAX_WRITES) -> Report:
    """Sequential committed writes through the LB, one connection each (ProxySQL's connection handling
    included), bounded in time and count."""
    report = Report("proxysql perf")
    secrets = _secrets(target)
    done = errors = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds and done < max_writes:
        try:
            write_probe(mariadb_lb(), secrets, timeout=3)
            done += 1
        except Exception:  # noqa: BLE001
            errors += 1
    elapsed = time.monotonic() - start
    report.add(f"{done} committed writes in {elapsed:.1f} s ({done / elapsed:.0f}/s), {errors} errors",
               ok=done > 0 and errors == 0)
    report.metrics.update(writes=done, seconds=round(elapsed, 1), errors=errors)
    return report
