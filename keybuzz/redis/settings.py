"""Settings of the Redis layer (design §C): ports, paths, defaults, and pure rendering of every Redis and
Sentinel file. One source: deploys and testbeds start Redis from exactly what these functions return.

    >>> majority(["10.0.0.21:6379", "10.0.0.21:6379", None], total=3)
    '10.0.0.21:6379'
    >>> majority(["10.0.0.21:6379", "10.0.0.22:6379", None], total=3) is None
    True
"""

from __future__ import annotations

import hashlib
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
# what the base OS layer waits for after restarting dockerd here (keybuzz.layers.host_ready_commands)
HOST_READY = f"[ ! -x {SETTINGS_TOOL} ] || {{ {SETTINGS_TOOL} wait-synced && {SETTINGS_TOOL} wait-sentinel; }}"
ACL_FILE = "users.acl"  # in conf/ (Redis, /conf) and sentinel/ (Sentinel, /sentinel): ACL LOAD re-reads it
# The start gate (issue 10 §2): before each start of redis.service it asks the Sentinels and writes
# conf/replication.conf, which the command line includes after redis.conf (its `replicaof` wins).
START_GATE = "/usr/local/sbin/keybuzz-redis-start-gate"
START_GATE_CONF = "/etc/keybuzz/redis-start-gate.conf"
REPLICATION_INCLUDE = "replication.conf"
REDIS_COMMAND = f"redis-server /conf/redis.conf --include /conf/{REPLICATION_INCLUDE}"


# ---------------------------------------------------------------- who may do what (ACL users)

@dataclass(frozen=True)
class Login:
    """What a client authenticates with: an ACL user (None: Redis's `default` user) and its password.

    >>> Login("keybuzz-admin", "s3cret")
    Login(user='keybuzz-admin', password=***)
    """

    user: str | None
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Login(user={self.user!r}, password=***)"


# Each user does one job; the variables are in credentials/redis.env (brick `redis`, §H.3 names).
#   app          Redis's `default` user = REDIS_PASSWORD: the applications' connection string through
#                10.0.0.10:6379 stays `redis://:REDIS_PASSWORD@10.0.0.10:6379`. Data commands only: no
#                @admin / @dangerous (CONFIG, REPLICAOF, FLUSHALL, FLUSHDB, SHUTDOWN, DEBUG, KEYS, MONITOR,
#                CLIENT KILL, ACL ...), INFO given back (ioredis' ready check, Sidekiq and BullMQ read it).
#   admin        everything: install-01's deploys and checks, keybuzz-redis-settings on the Redis nodes.
#   replication  replicas -> master (masteruser/masterauth): PSYNC, REPLCONF, PING.
#   sentinel     Sentinel -> Redis (what Redis's Sentinel documentation lists) and Sentinel <-> Sentinel.
#   haproxy      the HAProxy hosts: ROLE on Redis; on Sentinel get-master-addr-by-name and +switch-master.
ROLES = ("app", "admin", "replication", "sentinel", "haproxy")
_VARS = {"app": (None, "REDIS_PASSWORD"), "admin": ("REDIS_ADMIN_USER", "REDIS_ADMIN_PASSWORD"),
         "replication": ("REDIS_REPLICATION_USER", "REDIS_REPLICATION_PASSWORD"),
         "sentinel": ("REDIS_SENTINEL_USER", "REDIS_SENTINEL_PASSWORD"),
         "haproxy": ("REDIS_HAPROXY_USER", "REDIS_HAPROXY_PASSWORD")}
APP_RULES = "~* &* +@all -@dangerous +info"
_REDIS_RULES = {
    "admin": "~* &* +@all",
    "replication": "resetchannels -@all +psync +replconf +ping",
    "sentinel": "allchannels -@all +multi +slaveof +ping +exec +subscribe +config|rewrite +role +publish +info "
                "+client|setname +client|kill +script|kill",
    "haproxy": "resetchannels -@all +role +ping",
}
_SENTINEL_RULES = {
    "admin": "~* &* +@all",
    "sentinel": "~* &* +@all",  # its peers: hello messages, elections, INFO, failover coordination
    "haproxy": "resetchannels &+switch-master -@all +ping +subscribe +sentinel|get-master-addr-by-name",
}


