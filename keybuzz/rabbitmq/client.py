"""AMQP tools shared by the RabbitMQ checks, tests and benchmark: a confirmed publisher, an
at-least-once consumer, and a read-only client of the management HTTP API.

Every loop is bounded in count and time; passwords are taken as HiddenValue/str and never printed
(no __repr__ shows them, errors carry only the exception class and the address).

Example::

    ep = Endpoint("172.30.0.10", 5672, "keybuzz", creds["RABBITMQ_PASSWORD"])
    consumer = Consumer(ep, "keybuzz.check").start()
    publisher = ConfirmedPublisher(ep, "keybuzz.check")
    publisher.run(count=1000, seconds=60)
    consumer.wait_for(publisher.confirmed, seconds=30)   # -> set of missing ids (empty = no loss)
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

import pika
from pika.adapters.utils.connection_workflow import AMQPConnectionWorkflowFailed, AMQPConnectorException
from pika.exceptions import AMQPError

try:  # pika's own exceptions cover AMQP; sockets can also fail with OSError
    from pyinfra.api import HiddenValue
except ImportError:  # pragma: no cover - pyinfra is a dependency, this is only for standalone use
    HiddenValue = ()

# What a broken connection / failed confirm raises; the loops reconnect on these and only these.
# (pika's connection workflow can also surface its own AMQPConnector* errors, e.g. a handshake timeout.)
RETRYABLE = (AMQPError, OSError, ConnectionError, AMQPConnectorException, AMQPConnectionWorkflowFailed)


def _plain(secret) -> str:
    """The clear value of a HiddenValue (or str), at the last moment before use."""
    return secret.unmask() if hasattr(secret, "unmask") else str(secret)


@dataclass(frozen=True)
class Endpoint:
    """Where to connect: AMQP host/port (the load balancer, HAProxy or one node) and the account.

    >>> Endpoint("127.0.0.1", 5672, "keybuzz", HiddenValue("..."))
    Endpoint(127.0.0.1:5672 vhost=/ user=keybuzz)
    """

    host: str
    port: int
    user: str
    password: object = field(repr=False)
    vhost: str = "/"

    def __repr__(self) -> str:
        return f"Endpoint({self.host}:{self.port} vhost={self.vhost} user={self.user})"

    def parameters(self, heartbeat: int = 5, timeout: float = 3.0, name: str = "") -> pika.ConnectionParameters:
        """pika parameters with short timeouts: a dead node is noticed in seconds, not minutes.

        heartbeat: seconds; pika closes a connection after ~2 missed heartbeats (a node that
        vanished without closing its sockets). name: shown by the management API (`connection_name`).
        timeout: connect and handshake. Through HAProxy the TCP connect always succeeds; when HAProxy
        picked a node that just died (not yet marked down by its checks), the AMQP handshake never
        starts: giving up after `timeout` and reconnecting lets round robin pick a live node.
        """
        return pika.ConnectionParameters(
            client_properties={"connection_name": name} if name else None,
            host=self.host, port=self.port, virtual_host=self.vhost,
            credentials=pika.PlainCredentials(_plain(self.user), _plain(self.password)),
            heartbeat=heartbeat, socket_timeout=timeout, stack_timeout=timeout,
            blocked_connection_timeout=timeout * 4, connection_attempts=1,
        )


def connect(endpoint: Endpoint, heartbeat: int = 5, name: str = "") -> pika.BlockingConnection:
    """One blocking connection (no retry here: callers loop with their own bounds)."""
    return pika.BlockingConnection(endpoint.parameters(heartbeat=heartbeat, name=name))


def declare(channel, queue: str) -> None:
    """Declare `queue` durable with NO queue type: the vhost's default type (quorum) decides.

    The tests check the resulting type, which proves the vhost default is in place.
    """
    channel.queue_declare(queue=queue, durable=True)


def _close(connection) -> None:
    try:
        if connection is not None and connection.is_open:
            connection.close()
    except Exception:  # noqa: BLE001 - a broken connection may fail to close; nothing to do
        pass


def _error(e: BaseException) -> str:
    """An exception's class and message, for a report line (pika messages carry no secret)."""
    return f"{type(e).__name__}: {e}"[:200]


@dataclass
class PublishResult:
    """What a publisher run did: confirmed ids, the longest time without any confirm, errors."""

    confirmed: list[int] = field(default_factory=list)
    max_gap: float = 0.0  # seconds between two consecutive confirms (the outage seen by a client)
    gaps: list[tuple[float, float]] = field(default_factory=list)  # (start offset, length) of gaps > 1 s
    reconnects: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.confirmed) / self.seconds if self.seconds else 0.0


