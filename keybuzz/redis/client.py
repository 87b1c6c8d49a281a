"""Talks to a running Redis HA cluster from the install host (deploys, checks, tests, bench): the Sentinels'
majority, runtime drift of the settings, and a write probe that measures gaps and losses.

    client = no_retry_client("172.30.0.10", 6379, password)   # through the LB: fails fast, never retries
"""

from __future__ import annotations

from dataclasses import dataclass

from keybuzz.redis.settings import (
    MASTER_NAME,
    QUORUM,
    REDIS_PORT,
    SENTINEL_PORT,
    RedisSettings,
    majority,
    valid_addr,
)


def ask_sentinels(sentinels: list[str], password: str, timeout: float = 1.0) -> list[str | None]:
    """Each Sentinel's answer to get-master-addr-by-name ('ip:port' or None), in order.

    Example::

        ask_sentinels(["172.30.0.21", "172.30.0.22", "172.30.0.23"], pw)
        # -> ['172.30.0.21:6379', '172.30.0.21:6379', None]
    """
    import redis  # imported here: pyinfra hosts do not need it, only the machine running checks/deploys

    answers: list[str | None] = []
    for s in sentinels:
        host, _, port = s.partition(":")
        client = redis.Redis(host=host, port=int(port or SENTINEL_PORT), password=password,
                             socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True)
        try:
            reply = client.execute_command("SENTINEL", "get-master-addr-by-name", MASTER_NAME)
            answers.append(f"{reply[0]}:{reply[1]}" if reply and len(reply) == 2 else None)
        except (redis.RedisError, OSError, TypeError, IndexError):
            answers.append(None)
        finally:
            client.close()
    return answers


def sentinel_master(sentinels: list[str], password: str, timeout: float = 1.0) -> str | None:
    """'ip:port' of the master a majority of `sentinels` agrees on, else None."""
    return majority(ask_sentinels(sentinels, password, timeout), len(sentinels))



class PasswordMismatch(RuntimeError):
    """REDIS_PASSWORD of redis.env is not the one the running cluster uses (rotation is a manual procedure)."""


def connect(ip: str, port: int, password: str, timeout: float = 2.0):
    """A redis client with short timeouts (retries as redis-py does by default)."""
    import redis

    return redis.Redis(host=ip, port=port, password=password, socket_timeout=timeout,
                       socket_connect_timeout=timeout, decode_responses=True)


def redis_drift(ip: str, password: str, settings: RedisSettings, timeout: float = 2.0) -> list[str] | None:
    """Names of the Redis settings whose running value differs on `ip`; None when it does not answer.

    Example::

        redis_drift("172.30.0.21", pw, RedisSettings())
        # -> []
    """
    import redis

    client = connect(ip, REDIS_PORT, password, timeout)
    try:
        return [name for name, value in settings.redis_settings()
                if client.config_get(name).get(name) != value]
    except redis.AuthenticationError as e:
        raise PasswordMismatch(f"Redis on {ip} refuses REDIS_PASSWORD of redis.env") from e
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()


def sentinel_drift(ip: str, password: str, settings: RedisSettings, timeout: float = 2.0) -> list[str] | None:
    """Names of the Sentinel settings (and quorum) that differ on the Sentinel of `ip`; None when it does not
    answer or does not monitor keybuzz-master yet."""
    import redis

    client = connect(ip, SENTINEL_PORT, password, timeout)
    try:
        reply = client.execute_command("SENTINEL", "MASTER", MASTER_NAME)
        fields = dict(zip(reply[::2], reply[1::2], strict=False)) if isinstance(reply, list) else dict(reply)
        wanted = [*settings.sentinel_settings(), ("quorum", str(QUORUM))]
        return [name for name, value in wanted if str(fields.get(name)) != value]
    except redis.AuthenticationError as e:
        raise PasswordMismatch(f"Sentinel on {ip} refuses REDIS_PASSWORD of redis.env") from e
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()


@dataclass(frozen=True)
class ClusterView:
    """What the Sentinels say, seen from the deploy machine: `master` ('ip') if a majority agrees;
    `answered` = how many gave any valid address (0 on a fresh install)."""

    master: str | None
    answered: int


def cluster_view(sentinel_ips: list[str], password: str) -> ClusterView:
    """Ask every Sentinel once (read-only)."""
    answers = ask_sentinels(sentinel_ips, password)
    addr = majority(answers, len(sentinel_ips))
    return ClusterView(addr.split(":")[0] if addr else None, sum(1 for a in answers if valid_addr(a)))