def logins(secrets) -> dict[str, Login]:
    """role -> Login, from the `redis` brick (values may be pyinfra HiddenValue-like: `.unmask()` is used if
    present).

    >>> logins({"REDIS_PASSWORD": "a", "REDIS_ADMIN_USER": "adm", "REDIS_ADMIN_PASSWORD": "b",
    ...         "REDIS_REPLICATION_USER": "rep", "REDIS_REPLICATION_PASSWORD": "c", "REDIS_SENTINEL_USER": "sen",
    ...         "REDIS_SENTINEL_PASSWORD": "d", "REDIS_HAPROXY_USER": "hap", "REDIS_HAPROXY_PASSWORD": "e"})["admin"]
    Login(user='adm', password=***)
    """
    def plain(v) -> str:
        return v.unmask() if hasattr(v, "unmask") else str(v)
    return {role: Login(plain(secrets[u]) if u else None, plain(secrets[p])) for role, (u, p) in _VARS.items()}


def _acl_line(user: str, password: str, rules: str) -> str:
    # only the SHA-256 of the password goes into the file (`#<hex>`): the file never holds a password
    return f"user {user} on #{hashlib.sha256(password.encode()).hexdigest()} {rules}"


def render_redis_acl(users: dict[str, Login], app_rules: str = APP_RULES) -> str:
    """users.acl of every Redis node (loaded at start by `aclfile`, again by ACL LOAD when it changes).

    >>> print(render_redis_acl({"app": Login(None, "a"), "admin": Login("adm", "b"), "replication": Login("rep", "c"),
    ...                         "sentinel": Login("sen", "d"), "haproxy": Login("hap", "e")}))  # doctest: +ELLIPSIS
    user default on #ca978112... ~* &* +@all -@dangerous +info
    user adm on #3e23e816... ~* &* +@all
    user rep on #2e7d2c03... resetchannels -@all +psync +replconf +ping
    user sen on #18ac3e73... allchannels -@all +multi +slaveof ... +script|kill
    user hap on #3f79bb7b... resetchannels -@all +role +ping
    """
    lines = [_acl_line("default", users["app"].password, app_rules)]
    lines += [_acl_line(users[role].user, users[role].password, rules) for role, rules in _REDIS_RULES.items()]
    return "\n".join(lines) + "\n"


def render_sentinel_acl(users: dict[str, Login]) -> str:
    """users.acl of every Sentinel: the applications' `default` user is off there.

    >>> render_sentinel_acl({"admin": Login("adm", "b"), "sentinel": Login("sen", "d"),
    ...                      "haproxy": Login("hap", "e")}).splitlines()[0]
    'user default off'
    """
    lines = ["user default off"]
    lines += [_acl_line(users[role].user, users[role].password, rules) for role, rules in _SENTINEL_RULES.items()]
    return "\n".join(lines) + "\n"


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

def render_redis_conf(hostname: str, bind: str, replication: Login, settings: RedisSettings,
                      replicaof: str | None) -> str:
    """Bootstrap redis.conf of one node (`replicaof`: master IP, None for the first master); users come from
    /conf/users.acl."""
    return render("redis/redis.conf.j2", hostname=hostname, bind=bind, replication=replication,
                  acl_file=f"/conf/{ACL_FILE}", settings=settings.redis_settings(), replicaof=replicaof)