class ConfirmedPublisher:
    """Publishes numbered persistent messages one at a time with publisher confirms.

    A message counts as confirmed only when the broker acked it (basic_publish on a confirm
    channel returns); on any connection/channel error it reconnects and publishes the SAME id
    again (so a message whose confirm was lost may arrive twice: duplicates allowed, no loss).

    Example::

        result = ConfirmedPublisher(ep, "q").run(count=500, seconds=30)
        result.max_gap, len(result.confirmed)
    """

    def __init__(self, endpoint: Endpoint, queue: str, heartbeat: int = 5, retry_pause: float = 0.2,
                 name: str = "", redeclare: bool = True):
        self.endpoint = endpoint
        # redeclare the queue on every new connection (what most applications do) or only on the first
        self.redeclare = redeclare
        self._declared = False
        self.name = name  # connection name, to find the node it landed on (Management.connection_node)
        self.queue = queue
        self.heartbeat = heartbeat
        self.retry_pause = retry_pause
        self.result = PublishResult()
        self.last_confirm_at: float | None = None  # monotonic time of the latest confirm
        self._connection = None
        self._channel = None

    def _ensure_channel(self):
        if self._channel is None or not self._channel.is_open:
            _close(self._connection)
            self._connection = connect(self.endpoint, self.heartbeat, self.name)
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
            if self.redeclare or not self._declared:
                declare(self._channel, self.queue)
                self._declared = True
        return self._channel

    def open(self) -> None:
        """Connect now (run() then reuses this connection)."""
        self._ensure_channel()

    def drop(self) -> None:
        """Close the connection (the next publish opens a new one)."""
        _close(self._connection)
        self._connection = self._channel = None

    def publish_one(self, message_id: int) -> None:
        """Publish `message_id` and wait for its confirm; raises on nack/unroutable/connection loss."""
        channel = self._ensure_channel()
        channel.basic_publish(
            exchange="", routing_key=self.queue, body=str(message_id).encode(),
            properties=pika.BasicProperties(delivery_mode=2), mandatory=True,
        )

    def run(self, count: int | None = None, seconds: float = 60.0, stop: threading.Event | None = None,
            rate: float | None = None, ids_from: int = 0) -> PublishResult:
        """Publish ids ids_from, ids_from+1... until `count` are confirmed, `seconds` elapse or `stop` is set.

        rate: at most this many messages per second (None: as fast as confirms come back).
        ids_from: first id (several publishers on one queue use disjoint ranges).
        """
        start = time.monotonic()
        deadline = start + seconds
        result = self.result
        next_id = ids_from + len(result.confirmed)
        previous = self.last_confirm_at or start
        while time.monotonic() < deadline and (count is None or len(result.confirmed) < count):
            if stop is not None and stop.is_set():
                break
            if rate:
                pause = start + (next_id - ids_from) / rate - time.monotonic()
                if pause > 0:
                    time.sleep(min(pause, 1.0))
                    continue
            try:
                self.publish_one(next_id)
            except RETRYABLE as e:
                result.reconnects += 1
                if len(result.errors) < 20:
                    result.errors.append(f"{time.monotonic() - start:6.2f}s {_error(e)}")
                self._channel = None
                time.sleep(self.retry_pause)
                continue
            now = time.monotonic()
            result.confirmed.append(next_id)
            gap = now - previous
            result.max_gap = max(result.max_gap, gap)
            if gap > 1.0:
                result.gaps.append((previous - start, gap))
            previous = self.last_confirm_at = now
            next_id += 1
        result.seconds = time.monotonic() - start
        _close(self._connection)
        self._connection = self._channel = None
        return result


