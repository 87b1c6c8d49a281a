"""A throw-away PostgreSQL/Patroni/etcd/PgBouncer cluster behind HAProxy, in containers, from the project's
rendered files (templates/db/*: patroni.yml, pgbouncer.ini + SCRAM userlist, etcd env, the HAProxy fragment).

Layout, as production (one container per service, host networking on each db node): each node db-01..03 has
a tiny "host" container holding the node's network namespace and private address (192.168.x.11-13); its
etcd, Patroni+PostgreSQL and PgBouncer containers join that namespace (`--network container:<host>`), so
they share the address and loopback exactly as on a db host. HAProxy (.10) gets the fragment wrapped in a
minimal global/defaults. Killing a node's containers (`kill_node`) is the host's death: its address goes
away; `kill(i, "patroni")` kills one service only.

Secrets: random passwords per testbed; patroni.yml 0600 owned by uid 70, userlist.txt (SCRAM verifiers)
0600 owned by uid 1001; nothing secret in any container's env or command line.

Traffic only to the containers it creates (its own 192.168.100-149.0/24 bridge).

Example::

    with Testbed() as tb:
        tb.wait_healthy()
        tb.primary_index(), tb.lb(5432)        # Endpoint through HAProxy
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # the reaper image cannot be pulled here

from docker.types import EndpointConfig  # noqa: E402
from testcontainers.core.container import DockerContainer  # noqa: E402

from keybuzz.db import client  # noqa: E402
from keybuzz.db.client import Endpoint  # noqa: E402
from keybuzz.db.settings import (  # noqa: E402
    DEFAULT,
    DbSettings,
    PatroniSecrets,
    render_etcd_env,
    render_haproxy_block,
    render_patroni_yml,
    render_pgbouncer_ini,
    render_pgbouncer_userlist,
    scram_verifier,
)
from keybuzz.haproxy.client import parse_stats, up_servers
from keybuzz.lab import images  # noqa: E402
from keybuzz.testbed import ContainerTestbed  # noqa: E402
from keybuzz.waiting import wait_for  # noqa: E402

NAMES = ("db-01", "db-02", "db-03")
SERVICES = ("etcd", "patroni", "pgbouncer")
APP_USER = "keybuzz"
APP_DB = "keybuzz"

HAPROXY_WRAPPER = """# testbed wrapper around templates/db/haproxy.cfg.j2 (production: the haproxy layer's)
global
    log stdout format raw local0 info
    maxconn 4000
    stats socket /var/lib/haproxy/admin.sock mode 600 level admin

defaults
    log global
    mode tcp
    option tcplog
    option dontlognull
    timeout connect 3s
    timeout client 1h
    timeout server 1h
    option clitcpka
    option srvtcpka
    timeout check 2s

