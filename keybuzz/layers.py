"""The layers, in the design's order (§G: base OS -> DB -> Redis -> RabbitMQ -> MinIO -> MariaDB -> K3s).

Each layer names the roles whose hosts it touches, the roles whose addresses it renders into
configs, and the credential bricks its hosts receive (§H.2: only what their role needs).

Example:
    >>> LAYERS["redis"].deploy
    'deploys/redis.py'
    >>> [layer.name for layer in ordered()]
    ['base_os', 'db', 'redis', 'rabbitmq', 'haproxy', 'minio', 'mariadb', 'proxysql', 'k3s']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from keybuzz import ROOT
from keybuzz.servers import ROLES


@dataclass(frozen=True)
class Layer:
    name: str
    roles: tuple[str, ...]  # hosts it deploys to
    bricks: tuple[str, ...] = ()  # credentials its hosts receive
    renders: tuple[str, ...] = ()  # other roles whose addresses go into its configs
    check: str | None = None  # module in keybuzz.checks with diag/failover/perf
    help: str = ""
    follows: tuple[str, ...] = field(default=())

    @property
    def deploy(self) -> str:
        return f"deploys/{self.name}.py"

    def exists(self) -> bool:
        return (ROOT / self.deploy).is_file()


_ALL_ROLES = tuple(r for r in ROLES if r != "install")

# Order matters: `invoke all` runs them top to bottom. HAProxy comes right after what it fronts
# (DB, Redis, RabbitMQ), as the design puts "HAProxy with what it fronts".
LAYERS: dict[str, Layer] = {layer.name: layer for layer in (
    Layer("base_os", _ALL_ROLES, help="Docker Engine, time sync, sysctls, data dirs, name resolution"),
    Layer("db", ("db",), ("postgres",), help="PostgreSQL + Patroni + PgBouncer"),
    Layer("redis", ("redis",), ("redis",), check="redis", help="Redis + Sentinel x3, master keybuzz-master"),
    Layer("rabbitmq", ("rabbitmq",), ("rabbitmq",), check="rabbitmq", help="RabbitMQ quorum cluster x3"),
    Layer("haproxy", ("haproxy",), ("redis",), renders=("db", "redis", "rabbitmq"), check="haproxy",
          help="HAProxy x2: 5432, 6432, 6379 (Redis master), 5672 (RabbitMQ)"),
    Layer("minio", ("minio",), ("minio",), help="MinIO distributed x3"),
    Layer("mariadb", ("mariadb",), ("mariadb",), help="MariaDB Galera"),
    Layer("proxysql", ("proxysql",), ("proxysql", "mariadb"), renders=("mariadb",), help="ProxySQL x2"),
    Layer("k3s", ("k3s_masters", "k3s_workers"), ("k3s",), help="K3s 3 masters + 5 workers, ingress"),
)}


def ordered() -> list[Layer]:
    """All layers in deployment order."""
    return list(LAYERS.values())


def from_deploy_path(path: str) -> Layer | None:
    """The layer whose deploy file is `path` (any spelling of deploys/<name>.py), else None."""
    p = Path(path)
    if p.suffix == ".py" and p.parent.name == "deploys":
        return LAYERS.get(p.stem)
    return None