class Consumer:
    """Consumes `queue` in a background thread, acking each message after recording its id
    (at least once), reconnecting on failures until stopped.

    Example::

        c = Consumer(ep, "q").start(); ...; missing = c.wait_for(ids, seconds=30); c.stop()
    """

    def __init__(self, endpoint: Endpoint, queue: str, heartbeat: int = 5, prefetch: int = 200,
                 max_seconds: float = 900):
        self.endpoint = endpoint
        self.queue = queue
        self.max_seconds = max_seconds  # the loop ends by itself even if stop() is never called
        self.heartbeat = heartbeat
        self.prefetch = prefetch
        self.received: set[int] = set()
        self.deliveries = 0  # duplicates included
        self.reconnects = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"consumer-{queue}", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> Consumer:
        self._thread.start()
        return self

    def _loop(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            connection = None
            try:
                connection = connect(self.endpoint, self.heartbeat)
                channel = connection.channel()
                channel.basic_qos(prefetch_count=self.prefetch)
                declare(channel, self.queue)
                # inactivity_timeout: wake up regularly to see the stop flag
                for method, _props, body in channel.consume(self.queue, inactivity_timeout=0.5):
                    if self._stop.is_set() or time.monotonic() >= deadline:
                        break
                    if method is None:
                        continue
                    with self._lock:
                        self.received.add(int(body))
                        self.deliveries += 1
                    channel.basic_ack(method.delivery_tag)
            except Exception as e:  # noqa: BLE001 - the consumer must outlive any client error; recorded
                self.reconnects += 1
                if len(self.errors) < 20:
                    self.errors.append(_error(e))
                time.sleep(0.2)
            finally:
                _close(connection)

    def wait_for(self, ids, seconds: float = 30.0) -> set[int]:
        """Wait until every id of `ids` was received (bounded); return the ids still missing."""
        wanted = set(ids)
        deadline = time.monotonic() + seconds
        while True:
            with self._lock:
                missing = wanted - self.received
            if not missing or time.monotonic() >= deadline:
                return missing
            time.sleep(0.2)

    def stop(self, seconds: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(seconds)


def delete_queue(endpoint: Endpoint, queue: str) -> None:
    """Delete a check/test queue (ignores a queue that is already gone)."""
    connection = connect(endpoint)
    try:
        connection.channel().queue_delete(queue=queue)
    finally:
        _close(connection)


def quorum_members(status_json: str) -> dict[str, dict]:
    """`rabbitmq-queues quorum_status <queue> --formatter json` -> {node: {"state", "membership", "last", "commit",
    "applied", "term"}}; a member that is down has None numbers (its state is then e.g. ["nodedown", node]).

    >>> quorum_members('[{"Node Name": "rabbit@queue-01", "Raft State": "leader", "Membership": "voter", '
    ...                '"Last Log Index": 14, "Last Written": 14, "Last Applied": 14, "Commit Index": 14, "Term": 1}]')
    {'rabbit@queue-01': {'state': 'leader', 'membership': 'voter', 'last': 14, 'commit': 14, 'applied': 14, 'term': 1}}
    """
    def number(value):
        return value if isinstance(value, int) else None

    return {row["Node Name"]: {"state": row.get("Raft State"), "membership": row.get("Membership"),
                               "last": number(row.get("Last Log Index")), "commit": number(row.get("Commit Index")),
                               "applied": number(row.get("Last Applied")), "term": number(row.get("Term"))}
            for row in json.loads(status_json)}


class Management:
    """Read-only client of the management HTTP API of one node (private network, port 15672).

    Example::

        Management("172.30.0.126", "keybuzz", pw).nodes()[0]["name"]
        # -> 'rabbit@queue-01'
    """

    def __init__(self, host: str, user: str, password, port: int = 15672, timeout: float = 5.0):
        self.base = f"http://{host}:{port}/api"
        self._auth = "Basic " + base64.b64encode(f"{_plain(user)}:{_plain(password)}".encode()).decode()
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"Management({self.base})"

    def get(self, path: str):
        request = urllib.request.Request(self.base + path, headers={"Authorization": self._auth})
        with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310 - http on the private net
            return json.loads(answer.read())

    def nodes(self) -> list[dict]:
        return self.get("/nodes")

    def queue(self, name: str, vhost: str = "/") -> dict:
        return self.get(f"/queues/{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(name, safe='')}")

    def queues(self) -> list[dict]:
        return self.get("/queues")

    def vhosts(self) -> list[dict]:
        return self.get("/vhosts")

    def connection_node(self, name: str) -> str | None:
        """Node holding the client connection called `name` (None: not (yet) listed)."""
        for c in self.get("/connections"):
            if (c.get("client_properties") or {}).get("connection_name") == name:
                return c.get("node")
        return None

    def users(self) -> list[str]:
        """Names of the users (needs the administrator tag; the checks do not rely on it)."""
        return [u["name"] for u in self.get("/users")]


def running_members(api: Management) -> list[str]:
    """Names of the cluster's nodes that are running, as seen by `api`'s node."""
    return sorted(n["name"] for n in api.nodes() if n.get("running"))


def wait_members(apis, count: int, seconds: float) -> list[str]:
    """Wait (bounded) until one of `apis` reports `count` running members; return the last list seen."""
    deadline = time.monotonic() + seconds
    seen: list[str] = []
    while True:
        for api in apis:
            try:
                seen = running_members(api)
            except RETRYABLE + (ValueError,):
                continue
            if len(seen) >= count:
                return seen
        if time.monotonic() >= deadline:
            return seen
        time.sleep(1)


def leader_of(apis, queue: str, vhost: str = "/", seconds: float = 30.0) -> str | None:
    """Node name of the quorum queue's leader (asks each API until one answers; bounded)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for api in apis:
            try:
                leader = api.queue(queue, vhost).get("leader")
            except RETRYABLE + (ValueError,):
                continue
            if leader:
                return leader
        time.sleep(0.5)
    return None


def place_on_node(publisher: ConfirmedPublisher, node: str, apis, attempts: int = 12,
                  list_seconds: float = 20.0) -> str | None:
    """Reconnect `publisher` (through the load balancer) until its connection lands on `node`.

    Used to measure the worst case: the publisher's own connection dies with the leader's node.
    HAProxy balances round robin, so a few attempts suffice; bounded by `attempts`, each waiting at
    most `list_seconds` for the management API to list the connection (its statistics lag a few
    seconds, more on a busy machine). Returns the node the connection is on at the end (== node
    when placed; None if it was never listed).
    """
    where = None
    for _ in range(attempts):
        publisher.open()
        deadline = time.monotonic() + list_seconds
        where = None
        while where is None and time.monotonic() < deadline:
            for api in apis:
                try:
                    where = api.connection_node(publisher.name)
                except RETRYABLE + (ValueError,):
                    continue
                if where:
                    break
            if where is None:
                time.sleep(0.3)
        if where == node:
            return where
        publisher.drop()
    publisher.open()
    return where
