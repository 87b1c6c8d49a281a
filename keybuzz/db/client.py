"""Client side of the DB layer, used from the install host (checks, testbed, tests, benchmark).

* Patroni's REST API: `cluster(api)` (GET /cluster), `primary_name`, `sync_standbys`, `replica_lags`,
  `timeline`; `switchover` and `patch_config` (authenticated).
* PostgreSQL through psycopg 3: `Endpoint` (host, port, user, password, db; the password never printed),
  `in_recovery(ep)`.
* `ProbeWriter`: commits a numbered row every `interval` seconds through an endpoint (HAProxy 5432/6432 or a
  node), records which commits were acknowledged and when; `lost(ep)` counts acknowledged commits missing
  after a failover, `max_gap()` the longest time without an acknowledged commit. Bounded in rows and time.
* `ensure_app(ep, user, verifier, db)`: the application user (SCRAM verifier, never the password) and
  database, idempotent.

Example::

    view = cluster("192.168.100.11")
    primary_name(view), sync_standbys(view)
    # -> ('db-02', ['db-01'])
    with ProbeWriter(Endpoint("192.168.100.10", 5432, "keybuzz", pw, "keybuzz"), seconds=20) as w:
        ...                                    # kill the primary meanwhile
    w.lost(Endpoint(...)), w.max_gap()
    # -> (0, 12.4)
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.request
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

PROBE_TABLE = "keybuzz_probe"


# ------------------------------------------------------------------ Patroni REST API
def _request(url: str, method: str = "GET", body: dict | None = None, auth: tuple[str, str] | None = None,
             timeout: float = 3.0) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def cluster(api_host: str, port: int = 8008, timeout: float = 3.0) -> dict:
    """GET /cluster of one member: {"members": [{"name", "role", "state", "host", "timeline", "lag"}...]}."""
    status, text = _request(f"http://{api_host}:{port}/cluster", timeout=timeout)
    if status != 200:
        raise RuntimeError(f"GET /cluster on {api_host}: HTTP {status}")
    return json.loads(text)


def cluster_any(api_hosts: list[str], port: int = 8008, timeout: float = 2.0) -> dict:
    """The /cluster view of the first member that answers."""
    errors = []
    for host in api_hosts:
        try:
            return cluster(host, port, timeout)
        except Exception as e:  # noqa: BLE001 - try the next member
            errors.append(f"{host}: {e!r}")
    raise RuntimeError("no Patroni REST API answered: " + "; ".join(errors))


def primary_name(view: dict) -> str | None:
    """The member whose role is leader and is running (Patroni 3.x says "leader"; "master" before)."""
    for m in view.get("members", []):
        if m.get("role") in ("leader", "master", "primary") and m.get("state") == "running":
            return m["name"]
    return None


def sync_standbys(view: dict) -> list[str]:
    return sorted(m["name"] for m in view.get("members", []) if m.get("role") == "sync_standby")


def replicas(view: dict) -> list[str]:
    return sorted(m["name"] for m in view.get("members", [])
                  if m.get("role") in ("replica", "sync_standby") and m.get("state") in ("running", "streaming"))


def replica_lags(view: dict) -> dict[str, int | str]:
    """Lag in bytes per replica as Patroni reports it ("unknown" while it cannot tell)."""
    return {m["name"]: m.get("lag", "unknown") for m in view.get("members", [])
            if m.get("role") in ("replica", "sync_standby")}


def timeline(view: dict) -> int | None:
    for m in view.get("members", []):
        if m.get("role") in ("leader", "master", "primary"):
            return m.get("timeline")
    return None


def is_primary(api_host: str, port: int = 8008, timeout: float = 2.0) -> bool:
    """What HAProxy asks: GET /primary answers 200 on the leader only."""
    try:
        return _request(f"http://{api_host}:{port}/primary", timeout=timeout)[0] == 200
    except Exception:  # noqa: BLE001 - unreachable is "not primary"
        return False


def switchover(api_host: str, leader: str, candidate: str | None, auth: tuple[str, str], port: int = 8008,
               timeout: float = 30.0) -> tuple[int, str]:
    """Planned switchover (POST /switchover, authenticated); returns (HTTP status, text)."""
    body = {"leader": leader, **({"candidate": candidate} if candidate else {})}
    return _request(f"http://{api_host}:{port}/switchover", "POST", body, auth, timeout)


def patch_config(api_host: str, changes: dict, auth: tuple[str, str], port: int = 8008) -> dict:
    """PATCH /config: the dynamic settings (bootstrap.dcs only applies when the cluster is created)."""
    status, text = _request(f"http://{api_host}:{port}/config", "PATCH", changes, auth)
    if status != 200:
        raise RuntimeError(f"PATCH /config on {api_host}: HTTP {status}")
    return json.loads(text)


# ------------------------------------------------------------------ PostgreSQL
@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    dbname: str = "postgres"

    def connect(self, timeout: float = 3.0, autocommit: bool = True) -> psycopg.Connection:
        # keepalives: a dead peer behind HAProxy is noticed in seconds, not after the kernel's 2 h
        return psycopg.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                               dbname=self.dbname, connect_timeout=max(1, int(timeout)), autocommit=autocommit,
                               keepalives=1, keepalives_idle=2, keepalives_interval=1, keepalives_count=3,
                               application_name="keybuzz-check")


def query(ep: Endpoint, text: str, params: tuple = (), timeout: float = 3.0):
    """One query on a fresh connection; returns all rows."""
    with ep.connect(timeout) as conn:
        return conn.execute(text, params).fetchall()


def in_recovery(ep: Endpoint, timeout: float = 3.0) -> bool:
    """SELECT pg_is_in_recovery(): False on the primary, True on a replica."""
    return bool(query(ep, "SELECT pg_is_in_recovery()", timeout=timeout)[0][0])


def ensure_app(ep: Endpoint, user: str, verifier: str, dbname: str) -> list[str]:
    """Create or update the application role (SCRAM verifier: PostgreSQL stores it as is, so the password
    never travels) and its database owned by it; idempotent. Returns what changed (empty on a re-run)."""
    if not verifier.startswith("SCRAM-SHA-256$"):
        raise ValueError("ensure_app takes a SCRAM-SHA-256 verifier (keybuzz.db.settings.scram_verifier)")
    changed = []
    with ep.connect(10) as conn:
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (user,)).fetchone()
        if row is None:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(user), sql.Literal(verifier)))
            changed.append(f"role {user} created")
        elif row[0] != verifier:
            conn.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(user), sql.Literal(verifier)))
            changed.append(f"role {user} password set")
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8'").format(
                sql.Identifier(dbname), sql.Identifier(user)))
            changed.append(f"database {dbname} created")
    return changed


# ------------------------------------------------------------------ probe writer
class ProbeWriter:
    """Commit numbered rows through `ep` in a background thread; know which commits were acknowledged.

    `interval` seconds between commits, at most `max_rows` rows and `seconds` seconds (both bounds). A commit
    that raises is "unknown" (it may or may not be there); a commit answered with PostgreSQL's
    "might not have been replicated" warning is not counted as durable (`warned`).
    """

    def __init__(self, ep: Endpoint, interval: float = 0.05, seconds: float = 120, max_rows: int = 20000,
                 table: str = PROBE_TABLE, run_id: int | None = None):
        self.ep, self.interval, self.seconds, self.max_rows, self.table = ep, interval, seconds, max_rows, table
        self.run_id = run_id if run_id is not None else int(time.time() * 1000) % 2_000_000_000
        self.acked: list[tuple[int, float]] = []  # (seq, monotonic time of the acknowledgement)
        self.failed: list[int] = []
        self.warned: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = 0.0

    def prepare(self) -> None:
        with self.ep.connect(10) as conn:
            conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (run bigint, seq bigint, at timestamptz DEFAULT"
                                 " now(), PRIMARY KEY (run, seq))").format(sql.Identifier(self.table)))

    def start(self) -> ProbeWriter:
        self.prepare()
        self.started = time.monotonic()
        self._thread.start()
        return self

    def stop(self, timeout: float = 15) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def __enter__(self) -> ProbeWriter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        conn = None
        insert = sql.SQL("INSERT INTO {} (run, seq) VALUES (%s, %s)").format(sql.Identifier(self.table))
        deadline = self.started + self.seconds
        seq = 0
        while not self._stop.is_set() and seq < self.max_rows and time.monotonic() < deadline:
            seq += 1
            notices: list[str] = []
            try:
                if conn is None or conn.closed:
                    conn = self.ep.connect(2, autocommit=False)
                    conn.add_notice_handler(lambda d, n=notices: n.append(str(d.message_primary)))
                conn.execute(insert, (self.run_id, seq))
                conn.commit()
                if any("might not have been replicated" in n for n in notices):
                    self.warned.append(seq)
                else:
                    self.acked.append((seq, time.monotonic()))
            except Exception as e:  # noqa: BLE001 - any failure: unknown outcome, reconnect
                self.failed.append(seq)
                if len(self.errors) < 50:
                    self.errors.append(type(e).__name__ + ": " + str(e).splitlines()[0][:200] if str(e) else "")
                try:
                    if conn is not None:
                        conn.close()
                except Exception:  # noqa: BLE001
                    pass
                conn = None
            self._stop.wait(self.interval)
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass

    # results
    def acked_count(self) -> int:
        return len(self.acked)

    def acked_since(self, t: float) -> int:
        return sum(1 for _, at in self.acked if at > t)

    def acked_before(self, t: float) -> int:
        return sum(1 for _, at in self.acked if at <= t)

    def max_gap(self) -> float:
        """Longest time between two consecutive acknowledged commits (s)."""
        times = [at for _, at in self.acked]
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)

    def gap_after(self, t: float) -> float:
        """The write gap of a failure at `t`: the longest time without an acknowledgement from the last one
        at or before `t` to the end of the run (s; inf if nothing was acknowledged on one side of `t`)."""
        before = [at for _, at in self.acked if at <= t]
        after = [at for _, at in self.acked if at > t]
        if not before or not after:
            return float("inf")
        times = [before[-1], *after]
        return max(b - a for a, b in zip(times, times[1:], strict=False))

    def lost(self, ep: Endpoint | None = None, timeout: float = 10) -> int:
        """Acknowledged commits that are not in the table (read through `ep`, default the writer's)."""
        with (ep or self.ep).connect(timeout) as conn:
            present = {r[0] for r in conn.execute(
                sql.SQL("SELECT seq FROM {} WHERE run = %s").format(sql.Identifier(self.table)), (self.run_id,))}
        return sum(1 for s, _ in self.acked if s not in present)


# ------------------------------------------------------------------ the DCS (etcd v3 JSON gateway)
@dataclass(frozen=True)
class DcsState:
    """What etcd holds for the cluster, read from the install host before a deploy changes anything."""

    unreachable: bool  # no etcd member answered (a first install, or etcd down everywhere)
    system_id: str | None  # Patroni's initialize key: the cluster's PostgreSQL system identifier
    config: dict | None  # Patroni's dynamic configuration (the /config key)


def _etcd_get(endpoint: str, key: str, timeout: float) -> str | None:
    body = {"key": base64.b64encode(key.encode()).decode()}
    status, text = _request(f"http://{endpoint}/v3/kv/range", "POST", body, timeout=timeout)
    if status != 200:
        raise RuntimeError(f"etcd {endpoint}: HTTP {status}")
    kvs = json.loads(text).get("kvs") or []
    return base64.b64decode(kvs[0]["value"]).decode() if kvs else None


def dcs_state(node_ips: list[str], s=None, timeout: float = 2.0) -> DcsState:
    """Patroni's keys in etcd (initialize, config), from the first member that answers.

    Example::

        dcs_state(["10.0.0.51", "10.0.0.52", "10.0.0.53"])   # DcsState(unreachable=False, system_id='7…', …)
    """
    from keybuzz.db.settings import DEFAULT

    s = s or DEFAULT
    prefix = f"{s.namespace.rstrip('/')}/{s.scope}"
    for ip in node_ips:
        endpoint = f"{ip}:{s.etcd_client_port}"
        try:
            system_id = _etcd_get(endpoint, f"{prefix}/initialize", timeout)
            config = _etcd_get(endpoint, f"{prefix}/config", timeout)
        except Exception:  # noqa: BLE001 - try the next member
            continue
        return DcsState(False, system_id, json.loads(config) if config else None)
    return DcsState(True, None, None)