# ---------------------------------------------------------------- client-side probes (checks, tests, bench)

def no_retry_client(host: str, port: int, password: str, timeout: float = 0.5):
    """A redis client that fails fast and never retries by itself: a probe must see every failure."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(host=host, port=port, password=password, socket_timeout=timeout,
                       socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0), decode_responses=True)


@dataclass
class Write:
    t: float  # time.monotonic() when the reply came
    key: str
    ok: bool
    replicated: bool = False  # WAIT 1 confirmed a replica has it
    error: str = ""  # the failure, for diagnosis (never contains a secret: Redis error text or exception type)


class WriteProbe:
    """Writes `prefix<n>` through `host:port` every `interval` s in a thread (bounded by `max_seconds`).

    With `wait=True` each SET is followed by `WAIT 1 <wait_ms>` in the same round trip: a write counts as
    acknowledged-and-replicated only if a replica confirmed it. Keys expire after `ttl` s (safe in production).

    Example::

        probe = WriteProbe("172.30.0.10", 6379, pw).start(); ...; probe.stop()
        probe.gap_after(t_kill)
        # -> 5.12
    """

    def __init__(self, host: str, port: int, password: str, interval: float = 0.02, wait: bool = True,
                 wait_ms: int = 200, prefix: str = "keybuzz:probe:", ttl: int = 600, max_seconds: float = 300):
        import threading

        self.host, self.port, self.password = host, port, password
        self.interval, self.wait, self.wait_ms = interval, wait, wait_ms
        self.prefix, self.ttl, self.max_seconds = prefix, ttl, max_seconds
        self.writes: list[Write] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> WriteProbe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _connect(self):
        """The client the probe writes with (overridden by a probe that asks Sentinel for the master)."""
        return no_retry_client(self.host, self.port, self.password)

    def _loop(self) -> None:
        import time

        import redis

        client = self._connect()
        deadline = time.monotonic() + self.max_seconds
        n = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            key = f"{self.prefix}{n}"
            n += 1
            try:
                pipe = client.pipeline(transaction=False)
                pipe.set(key, "1", ex=self.ttl)
                if self.wait:
                    pipe.execute_command("WAIT", 1, self.wait_ms)
                replies = pipe.execute()
                self.writes.append(Write(time.monotonic(), key, True, bool(self.wait and replies[1] >= 1)))
            except (redis.RedisError, OSError) as e:
                self.writes.append(Write(time.monotonic(), key, False, error=f"{type(e).__name__}: {e}"[:80]))
                client.close()
                client = self._connect()
            self._stop.wait(self.interval)
        client.close()

    def gap_after(self, t0: float) -> float | None:
        """Seconds from the last acknowledged write before `t0` to the first one after it (None: none after)."""
        before = [w.t for w in self.writes if w.ok and w.t <= t0]
        after = [w.t for w in self.writes if w.ok and w.t > t0]
        if not after:
            return None
        return after[0] - (before[-1] if before else t0)

    def gap(self, t_kill: float, t_dead: float) -> float | None:
        """Seconds from the last acknowledged write before `t_kill` to the first one after `t_dead` (the moment
        the killed node was seen gone: a write in flight during the kill does not count as a resumption)."""
        before = [w.t for w in self.writes if w.ok and w.t <= t_kill]
        after = [w.t for w in self.writes if w.ok and w.t > t_dead]
        if not after:
            return None
        return after[0] - (before[-1] if before else t_kill)

    def resumed_after(self, t0: float) -> float | None:
        """Seconds from `t0` (e.g. the kill) to the first acknowledged write after it."""
        after = [w.t for w in self.writes if w.ok and w.t > t0]
        return after[0] - t0 if after else None

    def lost(self, client) -> tuple[int, int, int, int]:
        """(lost replicated, replicated, lost plain, plain): acknowledged writes missing on `client`'s node."""
        ok = [w for w in self.writes if w.ok]
        present = client.mget([w.key for w in ok]) if ok else []
        missing = [w for w, v in zip(ok, present, strict=True) if v is None]
        repl = [w for w in ok if w.replicated]
        return (sum(1 for w in missing if w.replicated), len(repl),
                sum(1 for w in missing if not w.replicated), len(ok) - len(repl))

