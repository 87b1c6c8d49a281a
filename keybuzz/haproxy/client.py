"""Reads what a running HAProxy does, from its stats CSV on the private network (`<ip>:8404/stats;csv`), and
what a client of the load balancer sees (new connections that reach a service, or not).

    servers_up("10.0.0.11", "be_postgres")   # ['db-02']: where HAProxy sends 5432 now
    answers("10.0.0.10", 6379, "redis")      # True: a new connection through the LB reached Redis
"""

from __future__ import annotations

import csv
import io
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass, field

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


# --- new connections through the load balancer, as a client sees them ------------------------------------------

# What a service behind the LB answers to a first message, without any credential: Redis answers PING with
# +PONG or -NOAUTH; RabbitMQ answers the AMQP 0-9-1 protocol header with a Connection.Start method frame.
HELLO: dict[str, tuple[bytes, tuple[bytes, ...]]] = {
    "redis": (b"PING\r\n", (b"+", b"-")),
    "amqp": (b"AMQP\x00\x00\x09\x01", (b"\x01",)),
}


def answers(address: str, port: int, protocol: str, timeout: float = 1.0) -> bool:
    """Does a NEW connection to address:port reach the service (it answers `protocol`'s hello)?

    Through a TCP load balancer the connect itself succeeds even when no backend is alive: only the
    service's first bytes prove the connection went somewhere.
    """
    hello, expected = HELLO[protocol]
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(hello)
            first = sock.recv(16)
    except OSError:
        return False
    return first.startswith(expected)


@dataclass
class ConnectProbe:
    """Opens a new connection every `every` s (bounded by `seconds`) and records when they failed.

    `failed` holds monotonic times of failed attempts; window(since) is first-to-last failure after `since`.
    """

    address: str
    port: int
    protocol: str
    every: float = 0.05
    attempts: int = 0
    failed: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self, seconds: float) -> ConnectProbe:
        def loop():
            end = time.monotonic() + seconds
            while not self._stop.is_set() and time.monotonic() < end:
                started = time.monotonic()
                self.attempts += 1
                if not answers(self.address, self.port, self.protocol):
                    self.failed.append(started)
                self._stop.wait(max(0.0, self.every - (time.monotonic() - started)))

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)

    def failures_since(self, since: float) -> list[float]:
        return [t for t in self.failed if t >= since]

    def window(self, since: float) -> float:
        """Seconds from `since` to the start of the last failed attempt after it (0.0: none failed).

        >>> p = ConnectProbe("127.0.0.1", 1, "redis", failed=[1.0, 10.2, 12.5])
        >>> p.window(10.0), p.window(13.0)
        (2.5, 0.0)
        """
        after = self.failures_since(since)
        return round(after[-1] - since, 2) if after else 0.0


def wait_quiet(probes: list[ConnectProbe], since: float, quiet_s: float, bound_s: float) -> bool:
    """Wait until no probe has failed for `quiet_s` (counted from `since` or the last failure after it), at most
    until `since + bound_s`. True when they went quiet: the failed-connection window is over."""
    while time.monotonic() < since + bound_s:
        last = max([since, *(t for p in probes for t in p.failures_since(since))])
        if time.monotonic() - last >= quiet_s:
            return True
        time.sleep(0.2)
    return False
