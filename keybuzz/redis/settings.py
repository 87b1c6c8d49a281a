"""Settings of the Redis layer (design §C): ports, paths, defaults, and pure rendering of every Redis and
Sentinel file. One source: deploys and testbeds start Redis from exactly what these functions return.

    >>> majority(["10.0.0.21:6379", "10.0.0.21:6379", None], total=3)
    '10.0.0.21:6379'
    >>> majority(["10.0.0.21:6379", "10.0.0.22:6379", None], total=3) is None
    True
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

from keybuzz.render import render

MASTER_NAME = "keybuzz-master"
QUORUM = 2
REDIS_PORT = 6379
SENTINEL_PORT = 26379
OPEN_PORTS = ("tcp/6379", "tcp/26379")  # to the private network (base OS firewall)
UID, GID = "999", "1000"  # the redis user of the official image (and of the lab image)

# Where things live on the hosts (design: data under /opt/keybuzz/<brick>).
REDIS_ROOT = "/opt/keybuzz/redis"
REDIS_ENV_FILE = "/etc/keybuzz/redis.env"
SETTINGS_TOOL = "/usr/local/sbin/keybuzz-redis-settings"


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
        """Settings from pyinfra host data: `redis_<field>` in group_data/redis.py overrides a default above.

        A value given (0 included) is used as given; an absent one keeps the default.

        >>> RedisSettings.from_host_data({"redis_min_replicas_to_write": 0, "redis_down_after_ms": 3000})
        RedisSettings(down_after_ms=3000, failover_timeout_ms=60000, parallel_syncs=1, min_replicas_to_write=0, \
min_replicas_max_lag=10, redis_extra=())
        """
        given = {f.name: int(data.get(f"redis_{f.name}")) for f in fields(cls)
                 if f.type == "int" and data.get(f"redis_{f.name}") is not None}
        return cls(**given)



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


def env_file(password: str) -> str:
    """Content of redis.env on a host (0600 root): the standard variable name of §H.3."""
    if "'" in password or "\n" in password:
        raise ValueError("REDIS_PASSWORD must not contain a quote or a newline")
    return f"REDIS_PASSWORD='{password}'\n"


def render_haproxy_block(nodes: list[tuple[str, str]], redis_master: str, **_runtime) -> str:
    """This layer's frontend and backend in haproxy.cfg: be_redis_master exactly as design §C.

    >>> "server redis-master 10.0.0.21:6379 check" in render_haproxy_block([], redis_master="10.0.0.21:6379")
    True
    """
    if not valid_addr(redis_master):
        raise ValueError(f"redis master address {redis_master!r} is not ip:port")
    return render("redis/haproxy.cfg.j2", redis_master=redis_master)
