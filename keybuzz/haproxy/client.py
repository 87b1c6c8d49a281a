"""Reads what a running HAProxy does, from its stats CSV on the private network (`<ip>:8404/stats;csv`).

    servers_up("10.0.0.11", "be_postgres")   # ['db-02']: where HAProxy sends 5432 now
"""

from __future__ import annotations

import csv
import io
import urllib.request

from keybuzz.haproxy.settings import STATS_PORT


def parse_stats(text: str) -> list[dict]:
    """Rows of HAProxy's stats CSV (the stats page's `;csv` or the admin socket's `show stat`).

    >>> parse_stats("# pxname,svname,status\\nbe_x,db-01,UP\\nbe_x,db-02,DOWN\\n")[0]["svname"]
    'db-01'
    """
    return list(csv.DictReader(io.StringIO(text.lstrip("# "))))


def up_servers(rows: list[dict], backend: str) -> list[str]:
    """Names of the servers of `backend` marked UP, sorted.

    >>> up_servers(parse_stats("# pxname,svname,status\\nbe_x,db-01,UP\\nbe_x,db-02,DOWN\\nbe_x,BACKEND,UP"), "be_x")
    ['db-01']
    """
    return sorted(r["svname"] for r in rows
                  if r.get("pxname") == backend and r.get("svname") not in ("FRONTEND", "BACKEND")
                  and (r.get("status") or "").startswith("UP"))


def stats_rows(ip: str, timeout: float = 2.0) -> list[dict] | None:
    """Every row of HAProxy's stats CSV (one per frontend, backend and server), None when it does not answer."""
    url = f"http://{ip}:{STATS_PORT}/stats;csv"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - fixed http URL
            return parse_stats(response.read().decode())
    except OSError:
        return None


def servers_up(ip: str, backend: str, timeout: float = 2.0) -> list[str] | None:
    """Names of the servers of `backend` HAProxy at `ip` marks UP (None: HAProxy does not answer)."""
    rows = stats_rows(ip, timeout)
    return None if rows is None else up_servers(rows, backend)


def server_address(ip: str, backend: str, server: str, timeout: float = 2.0) -> str | None:
    """'ip:port' HAProxy at `ip` uses for `backend`/`server` (None: no answer or no such server)."""
    for row in stats_rows(ip, timeout) or []:
        if row.get("pxname") == backend and row.get("svname") == server:
            return row.get("addr") or None
    return None
