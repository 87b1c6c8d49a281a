"""Talking to the Galera nodes over TCP (PyMySQL): status, a bounded writer, counts. Used by the checks,
the testbed and the tests; the deploy talks to the nodes through keybuzz-mariadb on each host.

    with connect("10.0.0.31", "erpnext", password, database="erpnext") as conn:
        wsrep_status(conn)["wsrep_cluster_status"]   # 'Primary'
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pymysql

# what the checks and the bootstrap decision read from SHOW GLOBAL STATUS
WSREP_KEYS = ("wsrep_cluster_status", "wsrep_cluster_size", "wsrep_local_state_comment", "wsrep_ready",
              "wsrep_connected", "wsrep_cluster_state_uuid", "wsrep_last_committed", "wsrep_flow_control_paused",
              "wsrep_flow_control_sent", "wsrep_flow_control_recv", "wsrep_local_recv_queue_avg",
              "wsrep_local_send_queue_avg", "wsrep_cluster_conf_id")


def connect(host: str, user: str, password: str, port: int = 3306, database: str | None = None,
            timeout: float = 5) -> pymysql.connections.Connection:
    return pymysql.connect(host=host, port=port, user=user, password=password, database=database,
                           connect_timeout=timeout, read_timeout=timeout * 4, write_timeout=timeout * 4,
                           autocommit=True)


def wsrep_status(conn) -> dict[str, str]:
    """The wsrep status variables of WSREP_KEYS (strings, as the server gives them)."""
    with conn.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS LIKE 'wsrep%%'")
        return {k: v for k, v in cur.fetchall() if k in WSREP_KEYS}


def node_status(host: str, user: str, password: str, port: int = 3306, timeout: float = 3) -> dict[str, str] | None:
    """wsrep status of one node, None when it does not answer."""
    try:
        with connect(host, user, password, port, timeout=timeout) as conn:
            return wsrep_status(conn)
    except pymysql.err.Error:
        return None


TABLE = "keybuzz_check"


def ensure_table(conn) -> None:
    with conn.cursor() as cur:
        cur.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
                    "tag VARCHAR(64) NOT NULL, n BIGINT NOT NULL, KEY (tag)) ENGINE=InnoDB")


def count(conn, tag: str) -> set[int]:
    with conn.cursor() as cur:
        cur.execute(f"SELECT n FROM {TABLE} WHERE tag=%s", (tag,))
        return {row[0] for row in cur.fetchall()}


@dataclass
class Writer:
    """Inserts (tag, n) rows, n = 1, 2, ... round-robin over `hosts`, in a thread, until stopped or `limit`
    rows or `seconds` are reached (bounded). `acked` holds every n whose COMMIT returned OK: those must all
    be found afterwards (0 committed writes lost)."""

    hosts: list[str]
    user: str
    password: str
    database: str
    tag: str
    port: int = 3306
    limit: int = 100000
    seconds: float = 300
    pause: float = 0.005
    acked: set[int] = field(default_factory=set)
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Writer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> Writer:
        self._stop.set()
        if self._thread:
            self._thread.join(60)
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        conns: dict[str, object] = {}
        n = 0
        while not self._stop.is_set() and n < self.limit and time.monotonic() < deadline:
            n += 1
            host = self.hosts[n % len(self.hosts)]
            try:
                conn = conns.get(host) or connect(host, self.user, self.password, self.port, self.database, 2)
                conns[host] = conn
                with conn.cursor() as cur:  # type: ignore[attr-defined]
                    cur.execute(f"INSERT INTO {TABLE} (tag, n) VALUES (%s, %s)", (self.tag, n))
                self.acked.add(n)  # autocommit: returned = committed (certified) cluster-wide
            except pymysql.err.Error:
                self.errors += 1
                old = conns.pop(host, None)
                try:
                    old.close()  # type: ignore[union-attr]
                except Exception:  # noqa: BLE001 - the connection is broken anyway
                    pass
                time.sleep(0.05)
            time.sleep(self.pause)
        for conn in conns.values():
            try:
                conn.close()  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001
                pass
