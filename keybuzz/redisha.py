"""Redis HA helpers shared by deploys/redis.py, deploys/haproxy.py, the checks, the tests and the benchmark:
settings, rendering of every Redis/Sentinel/HAProxy file, and the Sentinel majority rule.

One source for every file: the tests start containers from exactly what `render_*` returns here.

Example:
    >>> majority(["10.0.0.21:6379", "10.0.0.21:6379", None], total=3)
    '10.0.0.21:6379'
    >>> majority(["10.0.0.21:6379", "10.0.0.22:6379", None], total=3) is None
    True
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from keybuzz.render import render

MASTER_NAME = "keybuzz-master"
QUORUM = 2
REDIS_PORT = 6379
SENTINEL_PORT = 26379
HAPROXY_STATS_PORT = 8404

# Where things live on the hosts (design: data under /opt/keybuzz/<brick>).
REDIS_ROOT = "/opt/keybuzz/redis"
HAPROXY_ROOT = "/opt/keybuzz/haproxy"
HAPROXY_CONF_DIR = f"{HAPROXY_ROOT}/conf"  # mounted at /usr/local/etc/haproxy (a directory: atomic renames work)
HAPROXY_RUN_DIR = f"{HAPROXY_ROOT}/run"  # master CLI + admin socket, mounted at the same path
CONTAINER_CFG_DIR = "/usr/local/etc/haproxy"
REDIS_ENV_FILE = "/etc/keybuzz/redis.env"
UPDATE_CONF_FILE = "/etc/keybuzz/redis-update-master.conf"


@dataclass(frozen=True)
class RedisSettings:
    """Runtime settings of Redis and Sentinel (group_data/redis.py overrides the production defaults).

    down_after_ms: 5000 in production. Measured (bench/redis_failover.py, README): the write gap is
    about down_after + 1.5-3 s. Below 2 s false failovers appear (fsync stalls with appendfsync
    everysec can block Redis for 2 s); 5 s leaves a margin for an AOF rewrite on a loaded host, at the
    cost of 2 s more per real failover than 3 s.
    """

    down_after_ms: int = 5000
    failover_timeout_ms: int = 60000
    parallel_syncs: int = 1
    # 0 (off), measured: with 1, the new master refuses every write (NOREPLICAS) until a replica has
    # re-synced with it, which added 5 s to most failovers in bench/redis_failover.py. The protection it
    # gives (an isolated master refusing writes after min_replicas_max_lag) starts after the switch anyway,
    # and redis-update-master.sh cuts HAProxy's sessions to the old master at the switch.
    min_replicas_to_write: int = 0
    min_replicas_max_lag: int = 10
    redis_extra: tuple[tuple[str, str], ...] = field(default=())

    def redis_settings(self) -> list[tuple[str, str]]:
        """(name, value) set with CONFIG SET; order kept for the file."""
        return [("min-replicas-to-write", str(self.min_replicas_to_write)),
                ("min-replicas-max-lag", str(self.min_replicas_max_lag)),
                *self.redis_extra]

    def sentinel_settings(self) -> list[tuple[str, str]]:
        """(name, value) set with SENTINEL SET keybuzz-master <name> <value>."""
        return [("down-after-milliseconds", str(self.down_after_ms)),
                ("failover-timeout", str(self.failover_timeout_ms)),
                ("parallel-syncs", str(self.parallel_syncs))]

    @classmethod
    def from_host_data(cls, data) -> RedisSettings:
        """Settings from pyinfra host data (group_data/redis.py), defaults for what it does not set."""
        base = cls()
        return replace(
            base,
            down_after_ms=int(data.get("redis_sentinel_down_after_ms") or base.down_after_ms),
            failover_timeout_ms=int(data.get("redis_sentinel_failover_timeout_ms") or base.failover_timeout_ms),
            min_replicas_to_write=int(data.get("redis_min_replicas_to_write", base.min_replicas_to_write)),
            min_replicas_max_lag=int(data.get("redis_min_replicas_max_lag") or base.min_replicas_max_lag),
        )


# ---------------------------------------------------------------- majority rule (same as the shell script)

def valid_addr(text: str | None) -> bool:
    """'10.0.0.21:6379' -> True; '', '10.0.0:6379', '999.1.1.1:6379', 'x:0' -> False."""
    if not text or text.count(":") != 1:
        return False
    ip, port = text.split(":")
    try:
        ipaddress.IPv4Address(ip)
    except ValueError:
        return False
    return port.isdigit() and 1 <= int(port) <= 65535


def majority(answers: Iterable[str | None], total: int) -> str | None:
    """The address more than half of `total` Sentinels gave, else None (malformed answers never count)."""
    counts = Counter(a for a in answers if valid_addr(a))
    if not counts:
        return None
    addr, n = counts.most_common(1)[0]
    return addr if n >= total // 2 + 1 else None


def ask_sentinels(sentinels: list[str], password: str, timeout: float = 1.0) -> list[str | None]:
    """Each Sentinel's answer to get-master-addr-by-name ('ip:port' or None), in order.

    Example:
        >>> ask_sentinels(["172.30.0.21", "172.30.0.22", "172.30.0.23"], pw)
        ['172.30.0.21:6379', '172.30.0.21:6379', None]
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


