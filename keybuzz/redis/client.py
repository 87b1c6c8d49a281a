"""Talks to a running Redis HA cluster from the install host (deploys, checks, tests, bench): the Sentinels'
majority, runtime drift of the settings, and a write probe that measures gaps and losses.

    client = no_retry_client("172.30.0.10", 6379, logins["app"])   # through the LB: fails fast, never retries
"""

from __future__ import annotations

from dataclasses import dataclass

from keybuzz.redis.settings import (
    MASTER_NAME,
    QUORUM,
    REDIS_PORT,
    SENTINEL_PORT,
    Login,
    RedisSettings,
    majority,
    valid_addr,
)

UNKNOWN = "unknown"  # reached, and monitors no keybuzz-master (yet)
CLOSED = "closed"  # nothing listens on the Sentinel port (refused): not installed, or stopped
REFUSED_LOGIN = "refused login"  # the Sentinel refuses the login: a wrong password, or a pre-ACL cluster


def sentinel_replies(sentinels: list[str], login: Login, timeout: float = 1.0) -> list[str]:
    """What each Sentinel says of keybuzz-master, in order: 'ip:port', UNKNOWN, CLOSED, REFUSED_LOGIN or
    'error: <kind>' (timeout, unreachable, malformed reply): never guessed, so a caller can tell a first install
    from a cluster it cannot see.

    Example::

        sentinel_replies(["172.30.0.21", "172.30.0.22", "172.30.0.23"], logins["admin"])
        # -> ['172.30.0.21:6379', '172.30.0.21:6379', 'error: TimeoutError']
    """
    import redis  # imported here: pyinfra hosts do not need it, only the machine running checks/deploys

    replies: list[str] = []
    for s in sentinels:
        host, _, port = s.partition(":")
        client = redis.Redis(host=host, port=int(port or SENTINEL_PORT), username=login.user,
                             password=login.password, socket_timeout=timeout, socket_connect_timeout=timeout,
                             decode_responses=True)
        try:
            reply = client.execute_command("SENTINEL", "get-master-addr-by-name", MASTER_NAME)
            addr = f"{reply[0]}:{reply[1]}" if reply and len(reply) == 2 else None
            replies.append(addr if valid_addr(addr) else UNKNOWN if reply is None else "error: malformed reply")
        except redis.AuthenticationError:
            replies.append(REFUSED_LOGIN)
        except redis.ConnectionError as e:
            refused = isinstance(e.__cause__ or e.__context__, ConnectionRefusedError) or "refused" in str(e)
            replies.append(CLOSED if refused else f"error: {type(e).__name__}")
        except (redis.RedisError, OSError, TypeError, IndexError) as e:
            replies.append(f"error: {type(e).__name__}")
        finally:
            client.close()
    return replies


def ask_sentinels(sentinels: list[str], login: Login, timeout: float = 1.0) -> list[str | None]:
    """Each Sentinel's answer to get-master-addr-by-name ('ip:port' or None), in order."""
    return [r if valid_addr(r) else None for r in sentinel_replies(sentinels, login, timeout)]


def sentinel_master(sentinels: list[str], login: Login, timeout: float = 1.0) -> str | None:
    """'ip:port' of the master a majority of `sentinels` agrees on, else None."""
    return majority(ask_sentinels(sentinels, login, timeout), len(sentinels))



class PasswordMismatch(RuntimeError):
    """A login of redis.env is not one the running cluster accepts (rotation is a manual procedure)."""


def connect(ip: str, port: int, login: Login, timeout: float = 2.0):
    """A redis client with short timeouts (retries as redis-py does by default)."""
    import redis

    return redis.Redis(host=ip, port=port, username=login.user, password=login.password, socket_timeout=timeout,
                       socket_connect_timeout=timeout, decode_responses=True)


def _refused(what: str, ip: str, login: Login) -> str:
    return f"{what} on {ip} refuses the {login.user or 'default'} login of redis.env"


def redis_drift(ip: str, login: Login, settings: RedisSettings, timeout: float = 2.0) -> list[str] | None:
    """Names of the Redis settings whose running value differs on `ip`; None when it does not answer.

    Example::

        redis_drift("172.30.0.21", logins["admin"], RedisSettings())
        # -> []
    """
    import redis

    client = connect(ip, REDIS_PORT, login, timeout)
    try:
        return [name for name, value in settings.redis_settings()
                if client.config_get(name).get(name) != value]
    except redis.AuthenticationError as e:
        raise PasswordMismatch(_refused("Redis", ip, login)) from e
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()


def sentinel_drift(ip: str, login: Login, settings: RedisSettings, timeout: float = 2.0) -> list[str] | None:
    """Names of the Sentinel settings (and quorum) that differ on the Sentinel of `ip`; None when it does not
    answer or does not monitor keybuzz-master yet."""
    import redis

    client = connect(ip, SENTINEL_PORT, login, timeout)
    try:
        reply = client.execute_command("SENTINEL", "MASTER", MASTER_NAME)
        fields = dict(zip(reply[::2], reply[1::2], strict=False)) if isinstance(reply, list) else dict(reply)
        wanted = [*settings.sentinel_settings(), ("quorum", str(QUORUM))]
        return [name for name, value in wanted if str(fields.get(name)) != value]
    except redis.AuthenticationError as e:
        raise PasswordMismatch(_refused("Sentinel", ip, login)) from e
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()


@dataclass(frozen=True)
class ClusterView:
    """What the Sentinels say, seen from the deploy machine: `master` ('ip') if a majority agrees, and every
    Sentinel's reply (sentinel_replies).

    >>> ClusterView(None, ("unknown", "closed", "unknown")).first_install
    True
    >>> ClusterView(None, ("unknown", "error: TimeoutError", "unknown")).first_install  # one it cannot see
    False
    >>> ClusterView(None, ("refused login", "unknown", "unknown")).refused_login
    True
    """

    master: str | None
    replies: tuple[str, ...]

    @property
    def first_install(self) -> bool:
        """No Sentinel knows keybuzz-master, and every one was reached (UNKNOWN) or has nothing listening
        (CLOSED: not installed yet); a timeout, an unreachable host or a refused login is never a first install."""
        return all(r in (UNKNOWN, CLOSED) for r in self.replies)

    @property
    def refused_login(self) -> bool:
        return REFUSED_LOGIN in self.replies

    def summary(self) -> str:
        return ", ".join(self.replies)


def cluster_view(sentinel_ips: list[str], login: Login) -> ClusterView:
    """Ask every Sentinel once (read-only)."""
    replies = sentinel_replies(sentinel_ips, login)
    addr = majority(replies, len(sentinel_ips))
    return ClusterView(addr.split(":")[0] if addr else None, tuple(replies))


# ---------------------------------------------------------------- client-side probes (checks, tests, bench)

def no_retry_client(host: str, port: int, login: Login, timeout: float = 0.5):
    """A redis client that fails fast and never retries by itself: a probe must see every failure."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(host=host, port=port, username=login.user, password=login.password, socket_timeout=timeout,
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

        probe = WriteProbe("172.30.0.10", 6379, logins["app"]).start(); ...; probe.stop()
        probe.gap_after(t_kill)
        # -> 5.12
    """

    def __init__(self, host: str, port: int, login: Login, interval: float = 0.02, wait: bool = True,
                 wait_ms: int = 200, prefix: str = "keybuzz:probe:", ttl: int = 600, max_seconds: float = 300):
        import threading

        self.host, self.port, self.login = host, port, login
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
        return no_retry_client(self.host, self.port, self.login)

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