"""


class Testbed(ContainerTestbed):
    """`with Testbed() as tb:` starts 3 nodes + HAProxy; everything is removed on exit."""

    SUBNET_OCTETS = range(100, 150)

    def __init__(self, settings: DbSettings = DEFAULT):
        super().__init__("keybuzz-db-tb-")
        self.settings = settings
        # random per testbed, distinct from each other (the secret-leak test looks for each one)
        self.secrets = PatroniSecrets(
            superuser="postgres", superpass="sp-" + secrets.token_urlsafe(18),
            repl_user="replicator", repl_pass="rp-" + secrets.token_urlsafe(18),
            rest_user="patroni", rest_pass="ap-" + secrets.token_urlsafe(18))
        self.app_pass = "app-" + secrets.token_urlsafe(18)
        self.images: dict[str, str] = {}

    # ------------------------------------------------------------ addresses and endpoints
    def node_ip(self, i: int) -> str:
        return self.ip(11 + i)

    @property
    def haproxy_ip(self) -> str:
        return self.ip(10)

    def nodes(self) -> list[tuple[str, str]]:
        return [(name, self.node_ip(i)) for i, name in enumerate(NAMES)]

    def lb(self, port: int = 5432) -> Endpoint:
        """The app user through HAProxy (5432 PostgreSQL, 6432 PgBouncer), as apps reach 10.0.0.10."""
        return Endpoint(self.haproxy_ip, port, APP_USER, self.app_pass, APP_DB)

    def node(self, i: int, port: int = 5432) -> Endpoint:
        return Endpoint(self.node_ip(i), port, APP_USER, self.app_pass, APP_DB)

    def superuser(self, i: int) -> Endpoint:
        return Endpoint(self.node_ip(i), self.settings.pg_port, self.secrets.superuser, self.secrets.superpass)

    @property
    def rest_auth(self) -> tuple[str, str]:
        return (self.secrets.rest_user, self.secrets.rest_pass)

    def all_secrets(self) -> list[str]:
        s = self.secrets
        return [s.superpass, s.repl_pass, s.rest_pass, self.app_pass]

    def cname(self, i: int, service: str) -> str:
        return f"kbdb-{self.prefix.split('.')[-1]}-{NAMES[i]}-{service}"

    # ------------------------------------------------------------ start
    def start(self) -> None:
        quiet = lambda m: None  # noqa: E731
        self.images = {n: images.build(n, progress=quiet) for n in ("patroni", "etcd", "pgbouncer", "haproxy")}
        self.create_network()
        s = self.settings
        self.settings = s = DbSettings(**{**s.__dict__, "client_networks": (f"{self.prefix}.0/24",)})
        for i, name in enumerate(NAMES):
            self._write_node_files(i, name)
        for i in range(len(NAMES)):
            self._run_host(i)
        for i in range(len(NAMES)):  # etcd first: the DCS must form before Patroni races for the bootstrap
            self._run_service(i, "etcd")
        for i in range(len(NAMES)):
            self._run_service(i, "patroni")
            self._run_service(i, "pgbouncer")
        self._start_haproxy()
        self.wait_healthy(180, app=False)
        # the application role and database, through the primary (idempotent; the deploy's step)
        primary = self.primary_index()
        client.ensure_app(self.superuser(primary), APP_USER, self.app_verifier, APP_DB)

    def _write_node_files(self, i: int, name: str) -> None:
        s = self.settings
        d = self.dir / name
        for sub in ("config", "data", "pgbouncer", "etcd"):
            (d / sub).mkdir(parents=True)
        yml = d / "config" / "patroni.yml"
        yml.write_text(render_patroni_yml(name, self.node_ip(i), self.nodes(), self.secrets, s))
        os.chown(d / "config", s.postgres_uid, s.postgres_uid)
        (d / "config").chmod(0o700)
        os.chown(yml, s.postgres_uid, s.postgres_uid)
        yml.chmod(0o600)
        os.chown(d / "data", s.postgres_uid, s.postgres_uid)
        (d / "data").chmod(0o700)
        (d / "pgbouncer" / "pgbouncer.ini").write_text(render_pgbouncer_ini(name, self.node_ip(i), s))
        if not hasattr(self, "app_verifier"):
            self.app_verifier = scram_verifier(self.app_pass)  # one verifier: PostgreSQL and PgBouncer alike
        userlist = d / "pgbouncer" / "userlist.txt"
        userlist.write_text(render_pgbouncer_userlist([(APP_USER, self.app_verifier)]))
        os.chown(userlist, s.pgbouncer_uid, 0)
        userlist.chmod(0o600)
        (d / "etcd.env").write_text(render_etcd_env(name, self.node_ip(i), self.nodes(), s))
        (d / "etcd").chmod(0o700)

    def _run_host(self, i: int) -> None:
        assert self.network is not None
        c = (DockerContainer(self.images["patroni"]).with_command("sleep infinity")
             .with_name(self.cname(i, "host"))
             .with_kwargs(network=self.network.name, hostname=NAMES[i], networking_config={
                 self.network.name: EndpointConfig("1.41", ipv4_address=self.node_ip(i))}))
        c.start()
        self.containers[f"{NAMES[i]}-host"] = c

    def _run_service(self, i: int, service: str) -> None:
        s, d = self.settings, self.dir / NAMES[i]
        host = self.docker(f"{NAMES[i]}-host")
        if service == "etcd":
            env = dict(line.split("=", 1) for line in (d / "etcd.env").read_text().splitlines()
                       if line and not line.startswith("#"))
            c = DockerContainer(self.images["etcd"]).with_volume_mapping(str(d / "etcd"), s.etcd_data, "rw")
            for k, v in env.items():
                c = c.with_env(k, v)
            kwargs = {}
        elif service == "patroni":
            c = (DockerContainer(self.images["patroni"])
                 .with_volume_mapping(str(d / "config"), "/etc/patroni", "ro")
                 .with_volume_mapping(str(d / "data"), s.pgdata, "rw"))
            kwargs = {"user": f"{s.postgres_uid}:{s.postgres_uid}"}
        else:
            c = DockerContainer(self.images["pgbouncer"]).with_volume_mapping(
                str(d / "pgbouncer"), s.pgbouncer_conf_dir, "ro")
            kwargs = {"user": f"{s.pgbouncer_uid}:0"}
        c = c.with_name(self.cname(i, service)).with_kwargs(network_mode=f"container:{host.id}", **kwargs)
        c.start()
        self.containers[f"{NAMES[i]}-{service}"] = c

    def _start_haproxy(self) -> None:
        conf = self.dir / "haproxy"
        conf.mkdir()
        (conf / "haproxy.cfg").write_text(HAPROXY_WRAPPER + render_haproxy_block(self.nodes(), self.settings))
        assert self.network is not None
        c = (DockerContainer(self.images["haproxy"]).with_name(f"kbdb-{self.prefix.split('.')[-1]}-haproxy")
             .with_volume_mapping(str(conf), "/usr/local/etc/haproxy", "ro")
             .with_kwargs(network=self.network.name, networking_config={
                 self.network.name: EndpointConfig("1.41", ipv4_address=self.haproxy_ip)}))
        c.start()
        self.containers["haproxy"] = c

    # ------------------------------------------------------------ control
    def container(self, i: int, service: str):
        return self.docker(f"{NAMES[i]}-{service}")

    def kill(self, i: int, service: str = "patroni") -> None:
        """SIGKILL one service of node i (its data stays)."""
        self.container(i, service).kill()

    def kill_node(self, i: int) -> None:
        """The host's death: every container of node i, its address with them."""
        for service in (*SERVICES, "host"):
            w = self.container(i, service)
            w.reload()
            if w.status == "running":
                w.kill()

    def revive(self, i: int, service: str) -> None:
        w = self.container(i, service)
        w.reload()
        if w.status != "running":
            w.start()

    def revive_node(self, i: int, services: tuple[str, ...] = ("host", *SERVICES)) -> None:
        for service in services:
            self.revive(i, service)

    def running(self, i: int, service: str) -> bool:
        w = self.container(i, service)
        w.reload()
        return w.status == "running"

    # ------------------------------------------------------------ state
    def view(self) -> dict:
        hosts = [self.node_ip(i) for i in range(len(NAMES)) if self.running(i, "patroni")]
        return client.cluster_any(hosts, self.settings.api_port)

    def primary_index(self) -> int:
        name = client.primary_name(self.view())
        if name is None:
            raise RuntimeError("no running leader")
        return NAMES.index(name)

    def haproxy_up(self, backend: str) -> list[str]:
        """Servers of `backend` HAProxy's checks say are UP (stats socket `show stat`)."""
        out = subprocess.run(["docker", "exec", self.docker("haproxy").name, "sh", "-c",
                              "echo 'show stat' | socat stdio /var/lib/haproxy/admin.sock"],
                             capture_output=True, text=True, timeout=30).stdout
        return [n for n in up_servers(parse_stats(out), backend) if n in NAMES]

    def healthy(self, app: bool = True) -> bool:
        """3 members running, one leader, one sync standby, and HAProxy routes 5432 and 6432 to the leader."""
        view = self.view()
        leader = client.primary_name(view)
        members = [m for m in view.get("members", []) if m.get("state") in ("running", "streaming")]
        if leader is None or len(members) != 3 or len(client.sync_standbys(view)) != 1:
            return False
        if self.haproxy_up("be_postgres") != [leader] or self.haproxy_up("be_pgbouncer") != [leader]:
            return False
        if app:
            return not client.in_recovery(self.lb(5432)) and not client.in_recovery(self.lb(6432))
        return True

    def wait_healthy(self, seconds: float = 120, app: bool = True) -> None:
        """Revive whatever is down, then wait for the healthy state (a test's starting point)."""
        for i in range(len(NAMES)):
            self.revive_node(i)
        wait_for(lambda: self.healthy(app), seconds, 0.5, "3 Patroni members, leader + sync standby, HAProxy on it")

    def wait_member_running(self, i: int, seconds: float = 120) -> None:
        def ok():
            return any(m["name"] == NAMES[i] and m.get("state") in ("running", "streaming")
                       for m in self.view().get("members", []))
        wait_for(ok, seconds, 0.5, f"{NAMES[i]} running as a member")

    def logs(self) -> str:
        out = []
        for key, c in self.containers.items():
            try:
                w = c.get_wrapped_container()
                out.append(f"== {key}\n" + w.logs().decode(errors="replace"))
            except Exception:  # noqa: BLE001 - a removed container has no logs
                pass
        return "\n".join(out)

    def inspect(self) -> str:
        """`docker inspect` of every container of the testbed (what anyone with Docker access sees)."""
        names = [c.get_wrapped_container().name for c in self.containers.values()]
        return subprocess.run(["docker", "inspect", *names], capture_output=True, text=True, timeout=60).stdout

    def now(self) -> float:
        return time.monotonic()
