"""The layer table, in the design's order (§G: base OS -> DB -> Redis -> RabbitMQ -> MinIO -> MariaDB -> K3s).

Each row names the roles whose hosts the layer touches, the credential bricks its hosts receive (§H.2:
only what their role needs), the roles whose addresses it renders into configs, and its directory under
/opt/keybuzz. A layer is this row plus deploys/<name>.py, templates/<name>/ and the package
keybuzz/<name>/ (settings, client, check, testbed): adding one touches nothing else.

    >>> LAYERS["redis"].deploy
    'deploys/redis.py'
    >>> [layer.name for layer in ordered()]
    ['base_os', 'db', 'redis', 'rabbitmq', 'haproxy', 'minio', 'mariadb', 'proxysql', 'k3s']
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from keybuzz import ROOT
from keybuzz.servers import ROLES


@dataclass(frozen=True)
class Layer:
    name: str
    roles: tuple[str, ...]  # hosts it deploys to
    bricks: tuple[str, ...] = ()  # credentials its hosts receive
    renders: tuple[str, ...] = ()  # other roles whose addresses go into its configs
    data_dir: str | None = None  # /opt/keybuzz/<data_dir> on its hosts (created by the base OS layer)
    help: str = ""
    versions: tuple[str, ...] = ()  # versions.yaml keys it installs (what "pinned" means in `invoke all`'s report)
    checked_after: str | None = None  # its checks wait for this later layer's deploy (they go through it)

    @property
    def deploy(self) -> str:
        return f"deploys/{self.name}.py"

    @property
    def check(self) -> str:
        """Module with diag(target) / failover(target) / perf(target)."""
        return f"keybuzz.{self.name}.check"

    def exists(self) -> bool:
        return (ROOT / self.deploy).is_file()

    def has_checks(self) -> bool:
        return (ROOT / "keybuzz" / self.name / "check.py").is_file()


_ALL_ROLES = tuple(r for r in ROLES if r != "install")

# Order matters: `invoke all` runs them top to bottom. HAProxy comes right after what it fronts
# (DB, Redis, RabbitMQ), as the design puts "HAProxy with what it fronts".
LAYERS: dict[str, Layer] = {layer.name: layer for layer in (
    Layer("base_os", _ALL_ROLES, versions=("docker_engine_package",),
          help="Docker Engine, time sync, sysctls, data dirs, name resolution"),
    # DB, Redis and RabbitMQ are checked through the load balancer (10.0.0.10 -> HAProxy): after HAProxy's deploy
    Layer("db", ("db",), ("postgres",), data_dir="postgres", checked_after="haproxy",
          versions=("postgres_image", "patroni_image", "etcd_image", "pgbouncer_image"),
          help="PostgreSQL + Patroni + PgBouncer"),
    Layer("redis", ("redis",), ("redis",), data_dir="redis", checked_after="haproxy", versions=("redis_image",),
          help="Redis + Sentinel x3, master keybuzz-master"),
    Layer("rabbitmq", ("rabbitmq",), ("rabbitmq",), data_dir="rabbitmq", checked_after="haproxy",
          versions=("rabbitmq_image",), help="RabbitMQ quorum cluster x3"),
    Layer("haproxy", ("haproxy",), ("redis",), renders=("db", "redis", "rabbitmq"), data_dir="haproxy",
          versions=("haproxy_image",), help="HAProxy x2: 5432, 6432, 6379 (Redis master), 5672 (RabbitMQ)"),
    Layer("minio", ("minio",), ("minio",), data_dir="minio", versions=("minio_image",), help="MinIO distributed x3"),
    Layer("mariadb", ("mariadb",), ("mariadb",), data_dir="mariadb", versions=("mariadb_galera_image",),
          help="MariaDB Galera"),
    Layer("proxysql", ("proxysql",), ("proxysql", "mariadb"), renders=("mariadb",), data_dir="proxysql",
          versions=("proxysql_image",), help="ProxySQL x2"),
    Layer("k3s", ("k3s_masters", "k3s_workers"), ("k3s",), data_dir="k3s",
          versions=("k3s_version", "nginx_ingress_image"), help="K3s 3 masters + 5 workers, ingress"),
)}


def host_ready_commands(role: str) -> list[str]:
    """The `HOST_READY` commands (keybuzz/<layer>/settings.py) of the layers on hosts of `role`, in layer order:
    what a host waits for after everything on it restarted (the base OS layer restarting dockerd) before the
    next host restarts. Each is a bounded shell command that succeeds once that layer's services on the host
    serve again, and at once where the layer is not installed yet. A layer without HOST_READY adds nothing.

    >>> [c.split()[-1] for c in host_ready_commands("rabbitmq")]
    ['ready']
    >>> host_ready_commands("k3s_workers")
    []
    """
    from importlib import import_module

    commands = []
    for layer in ordered():
        if role in layer.roles and (ROOT / "keybuzz" / layer.name / "settings.py").is_file():
            command = getattr(import_module(f"keybuzz.{layer.name}.settings"), "HOST_READY", None)
            commands += [command] if command else []
    return commands


def data_dirs(role: str) -> list[str]:
    """The /opt/keybuzz/<dir> names the layers of `role` use.

    >>> data_dirs("haproxy"), data_dirs("k3s_workers")
    (['haproxy'], ['k3s'])
    """
    return [layer.data_dir for layer in LAYERS.values() if layer.data_dir and role in layer.roles]


def ordered() -> list[Layer]:
    """All layers in deployment order."""
    return list(LAYERS.values())


def from_deploy_path(path: str) -> Layer | None:
    """The layer whose deploy file is `path` (any spelling of deploys/<name>.py), else None."""
    p = Path(path)
    if p.suffix == ".py" and p.parent.name == "deploys":
        return LAYERS.get(p.stem)
    return None
