"""A throw-away Redis HA testbed in containers (testcontainers): 3 Redis + 3 Sentinel + 1 HAProxy on a
private Docker bridge, started from the project's own rendered files (keybuzz.redis.settings,
keybuzz.haproxy.settings) and running the real redis-update-master.sh / redis-master-watch.sh inside the
HAProxy container.

Used by tests/test_redis_cluster.py and bench/redis_failover.py. Traffic goes only to the
containers it creates (addresses in its own 192.168.x.0/24 bridge).

Deliberate stand-ins (everything else is the real part, from the project's own files):

* the systemd units: redis-master-watch.sh runs under `setsid nohup` and redis-update-master.timer is a bash
  loop (`while true; sleep timer_s; redis-update-master.sh`), both inside the HAProxy container
  (start_followers); `systemctl reload haproxy` is `kill -USR2 1` (HAProxy's master process is PID 1 of the
  container: the same signal ExecReload sends), keybuzz-haproxy-check is `haproxy -c -q -f`;
* be_rabbitmq's server (queue-01, port 5672) is a Redis server listening on 5672: HAProxy only proxies TCP
  there, and the tests only need a session of another backend that a reload must keep; no RabbitMQ runs;
* the Redis start gate (keybuzz-redis-start-gate) runs on this machine, not inside a host, and asks the
  Sentinels from a throw-away container of the Redis image (start_gate).

Example::

    with Testbed(down_after_ms=2000) as tb:
        tb.wait_ready()
        tb.lb_client().set("k", "v")
        tb.kill_redis(tb.master_index())
        tb.wait_for(lambda: tb.lb_role() == "master")
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable

import docker  # noqa: E402
import redis  # noqa: E402
from docker.types import EndpointConfig  # noqa: E402
from testcontainers.core.container import DockerContainer  # noqa: E402

from keybuzz import ROOT  # noqa: E402
from keybuzz.haproxy.settings import CONTAINER_CFG_DIR, render_haproxy_cfg, render_update_conf  # noqa: E402
from keybuzz.haproxy.settings import RUN_DIR as HAPROXY_RUN_DIR  # noqa: E402
from keybuzz.lab import images  # noqa: E402
from keybuzz.redis.client import no_retry_client  # noqa: E402
from keybuzz.redis.settings import (  # noqa: E402
    ACL_FILE,
    MASTER_NAME,
    REDIS_COMMAND,
    REPLICATION_INCLUDE,
    ROLES,
    Login,
    RedisSettings,
    env_file,
    majority,
    render_redis_acl,
    render_redis_conf,
    render_sentinel_acl,
    render_sentinel_conf,
    render_start_gate_conf,
)
from keybuzz.testbed import ContainerTestbed  # noqa: E402
from keybuzz.waiting import wait_for  # noqa: E402

TEMPLATES = ROOT / "templates" / "haproxy"
START_GATE = ROOT / "templates" / "redis" / "keybuzz-redis-start-gate"
NAMES = ("redis-01", "redis-02", "redis-03")


def haproxy_test_image() -> str:
    """The lab haproxy image + redis-cli (the HAProxy hosts get redis-tools from apt), run as root so the
    container can play the HAProxy host: the scripts, the config directory and HAProxy in one place."""
    base = images.build("haproxy", progress=lambda m: None)
    dockerfile = (f"FROM {base}\nUSER root\n"
                  "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends"
                  " redis-tools procps && rm -rf /var/lib/apt/lists/*\n")
    ref = f"keybuzz-lab/haproxy-redistest:{hashlib.sha256(dockerfile.encode()).hexdigest()[:12]}"
    client = docker.from_env()
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=ref, rm=True)
    return ref


class Testbed(ContainerTestbed):
    """Start with `with Testbed(...) as tb:`; everything is removed on exit (containers, network, files).

    watch: run redis-master-watch.sh (immediate follow-up); timer_s: seconds between update runs
    (the systemd timer's 15 s in production; 0 = no timer loop).
    """

    SUBNET_OCTETS = range(200, 250)

    def __init__(self, down_after_ms: int = 2000, watch: bool = True, timer_s: float = 15,
                 settings: RedisSettings | None = None, failover_timeout_ms: int = 10000):
        super().__init__("keybuzz-redis-tb-")
        self.settings = settings or RedisSettings(down_after_ms=down_after_ms, failover_timeout_ms=failover_timeout_ms)
        self.watch = watch
        self.timer_s = timer_s
        # one login per role, as credentials/redis.env has (keybuzz.redis.settings.ROLES)
        self.logins = {role: Login(None if role == "app" else f"tb-{role}", "tb-" + secrets.token_urlsafe(18))
                       for role in ROLES}
        self.admin = self.logins["admin"]

    # ------------------------------------------------------------ addresses
    def redis_ip(self, i: int) -> str:
        return self.ip(11 + i)

    def sentinel_ip(self, i: int) -> str:
        return self.ip(21 + i)

    @property
    def haproxy_ip(self) -> str:
        return self.ip(30)

    @property
    def redis_ips(self) -> list[str]:
        return [self.redis_ip(i) for i in range(3)]

    @property
    def sentinel_ips(self) -> list[str]:
        return [self.sentinel_ip(i) for i in range(3)]

    def start(self) -> None:
        redis_image = images.build("redis", progress=lambda m: None)
        haproxy_image = haproxy_test_image()
        self.create_network()
        self.redis_image = redis_image
        first = self.redis_ips[0]
        env = self.dir / "redis.env"  # the admin login, as /etc/keybuzz/redis.env of a Redis node
        env.write_text(env_file(self.admin, "admin"))
        env.chmod(0o600)
        for i, name in enumerate(NAMES):
            node = self.dir / name
            for sub in ("conf", "data", "sentinel"):
                (node / sub).mkdir(parents=True)
            (node / "conf" / "redis.conf").write_text(render_redis_conf(
                name, f"{self.redis_ip(i)} 127.0.0.1", self.logins["replication"], self.settings,
                None if i == 0 else first))
            (node / "conf" / ACL_FILE).write_text(render_redis_acl(self.logins))
            (node / "sentinel" / "sentinel.conf").write_text(render_sentinel_conf(
                name, f"{self.sentinel_ip(i)} 127.0.0.1", self.logins["sentinel"], self.settings, first))
            (node / "sentinel" / ACL_FILE).write_text(render_sentinel_acl(self.logins))
            for path in node.rglob("*"):
                os.chown(path, 999, 1000)
                path.chmod(0o700 if path.is_dir() else 0o600)
            os.chown(node, 999, 1000)
            (node / "start-gate.conf").write_text(render_start_gate_conf(
                self.sentinel_ips, self.redis_ip(i), redis_image, root=str(node), REDIS_ENV_FILE=str(env),
                GATE_WAIT="30"))
        # as on the hosts: every Redis starts (each behind its gate) before any Sentinel. On a first install
        # the Sentinels' hosts answer "connection refused"; here their containers do not exist yet (no
        # answer at all, which the gate rightly refuses), so the first gates ask closed loopback ports instead
        closed = " ".join(f"127.0.0.1:{port}" for port in (1, 2, 3))
        for i in range(3):
            gate = self.start_gate(i, SENTINELS=closed)
            assert gate.returncode == 0 and "first install" in gate.stderr, gate.stderr
            node = self.dir / NAMES[i]
            self._run(f"redis-{i + 1}", redis_image, REDIS_COMMAND, self.redis_ip(i),
                      {str(node / "conf"): "/conf", str(node / "data"): "/data"}, user="999:1000")
        for i, name in enumerate(NAMES):
            self._run(f"sentinel-{i + 1}", redis_image, "redis-server /sentinel/sentinel.conf --sentinel",
                      self.sentinel_ip(i), {str(self.dir / name / "sentinel"): "/sentinel"}, user="999:1000")
        # a deliberate stand-in for the RabbitMQ node behind be_rabbitmq (HAProxy's :5672): a Redis server on
        # 5672 (HAProxy proxies TCP there; test_reload_keeps_established_sessions_of_other_backends only needs
        # a session of a backend other than Redis's). Not a RabbitMQ: no AMQP is tested here
        self._run("queue-1", redis_image, "redis-server --port 5672 --protected-mode no", self.ip(41), {},
                  user="999:1000")
        self._start_haproxy(haproxy_image)

    def _start_haproxy(self, image: str) -> None:
        hp = self.dir / "haproxy"
        for sub in ("conf", "run", "etc", "bin"):
            (hp / sub).mkdir(parents=True)
        (hp / "conf" / "haproxy.cfg").write_text(render_haproxy_cfg(
            "haproxy-01", self.haproxy_ip, {"redis": [], "rabbitmq": [("queue-01", self.ip(41))]},
            redis_master=f"{self.redis_ips[0]}:6379"))
        (hp / "etc" / "redis-update-master.conf").write_text(render_update_conf(
            self.sentinel_ips, self.redis_ips,
            HAPROXY_CFG=f"{CONTAINER_CFG_DIR}/haproxy.cfg",
            HAPROXY_CHECK_CMD="haproxy -c -q -f",
            HAPROXY_RELOAD_CMD="kill -USR2 1",  # the HAProxy master is PID 1 of the container
            REDIS_ENV_FILE="/etc/keybuzz/redis.env"))
        env = hp / "etc" / "redis.env"
        env.write_text(env_file(self.logins["haproxy"], "haproxy"))
        env.chmod(0o600)
        for script in ("redis-update-master.sh", "redis-master-watch.sh"):
            shutil.copy(TEMPLATES / script, hp / "bin" / script)
            (hp / "bin" / script).chmod(0o755)
        self._run("haproxy", image,
                  f"haproxy -S {HAPROXY_RUN_DIR}/master.sock,mode,600 -f {CONTAINER_CFG_DIR}/haproxy.cfg",
                  self.haproxy_ip,
                  {str(hp / "conf"): CONTAINER_CFG_DIR, str(hp / "run"): HAPROXY_RUN_DIR,
                   str(hp / "etc"): "/etc/keybuzz", str(hp / "bin"): "/usr/local/keybuzz-bin"}, user="0:0")

    def _run(self, name: str, image: str, command: str, ip: str, volumes: dict[str, str], user: str,
             **kwargs) -> None:
        assert self.network is not None
        c = DockerContainer(image).with_command(command).with_name(f"kbtb-{self.prefix.split('.')[-1]}-{name}")
        for host_path, inside in volumes.items():
            c = c.with_volume_mapping(host_path, inside, "rw")
        c = c.with_kwargs(network=self.network.name, user=user, **kwargs,
                          networking_config={self.network.name: EndpointConfig("1.41", ipv4_address=ip)})
        try:
            c.start()
        except Exception:
            # docker created it but could not start it: testcontainers does not know it, remove it here
            try:
                self.client.containers.get(c._name).remove(force=True)
            except docker.errors.NotFound:
                pass
            raise
        self.containers[name] = c

    def exec(self, name: str, cmd: str, timeout: float = 60) -> tuple[int, str]:
        """Run `cmd` with bash in container `name`; returns (exit code, stdout+stderr)."""
        wrapped = self.docker(name)
        proc = subprocess.run(["docker", "exec", wrapped.id, "bash", "-c", cmd], capture_output=True, text=True,
                              timeout=timeout)
        return proc.returncode, proc.stdout + proc.stderr

    def kill_redis(self, i: int) -> None:
        """SIGKILL the Redis container; returns once Docker reports it dead."""
        container = self.docker(f"redis-{i + 1}")
        container.kill()
        self.wait_for(lambda: container.reload() or container.status != "running", 10, 0.01, "container dead")

    def start_gate(self, i: int, timeout: float = 90, **overrides: str) -> subprocess.CompletedProcess:
        """Run the real keybuzz-redis-start-gate of node i, as redis.service's ExecStartPre does (on this
        machine: it queries the Sentinels from a throw-away container of the Redis image, host network);
        `overrides`: settings appended to its settings file for this run."""
        conf = self.dir / NAMES[i] / "start-gate.conf"
        if overrides:
            alt = conf.with_name("start-gate-alt.conf")
            alt.write_text(conf.read_text() + "".join(f'{k}="{v}"\n' for k, v in overrides.items()))
            conf = alt
        return subprocess.run(["bash", str(START_GATE)], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "REDIS_START_GATE_CONF": str(conf)})

    def replication_include(self, i: int) -> str | None:
        path = self.dir / NAMES[i] / "conf" / REPLICATION_INCLUDE
        return path.read_text() if path.exists() else None

    def start_redis(self, i: int) -> None:
        """What systemd does for redis.service: the gate (must succeed), then the container."""
        gate = self.start_gate(i)
        assert gate.returncode == 0, gate.stderr
        self.docker(f"redis-{i + 1}").start()

    def kill_sentinel(self, i: int) -> None:
        self.docker(f"sentinel-{i + 1}").kill()

    def start_sentinel(self, i: int) -> None:
        self.docker(f"sentinel-{i + 1}").start()

    def pause_redis(self, i: int) -> None:
        self.docker(f"redis-{i + 1}").pause()

    def unpause_redis(self, i: int) -> None:
        self.docker(f"redis-{i + 1}").unpause()

    # ------------------------------------------------------------ the scripts
    def start_followers(self, timeout: float = 30) -> None:
        """Start what production runs under systemd, inside haproxy: the watcher (redis-master-watch.sh, under
        setsid nohup instead of redis-master-watch.service) and, instead of redis-update-master.timer, a bash
        loop running redis-update-master.sh every timer_s s. With the watcher, returns once every Sentinel
        lists its subscription (watcher_subscriptions), so that a failover right after this call is announced
        to it."""
        env = "REDIS_UPDATE_MASTER=/usr/local/keybuzz-bin/redis-update-master.sh"
        if self.watch:
            self.exec("haproxy", f"{env} setsid nohup /usr/local/keybuzz-bin/redis-master-watch.sh "
                                 ">>/tmp/watch.log 2>&1 &")
        if self.timer_s:
            self.exec("haproxy", f"setsid nohup bash -c 'while true; do sleep {self.timer_s}; "
                                 "/usr/local/keybuzz-bin/redis-update-master.sh; done' >>/tmp/timer.log 2>&1 &")
        if self.watch:
            self.wait_watcher_subscribed(timeout)

    def watcher_subscriptions(self) -> list[int]:
        """Per Sentinel, how many of its clients are the watcher's subscriptions: connections from the HAProxy
        container, logged in as the HAProxy hosts' user, in SUBSCRIBE (Sentinel's own CLIENT LIST: `sub` is
        the client's channel count, `cmd` its last command); -1 for a Sentinel that does not answer. That user
        may subscribe to +switch-master and no other channel (its Sentinel ACL: `resetchannels &+switch-master`),
        so such a subscription is the one redis-master-watch.sh holds. (Sentinel has no PUBSUB NUMSUB.)"""
        counts = []
        for ip in self.sentinel_ips:
            try:
                listing = self.redis_client(ip, 26379).execute_command("CLIENT", "LIST")
            except (redis.RedisError, OSError):
                counts.append(-1)
                continue
            if isinstance(listing, bytes):
                listing = listing.decode()
            n = 0
            for line in listing.splitlines():
                f = dict(w.split("=", 1) for w in line.split() if "=" in w)
                if (f.get("addr", "").startswith(f"{self.haproxy_ip}:") and f.get("user") == self.logins["haproxy"].user
                        and f.get("sub", "0") != "0" and f.get("cmd") == "subscribe"):
                    n += 1
            counts.append(n)
        return counts

    def wait_watcher_subscribed(self, timeout: float = 30) -> None:
        """Bounded wait until every Sentinel has at least one subscription of the watcher."""
        self.wait_for(lambda: min(self.watcher_subscriptions()) >= 1, timeout, 0.1,
                      "the watcher subscribed to +switch-master on every Sentinel")

    def update(self, conf_overrides: dict[str, str] | None = None, env: dict[str, str] | None = None,
               timeout: float = 60) -> tuple[int, str]:
        """One run of the real redis-update-master.sh (optionally with another settings file, or environment
        variables such as the unit's FAIL_AFTER)."""
        prefix = "".join(f"{k}='{v}' " for k, v in (env or {}).items())
        if conf_overrides:
            extra = "\n".join(f'{k}="{v}"' for k, v in conf_overrides.items())
            self.exec("haproxy", f"cp /etc/keybuzz/redis-update-master.conf /tmp/alt.conf && "
                                 f"cat >>/tmp/alt.conf <<'EOF'\n{extra}\nEOF")
            prefix += "REDIS_UPDATE_MASTER_CONF=/tmp/alt.conf "
        return self.exec("haproxy", prefix + "/usr/local/keybuzz-bin/redis-update-master.sh", timeout=timeout)

    def logs(self) -> str:
        return self.exec("haproxy", "cat /tmp/watch.log /tmp/timer.log 2>/dev/null")[1]

    def haproxy_cfg(self) -> str:
        return (self.dir / "haproxy" / "conf" / "haproxy.cfg").read_text()

    def cfg_master(self) -> str | None:
        in_backend = False
        for line in self.haproxy_cfg().splitlines():
            words = line.split()
            if words and words[0] in ("backend", "frontend", "listen", "defaults", "global"):
                in_backend = words[:2] == ["backend", "be_redis_master"]
            elif in_backend and words[:2] == ["server", "redis-master"]:
                return words[2]
        return None

    def master_cli(self, command: str) -> str:
        sock = f"{HAPROXY_RUN_DIR}/master.sock"
        return self.exec("haproxy", f"echo '{command}' | socat -t 2 stdio UNIX-CONNECT:{sock}")[1]

    def runtime_master(self) -> str | None:
        for line in self.master_cli("@1 show servers state be_redis_master").splitlines():
            f = line.split()
            if len(f) > 18 and f[1] == "be_redis_master" and f[3] == "redis-master":
                return f"{f[4]}:{f[18]}"
        return None

    def haproxy_pids(self) -> list[int]:
        return [int(line.split()[0]) for line in self.master_cli("show proc").splitlines()
                if len(line.split()) > 1 and line.split()[1] == "worker"]

    # ------------------------------------------------------------ Redis clients
    def redis_client(self, ip: str, port: int = 6379, timeout: float = 1.0, login: Login | None = None) -> redis.Redis:
        """An admin client (nodes and Sentinels), or `login`'s; no automatic retry (redis-py retries 3 times by
        default): a poll must see each failure at once."""
        return no_retry_client(ip, port, login or self.admin, timeout)

    def lb_client(self, timeout: float = 1.0) -> redis.Redis:
        """A client through HAProxy (the load balancer stand-in), logged in as the applications are."""
        return self.redis_client(self.haproxy_ip, timeout=timeout, login=self.logins["app"])

    def role(self, ip: str) -> str | None:
        try:
            return self.redis_client(ip).execute_command("ROLE")[0]
        except (redis.RedisError, OSError):
            return None

    def lb_role(self) -> str | None:
        return self.role(self.haproxy_ip)

    def sentinel_answers(self) -> list[str | None]:
        out = []
        for ip in self.sentinel_ips:
            try:
                r = self.redis_client(ip, 26379).execute_command("SENTINEL", "get-master-addr-by-name", MASTER_NAME)
                out.append(f"{r[0]}:{r[1]}" if r else None)
            except (redis.RedisError, OSError):
                out.append(None)
        return out

    def sentinel_state(self, i: int) -> dict[str, str]:
        """SENTINEL MASTER's fields as Sentinel `i` sees the master (what a stuck election is read from)."""
        m = self.redis_client(self.sentinel_ips[i], 26379).execute_command("SENTINEL", "MASTER", MASTER_NAME)
        return dict(zip(m[::2], m[1::2], strict=False))

    def replicas_online(self, master_ip: str) -> bool:
        """Both replicas attached to `master_ip` and `online`: connected is not enough, a replica still loading
        its first sync would miss the next write."""
        info = self.redis_client(master_ip).info("replication")
        return info.get("connected_slaves") == 2 and all(info.get(f"slave{n}", {}).get("state") == "online"
                                                         for n in range(2))

    def settled(self, master: str) -> bool:
        """`master` (ip:port) has both replicas online and every Sentinel names it with no failover of its own
        still running. A leader Sentinel ends its failover only once the replicas are reconfigured and the
        promoted one answers: a test that kills that one before the end leaves the leader stuck in
        failover_in_progress, naming the old master, and the next failover can never reach quorum (seen in CI)."""
        ip, port = master.split(":")
        return self.replicas_online(ip) and all(
            s.get("ip") == ip and s.get("port") == port and s.get("flags") == "master"
            for s in map(self.sentinel_state, range(3)))

    def sentinel_master(self) -> str | None:
        return majority(self.sentinel_answers(), 3)

    def master_index(self) -> int:
        addr = self.sentinel_master()
        assert addr, "no Sentinel majority"
        return self.redis_ips.index(addr.split(":")[0])

    def wait_for(self, predicate: Callable[[], object], timeout: float = 30, interval: float = 0.1,
                 what: str = "condition"):
        """Poll `predicate` until truthy (returned) or raise TimeoutError after `timeout` s (bounded loop)."""
        return wait_for(predicate, timeout, interval, what)

    def wait_ready(self, timeout: float = 60) -> None:
        """Replication up on both replicas and each Sentinel sees the two others and both replicas."""
        def ready() -> bool:
            try:
                if not self.replicas_online(self.redis_ips[0]):
                    return False
                for ip in self.sentinel_ips:
                    m = self.redis_client(ip, 26379).execute_command("SENTINEL", "MASTER", MASTER_NAME)
                    fields = dict(zip(m[::2], m[1::2], strict=False))
                    if fields.get("num-other-sentinels") != "2" or fields.get("num-slaves") != "2":
                        return False
                return True
            except (redis.RedisError, OSError):
                return False
        self.wait_for(ready, timeout, 0.3, "replication + Sentinel discovery")
