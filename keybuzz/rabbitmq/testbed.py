"""A throw-away RabbitMQ quorum cluster behind HAProxy, in containers (testcontainers): queue-01..03 +
haproxy on a private Docker bridge, started from the project's own rendered files:
templates/rabbitmq/ (rabbitmq.conf.j2, enabled_plugins, keybuzz-user.conf.j2) for the nodes, the real node
script (keybuzz-rabbitmq.sh.j2) for the cluster setup, templates/haproxy/haproxy.cfg.j2 for HAProxy.

Used by tests/test_rabbitmq_cluster.py and bench/rabbitmq_failover.py. Traffic goes only to the
containers it creates (addresses in its own 192.168.x.0/24 bridge).

Example::

    with Testbed() as tb:
        tb.wait_cluster(3)
        ep = tb.lb_endpoint()                 # AMQP through HAProxy
        tb.kill(tb.leader_index("q"))          # docker kill of the leader's node
        tb.revive(i); tb.wait_cluster(3)
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess

from docker.types import EndpointConfig  # noqa: E402
from testcontainers.core.container import DockerContainer  # noqa: E402

from keybuzz import ROOT  # noqa: E402
from keybuzz.haproxy.client import parse_stats, up_servers
from keybuzz.haproxy.settings import DEFAULTS, render_haproxy_cfg  # noqa: E402
from keybuzz.lab import images  # noqa: E402
from keybuzz.rabbitmq.client import Endpoint, Management, leader_of, quorum_members, wait_members  # noqa: E402
from keybuzz.rabbitmq.settings import NET_SETUPTIME, VHOSTS  # noqa: E402
from keybuzz.render import render  # noqa: E402
from keybuzz.testbed import ContainerTestbed  # noqa: E402
from keybuzz.waiting import wait_for  # noqa: E402, F401 - re-exported for tests and bench

NAMES = ("queue-01", "queue-02", "queue-03")
UID = 999  # rabbitmq in the official image and the lab stand-in
USER = "keybuzz"


class Testbed(ContainerTestbed):
    """Start with `with Testbed() as tb:`; everything is removed on exit (containers, network, files)."""

    SUBNET_OCTETS = range(150, 200)

    def __init__(self, haproxy_defaults_extra: tuple[str, ...] = (), erl_args: str = NET_SETUPTIME):
        # lines added to the rendered template's `defaults` section (bench experiments only, e.g.
        # "option redispatch"); empty = the project's template as is
        super().__init__("keybuzz-rabbitmq-tb-")
        self.haproxy_defaults_extra = haproxy_defaults_extra
        # RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS: the deploy's, but the listener binding (Docker's network does it)
        self.erl_args = erl_args
        self.password = "tb-" + secrets.token_urlsafe(18)
        self.cookie = secrets.token_urlsafe(32)

    # ------------------------------------------------------------ addresses
    def node_ip(self, i: int) -> str:
        return self.ip(11 + i)

    @property
    def haproxy_ip(self) -> str:
        return self.ip(10)

    def lb_endpoint(self) -> Endpoint:
        """AMQP through HAProxy (be_rabbitmq), as KeyBuzz clients reach 10.0.0.10:5672."""
        return Endpoint(self.haproxy_ip, 5672, USER, self.password)

    def node_endpoint(self, i: int) -> Endpoint:
        return Endpoint(self.node_ip(i), 5672, USER, self.password)

    def apis(self) -> list[Management]:
        return [Management(self.node_ip(i), USER, self.password, timeout=2) for i in range(len(NAMES))]

    def start(self) -> None:
        rabbitmq_image = images.build("rabbitmq", progress=lambda m: None)
        haproxy_image = images.build("haproxy", progress=lambda m: None)
        self.create_network()
        for i, name in enumerate(NAMES):
            self._write_node_files(i, name)
        # all three at once: the harder case for peer discovery (the deploy starts them one by one)
        for i, name in enumerate(NAMES):
            self._run_node(i, name, rabbitmq_image)
        self._start_haproxy(haproxy_image)

    def _write_node_files(self, i: int, name: str) -> None:
        node = self.dir / name
        (node / "conf" / "conf.d").mkdir(parents=True)
        (node / "data").mkdir()
        (node / "conf" / "rabbitmq.conf").write_text(
            render("rabbitmq/rabbitmq.conf.j2", peers=list(NAMES), private_ip=self.node_ip(i)))
        shutil.copy(ROOT / "templates" / "rabbitmq" / "enabled_plugins", node / "conf" / "enabled_plugins")
        user_conf = node / "conf" / "conf.d" / "20-keybuzz-user.conf"
        user_conf.write_text(render("rabbitmq/keybuzz-user.conf.j2", user=USER, password=self.password))
        cookie = node / "data" / ".erlang.cookie"
        cookie.write_text(self.cookie)
        script = node / "keybuzz-rabbitmq"
        script.write_text(render("rabbitmq/keybuzz-rabbitmq.sh.j2", peers=list(NAMES), vhosts=VHOSTS,
                                 user_conf="/unused", wait_seconds=120, uid=UID))
        script.chmod(0o700)
        # same owners and modes as the deploy: uid 999 owns what the server reads, secrets 0400
        for path in (user_conf, cookie):
            os.chown(path, UID, 0)
            path.chmod(0o400)
        os.chown(node / "data", UID, 0)
        (node / "data").chmod(0o750)

    def _run_node(self, i: int, name: str, image: str) -> None:
        node = self.dir / name
        c = (DockerContainer(image).with_command("rabbitmq-server")
             .with_name(f"kbrq-{self.prefix.split('.')[-1]}-{name}")
             .with_volume_mapping(str(node / "conf"), "/etc/rabbitmq", "ro")
             .with_volume_mapping(str(node / "data"), "/var/lib/rabbitmq", "rw")
             .with_env("RABBITMQ_NODENAME", f"rabbit@{name}"))
        if self.erl_args:
            c = c.with_env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", self.erl_args)
        assert self.network is not None
        c = c.with_kwargs(
            network=self.network.name, user=str(UID), hostname=name,
            # as the deploy's --add-host: peers resolve by inventory name
            extra_hosts={peer: self.node_ip(j) for j, peer in enumerate(NAMES)},
            networking_config={self.network.name: EndpointConfig("1.41", ipv4_address=self.node_ip(i))},
        )
        c.start()
        self.containers[name] = c

    def _start_haproxy(self, image: str) -> None:
        conf = self.dir / "haproxy"
        conf.mkdir()
        # the real template, with this layer's block only
        cfg = render_haproxy_cfg("haproxy-01", self.haproxy_ip,
                                 {"rabbitmq": [(name, self.node_ip(i)) for i, name in enumerate(NAMES)]},
                                 run_dir="/var/lib/haproxy")
        if self.haproxy_defaults_extra:
            extra = "".join(f"    {line}\n" for line in self.haproxy_defaults_extra)
            cfg = cfg.replace(f"\ndefaults {DEFAULTS}\n", f"\ndefaults {DEFAULTS}\n" + extra, 1)
        (conf / "haproxy.cfg").write_text(cfg)
        assert self.network is not None
        c = (DockerContainer(image).with_name(f"kbrq-{self.prefix.split('.')[-1]}-haproxy")
             .with_volume_mapping(str(conf), "/usr/local/etc/haproxy", "ro")
             .with_kwargs(network=self.network.name, networking_config={
                 self.network.name: EndpointConfig("1.41", ipv4_address=self.haproxy_ip)}))
        c.start()
        self.containers["haproxy"] = c

    # ------------------------------------------------------------ node control
    def container_name(self, i: int) -> str:
        return self.docker(NAMES[i]).name

    def script(self, i: int, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run the deploy's node script (keybuzz-rabbitmq) against node i's container."""
        node = self.dir / NAMES[i]
        env = {**os.environ, "KEYBUZZ_RABBITMQ_CONTAINER": self.container_name(i),
               "KEYBUZZ_RABBITMQ_USER_CONF": str(node / "conf" / "conf.d" / "20-keybuzz-user.conf")}
        return subprocess.run([str(node / "keybuzz-rabbitmq"), *args], env=env, capture_output=True, text=True,
                              timeout=timeout)

    def ctl(self, i: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """rabbitmqctl (or another CLI: first arg) inside node i, as the rabbitmq uid."""
        return subprocess.run(["docker", "exec", "-u", str(UID), self.container_name(i), *args],
                              capture_output=True, text=True, timeout=timeout)

    def kill(self, i: int) -> None:
        """SIGKILL node i's container (its data stays: it can come back)."""
        self.docker(NAMES[i]).kill()

    def revive(self, i: int) -> None:
        wrapped = self.docker(NAMES[i])
        wrapped.reload()
        if wrapped.status != "running":
            wrapped.start()

    def running(self, i: int) -> bool:
        wrapped = self.docker(NAMES[i])
        wrapped.reload()
        return wrapped.status == "running"

    # ------------------------------------------------------------ cluster state
    def wait_cluster(self, count: int = 3, seconds: float = 180) -> list[str]:
        """Wait until the cluster has `count` running members (management API); return their names."""
        seen = wait_members(self.apis(), count, seconds)
        if len(seen) < count:
            raise TimeoutError(f"cluster has {len(seen)} running members after {seconds:.0f}s: {seen}")
        return seen

    def setup(self) -> str:
        """The deploy's cluster setup (users, vhosts, permissions, no guest), run once on queue-01."""
        result = self.script(0, "setup")
        if result.returncode != 0:
            raise RuntimeError(f"keybuzz-rabbitmq setup failed: {result.stderr[-2000:]}")
        return result.stderr

    def leader_index(self, queue: str) -> int:
        leader = leader_of(self.apis(), queue)
        if leader is None:
            raise TimeoutError(f"no leader known for {queue}")
        return NAMES.index(leader.split("@", 1)[1])

    def quorum_status(self, queue: str, i: int) -> dict[str, dict]:
        """The quorum queue's Raft members as node i reports them (client.quorum_members); {} when node i
        cannot answer."""
        out = self.ctl(i, "rabbitmq-queues", "-q", "quorum_status", queue, "--formatter", "json")
        return quorum_members(out.stdout) if out.returncode == 0 else {}

    def haproxy_stats(self) -> list[dict]:
        """HAProxy's stats rows (stats socket, `show stat`)."""
        return parse_stats(subprocess.run(["docker", "exec", self.docker("haproxy").name, "sh", "-c",
                                           "echo 'show stat' | socat stdio /var/lib/haproxy/admin.sock"],
                                          capture_output=True, text=True, timeout=30).stdout)

    def haproxy_up(self) -> list[str]:
        """Servers of be_rabbitmq that HAProxy's own checks say are UP."""
        return [n for n in up_servers(self.haproxy_stats(), "be_rabbitmq") if n in NAMES]

    def wait_healthy(self, seconds: float = 180) -> None:
        """3 running members AND HAProxy sending to all 3 (its checks need a few seconds after a restart)."""
        self.wait_cluster(3, seconds)
        wait_for(lambda: len(self.haproxy_up()) == len(NAMES), 60, 0.5, "HAProxy sees 3 RabbitMQ servers UP")

    def haproxy_logs(self) -> str:
        out, err = self.docker("haproxy").logs(), b""
        return (out + err).decode(errors="replace")