# ---------------------------------------------------------------- rendering

def render_redis_conf(hostname: str, bind: str, password: str, settings: RedisSettings,
                      replicaof: str | None) -> str:
    """Bootstrap redis.conf of one node (`replicaof`: master IP, None for the first master)."""
    return render("redis/redis.conf.j2", hostname=hostname, bind=bind, password=password,
                  settings=settings.redis_settings(), replicaof=replicaof)


def render_sentinel_conf(hostname: str, bind: str, password: str, settings: RedisSettings, master_ip: str) -> str:
    """Bootstrap sentinel.conf of one node, monitoring `master_ip`."""
    return render("redis/sentinel.conf.j2", hostname=hostname, bind=bind, password=password,
                  master_name=MASTER_NAME, master_ip=master_ip, quorum=QUORUM,
                  sentinel_settings=settings.sentinel_settings())


def render_settings_file(settings: RedisSettings) -> str:
    """Non-secret list of runtime settings read by keybuzz-redis-settings (`redis|sentinel name value`)."""
    lines = [f"redis {n} {v}" for n, v in settings.redis_settings()]
    lines += [f"sentinel {n} {v}" for n, v in settings.sentinel_settings()]
    lines.append(f"sentinel quorum {QUORUM}")
    return "# Managed by keybuzz-infra: runtime settings applied by keybuzz-redis-settings\n" + "\n".join(lines) + "\n"


def render_haproxy_cfg(hostname: str, private_ip: str, redis_master: str, db: list[tuple[str, str]],
                       rabbitmq: list[tuple[str, str]], private_network: str | None = None,
                       run_dir: str = HAPROXY_RUN_DIR) -> str:
    """haproxy.cfg of one HAProxy node; `redis_master` is 'ip:6379'.

    `private_network` (who may open the stats page) defaults to the /24 of `private_ip`.
    """
    if not valid_addr(redis_master):
        raise ValueError(f"redis master address {redis_master!r} is not ip:port")
    network = private_network or str(ipaddress.ip_network(f"{private_ip}/24", strict=False))
    return render("haproxy/haproxy.cfg.j2", hostname=hostname, private_ip=private_ip, redis_master=redis_master,
                  db=db, rabbitmq=rabbitmq, private_network=network, stats_port=HAPROXY_STATS_PORT,
                  run_dir=run_dir)


def render_update_conf(sentinels: list[str], redis_nodes: list[str], **overrides: str) -> str:
    """/etc/keybuzz/redis-update-master.conf (no secret): what the update and watch scripts need.

    Example:
        >>> render_update_conf(["10.0.0.21"], ["10.0.0.21"], HAPROXY_RELOAD_CMD="kill -USR2 1")
    """
    values = {
        "SENTINELS": " ".join(sentinels),
        "REDIS_NODES": " ".join(redis_nodes),
        "MASTER_NAME": MASTER_NAME,
        "SENTINEL_PORT": str(SENTINEL_PORT),
        "HAPROXY_CFG": f"{HAPROXY_CONF_DIR}/haproxy.cfg",
        "HAPROXY_MASTER_SOCKET": f"{HAPROXY_RUN_DIR}/master.sock",
        "REDIS_ENV_FILE": REDIS_ENV_FILE,
        **overrides,
    }
    return render("haproxy/redis-update-master.conf.j2", values=values)


def env_file(password: str) -> str:
    """Content of redis.env on a host (0600 root): the standard variable name of §H.3."""
    if "'" in password or "\n" in password:
        raise ValueError("REDIS_PASSWORD must not contain a quote or a newline")
    return f"REDIS_PASSWORD='{password}'\n"


# ---------------------------------------------------------------- runtime drift (read-only, from the deploy machine)

class PasswordMismatch(RuntimeError):
    """REDIS_PASSWORD of redis.env is not the one the running cluster uses (rotation is a manual procedure)."""


def _client(ip: str, port: int, password: str, timeout: float):
    import redis

    return redis.Redis(host=ip, port=port, password=password, socket_timeout=timeout,
                       socket_connect_timeout=timeout, decode_responses=True)


def redis_drift(ip: str, password: str, settings: RedisSettings, timeout: float = 2.0) -> list[str] | None:
    """Names of the Redis settings whose running value differs on `ip`; None when it does not answer.

    Example:
        >>> redis_drift("172.30.0.21", pw, RedisSettings())
        []
    """
    import redis

    client = _client(ip, REDIS_PORT, password, timeout)
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

    client = _client(ip, SENTINEL_PORT, password, timeout)
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

    Example:
        >>> probe = WriteProbe("172.30.0.10", 6379, pw).start(); ...; probe.stop()
        >>> probe.gap_after(t_kill)
        5.12
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