def render_sentinel_conf(hostname: str, bind: str, sentinel: Login, settings: RedisSettings, master_ip: str) -> str:
    """Bootstrap sentinel.conf of one node, monitoring `master_ip`; users come from /sentinel/users.acl."""
    return render("redis/sentinel.conf.j2", hostname=hostname, bind=bind, sentinel=sentinel,
                  acl_file=f"/sentinel/{ACL_FILE}", master_name=MASTER_NAME, master_ip=master_ip, quorum=QUORUM,
                  sentinel_settings=settings.sentinel_settings())


def render_settings_file(settings: RedisSettings) -> str:
    """Non-secret list of runtime settings read by keybuzz-redis-settings (`redis|sentinel name value`)."""
    lines = [f"redis {n} {v}" for n, v in settings.redis_settings()]
    lines += [f"sentinel {n} {v}" for n, v in settings.sentinel_settings()]
    lines.append(f"sentinel quorum {QUORUM}")
    return "# Managed by keybuzz-infra: runtime settings applied by keybuzz-redis-settings\n" + "\n".join(lines) + "\n"


def render_start_gate_conf(sentinels: list[str], me: str, image: str, root: str = REDIS_ROOT,
                           **overrides: str) -> str:
    """Settings of keybuzz-redis-start-gate (no secret: the login comes from redis.env).

    >>> print(render_start_gate_conf(["10.0.0.21"], "10.0.0.21", "redis:7.2.5-alpine"))  # doctest: +ELLIPSIS
    # Managed by keybuzz-infra: settings of keybuzz-redis-start-gate (no secret)
    SENTINELS="10.0.0.21"
    ME="10.0.0.21"
    IMAGE="redis:7.2.5-alpine"
    OUT="/opt/keybuzz/redis/conf/replication.conf"
    DATA_DIR="/opt/keybuzz/redis/data"
    ...
    """
    values = {"SENTINELS": " ".join(sentinels), "ME": me, "IMAGE": image, "OUT": f"{root}/conf/{REPLICATION_INCLUDE}",
              "DATA_DIR": f"{root}/data", "MASTER_NAME": MASTER_NAME, "SENTINEL_PORT": str(SENTINEL_PORT),
              "REDIS_ENV_FILE": REDIS_ENV_FILE, "GATE_WAIT": "60", **overrides}
    for name, value in values.items():
        if '"' in value or "\n" in value or "$" in value or "`" in value:
            raise ValueError(f"{name} of the start gate must not contain a quote, $, ` or a newline")
    return ("# Managed by keybuzz-infra: settings of keybuzz-redis-start-gate (no secret)\n"
            + "".join(f'{name}="{value}"\n' for name, value in values.items()))


def env_file(login: Login, role: str) -> str:
    """Content of redis.env on a host (0600 root): the ONE login its role uses, as REDIS_<ROLE>_USER/_PASSWORD
    (§H.3 names) — the Redis nodes get the admin login (keybuzz-redis-settings), the HAProxy hosts theirs.

    >>> env_file(Login("keybuzz-haproxy", "pw"), "haproxy")
    "REDIS_HAPROXY_USER='keybuzz-haproxy'\\nREDIS_HAPROXY_PASSWORD='pw'\\n"
    """
    user_var, password_var = _VARS[role]
    if not user_var:
        raise ValueError("no host holds the applications' REDIS_PASSWORD")
    for value in (login.user or "", login.password):
        if "'" in value or "\n" in value:
            raise ValueError(f"{user_var} / {password_var} must not contain a quote or a newline")
    return f"{user_var}='{login.user}'\n{password_var}='{login.password}'\n"


def render_haproxy_block(nodes: list[tuple[str, str]], redis_master: str, **_runtime) -> str:
    """This layer's frontend and backend in haproxy.cfg: be_redis_master exactly as design §C.

    >>> "server redis-master 10.0.0.21:6379 check" in render_haproxy_block([], redis_master="10.0.0.21:6379")
    True
    """
    if not valid_addr(redis_master):
        raise ValueError(f"redis master address {redis_master!r} is not ip:port")
    return render("redis/haproxy.cfg.j2", redis_master=redis_master)
