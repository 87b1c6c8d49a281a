"""A throw-away MariaDB Galera cluster in containers (testcontainers): maria-01..03 on a private Docker bridge
(192.168.230.0/24), each started from the project's own rendered files (templates/mariadb: my.cnf, sst-auth.cnf,
users.sql, new-cluster.cnf) with the deploy's run arguments (settings.mysqld_run_args: the image's entrypoint
bypassed), and driven by the layer's bootstrap decision (keybuzz.mariadb.galera.decide) exactly as the deploy
applies it: read every node's grastate.dat, recover positions with `mysqld --wsrep-recover` when needed,
bootstrap the chosen node through bootstrap.d/new-cluster.cnf, apply users.sql over the socket, start the others.

What it does not run: systemd and the node script keybuzz-mariadb (the lab tests do, over SSH).

Example::

    with Testbed() as tb:
        tb.converge()                 # first install: maria-01 bootstraps, the others join (SST)
        tb.kill_all(); tb.converge()  # full outage, then recovery by the layer's logic
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

from docker.types import EndpointConfig
from testcontainers.core.container import DockerContainer

from keybuzz import ROOT
from keybuzz.lab import images
from keybuzz.mariadb import galera
from keybuzz.mariadb.client import node_status
from keybuzz.mariadb.settings import (
    DEFAULT,
    Accounts,
    install_db_args,
    mysqld_command,
    render_my_cnf,
    render_node_script,
    render_sst_auth,
    render_users_sql,
)
from keybuzz.testbed import ContainerTestbed
from keybuzz.waiting import wait_for  # noqa: F401 - re-exported for the tests

NAMES = ("maria-01", "maria-02", "maria-03")
PREFIX = "keybuzz-mariadb-test-"
# A stand-in for systemctl, used only when the testbed runs the node script: the "unit" is the node's container
# (is-active / start / stop / restart, as mariadb.service wraps `docker run`).
SYSTEMCTL_STAND_IN = """#!/bin/bash
# systemctl stand-in of the MariaDB container testbed: the unit is the node's container
cmd=$1; shift; [ "${1:-}" = --quiet ] && shift
case "$cmd" in
  is-active) [ "$(docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" = true ] ;;
  start) docker start "$1" >/dev/null ;;
  stop) docker stop -t 30 "$1" >/dev/null ;;
  restart) docker restart -t 30 "$1" >/dev/null ;;
  *) echo "systemctl stand-in: $cmd not supported" >&2; exit 2 ;;
esac
"""


class Testbed(ContainerTestbed):
    SUBNET_OCTETS = range(230, 231)  # this layer's testbed range (192.168.230.0/24)

    def __init__(self):
        super().__init__(PREFIX)
        def password() -> str:
            return "tb-" + secrets.token_urlsafe(12)

        # the credentials' default user names (keybuzz/credentials.py), fresh passwords
        self.accounts = Accounts(root_password=password(), app_user="erpnext", app_password=password(),
                                 sst_user="mariabackup", sst_password=password(), monitor_user="proxysql_monitor",
                                 monitor_password=password())
        self.image = ""
        self.log: list[str] = []  # what converge() did, for the tests' messages

    # ------------------------------------------------------------ layout
    def node_ip(self, i: int) -> str:
        return self.ip(11 + i)

    def settings(self, i: int):
        # small memory footprint on a shared 2-core machine; everything else as in production
        return replace(DEFAULT, base_dir=str(self.dir / NAMES[i]), innodb_buffer_pool_size="64M",
                       gcache_size="64M", wait_seconds=240)

    @property
    def network_cidr(self) -> str:
        return f"{self.prefix}.0/24"

    def start(self) -> None:
        self.image = images.build("mariadb-galera", progress=lambda m: None)
        self.create_network()
        users = self.dir / "secrets" / "users.sql"
        users.parent.mkdir(mode=0o700)
        users.write_text(render_users_sql(self.accounts, self.network_cidr))
        users.chmod(0o600)
        peers = [self.node_ip(i) for i in range(len(NAMES))]
        for i, name in enumerate(NAMES):
            s = self.settings(i)
            Path(s.base_dir).mkdir()
            (Path(s.conf_dir) / "bootstrap.d").mkdir(parents=True)
            (Path(s.conf_dir) / "my.cnf").write_text(render_my_cnf(name, self.node_ip(i), peers, s))
            sst = Path(s.conf_dir) / "sst-auth.cnf"
            sst.write_text(render_sst_auth(self.accounts.sst_user, self.accounts.sst_password))
            os.chown(sst, s.uid, 0)
            sst.chmod(0o600)
            Path(s.data_dir).mkdir()
            os.chown(s.data_dir, s.uid, 0)
            Path(s.data_dir).chmod(0o700)
            # what the deploy installs for the node script (keybuzz-mariadb), at this node's paths
            Path(s.secrets_dir).mkdir(mode=0o700)
            shutil.copy(users, Path(s.secrets_dir) / "users.sql")
            shutil.copy(ROOT / "templates" / "mariadb" / "new-cluster.cnf", Path(s.base_dir) / "new-cluster.cnf")
            script = Path(s.base_dir) / "keybuzz-mariadb"
            script.write_text(render_node_script(self.image, self.accounts.app_user, len(NAMES), s))
            script.chmod(0o755)
        shim = self.dir / "bin" / "systemctl"
        shim.parent.mkdir()
        shim.write_text(SYSTEMCTL_STAND_IN)
        shim.chmod(0o755)

    # ------------------------------------------------------------ one node
    def container_name(self, i: int) -> str:
        return f"{PREFIX}{NAMES[i]}"

    def _create(self, i: int) -> None:
        s = self.settings(i)
        c = (DockerContainer(self.image).with_name(self.container_name(i))
             .with_command(mysqld_command(s))
             .with_volume_mapping(s.data_dir, s.container_data, "rw")
             .with_volume_mapping(s.conf_dir, s.container_conf_dir, "ro"))
        assert self.network is not None
        c = c.with_kwargs(network=self.network.name, user=f"{s.uid}:0", entrypoint=[s.mysqld], hostname=NAMES[i],
                          networking_config={self.network.name: EndpointConfig("1.41",
                                                                               ipv4_address=self.node_ip(i))})
        c.start()
        self.containers[NAMES[i]] = c

    def running(self, i: int) -> bool:
        if NAMES[i] not in self.containers:
            return False
        wrapped = self.docker(NAMES[i])
        wrapped.reload()
        return wrapped.status == "running"

    def start_node(self, i: int) -> None:
        """Start node i's server (same container and arguments after a kill: `docker start`)."""
        if NAMES[i] not in self.containers:
            self._create(i)
        elif not self.running(i):
            self.docker(NAMES[i]).start()

    def kill(self, i: int) -> None:
        """SIGKILL node i's server: a power cut for its data (nothing flushed beyond what InnoDB synced)."""
        self.docker(NAMES[i]).kill()

    def kill_all(self) -> None:
        for i in range(len(NAMES)):
            if self.running(i):
                self.kill(i)

    def logs(self, i: int, tail: int = 60) -> str:
        out = subprocess.run(["docker", "logs", "--tail", str(tail), self.container_name(i)], capture_output=True,
                             text=True, timeout=30)
        return out.stdout + out.stderr

    def root_sql(self, i: int, sql: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """SQL as root@localhost over the socket inside node i (unix_socket authentication), SQL on stdin."""
        s = self.settings(i)
        return subprocess.run(["docker", "exec", "-i", "-u", "0", self.container_name(i), s.mysql,
                               f"--defaults-file={s.container_conf_dir}/my.cnf", "-N", "-B"], input=sql,
                              capture_output=True, text=True, timeout=timeout)

    def status(self, i: int) -> dict[str, str] | None:
        """wsrep status of node i over TCP (the monitor user, as ProxySQL's monitor reads it)."""
        if not self.running(i):
            return None
        return node_status(self.node_ip(i), self.accounts.monitor_user, self.accounts.monitor_password,
                           timeout=2) or self._status_over_socket(i)

    def _status_over_socket(self, i: int) -> dict[str, str] | None:
        # before users.sql ran (first bootstrap) the monitor user does not exist yet
        out = self.root_sql(i, "SHOW GLOBAL STATUS LIKE 'wsrep%';", timeout=20)
        if out.returncode != 0:
            return None
        return dict(line.split("\t", 1) for line in out.stdout.splitlines() if "\t" in line)

    def node_state(self, i: int) -> galera.NodeState:
        """What the deploy's `keybuzz-mariadb state` reports for node i, read the same way: status, grastate.dat,
        and for a stopped node with seqno -1 the position `mysqld --wsrep-recover` finds."""
        s = self.settings(i)
        grastate_path = Path(s.grastate)
        grastate = galera.parse_grastate(grastate_path.read_text()) if grastate_path.exists() else None
        running = self.running(i)
        st = self.status(i) or {}
        recovered = self.recover(i) if grastate and grastate.seqno == -1 and not running else None
        return galera.NodeState(
            NAMES[i], running=running, cluster_status=st.get("wsrep_cluster_status", ""),
            local_state=st.get("wsrep_local_state_comment", ""), cluster_size=int(st.get("wsrep_cluster_size") or 0),
            cluster_uuid=st.get("wsrep_cluster_state_uuid", ""), grastate=grastate, recovered=recovered,
            last_committed=int(st["wsrep_last_committed"]) if st.get("wsrep_last_committed") else None)

    def recover(self, i: int) -> galera.Position | None:
        """`mysqld --wsrep-recover` on node i's data (server stopped): the last committed position in InnoDB."""
        s = self.settings(i)
        args = ["docker", "run", "--rm", "--network", "none", "--user", f"{s.uid}:0", "--entrypoint", s.mysqld,
                "-v", f"{s.data_dir}:{s.container_data}", "-v", f"{s.conf_dir}:{s.container_conf_dir}:ro",
                self.image, mysqld_command(s), "--wsrep-recover"]
        out = subprocess.run(args, capture_output=True, text=True, timeout=300)
        return galera.parse_recovered(out.stdout + out.stderr)

    def _install_db(self, i: int) -> None:
        s = self.settings(i)
        run_args, command = install_db_args(s)
        out = subprocess.run(["docker", "run", "--rm", "--network", "none", *run_args, self.image, *command],
                             capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"mysql_install_db failed on {NAMES[i]}: {out.stderr[-1500:]}")

    def bootstrap(self, i: int) -> None:
        """Start a new cluster from node i (as `keybuzz-mariadb bootstrap`): data initialised when empty,
        safe_to_bootstrap: 1, the transient new-cluster.cnf, wait for Primary, remove new-cluster.cnf."""
        s = self.settings(i)
        if not (Path(s.data_dir) / "mysql").is_dir():
            self._install_db(i)
        grastate = Path(s.grastate)
        if grastate.exists():
            grastate.write_text(grastate.read_text().replace("safe_to_bootstrap: 0", "safe_to_bootstrap: 1"))
        flag = Path(s.conf_dir) / "bootstrap.d" / "new-cluster.cnf"
        shutil.copy(ROOT / "templates" / "mariadb" / "new-cluster.cnf", flag)
        try:
            self.start_node(i)
            self.wait_node(i, lambda st: st.get("wsrep_cluster_status") == "Primary"
                           and st.get("wsrep_local_state_comment") == "Synced", s.wait_seconds, "Primary")
        finally:
            flag.unlink(missing_ok=True)

    def wait_node(self, i: int, ok, seconds: float, what: str) -> dict:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not self.running(i):
                raise RuntimeError(f"{NAMES[i]} exited while waiting for {what}:\n{self.logs(i)}")
            st = self.status(i)
            if st and ok(st):
                return st
            time.sleep(1)
        raise TimeoutError(f"{NAMES[i]} not {what} after {seconds:.0f}s:\n{self.logs(i)}")

    def apply_users(self, i: int) -> None:
        out = self.root_sql(i, (self.dir / "secrets" / "users.sql").read_text())
        if out.returncode != 0:
            raise RuntimeError(f"users.sql failed on {NAMES[i]}: {out.stderr[-1000:]}")

    # ------------------------------------------------------------ the layer's logic
    def states(self) -> list[galera.NodeState]:
        return [self.node_state(i) for i in range(len(NAMES))]

    def converge(self, with_node_script: bool = False) -> list[str]:
        """The layer's keybuzz.mariadb.galera.converge on these containers (the deploy runs the same function
        over SSH); returns what it did, e.g. ['bootstrap maria-02', 'start maria-01', 'start maria-03'].
        `with_node_script`: act through the deploy's node script (keybuzz-mariadb state / bootstrap / start /
        apply-users), as the deploy does, with SYSTEMCTL_STAND_IN for systemd (the containers must exist)."""
        done = galera.converge(NAMES, _ScriptNodes(self) if with_node_script else _ContainerNodes(self))
        self.log.extend(done)
        return done

    def script(self, i: int, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
        """Run node i's keybuzz-mariadb (rendered at its paths) against its container."""
        env = {**os.environ, "PATH": f"{self.dir / 'bin'}:{os.environ.get('PATH', '')}",
               "KEYBUZZ_MARIADB_SERVICE": self.container_name(i)}
        return subprocess.run([str(Path(self.settings(i).base_dir) / "keybuzz-mariadb"), *args], env=env,
                              capture_output=True, text=True, timeout=timeout)

    def wait_synced(self, i: int, seconds: float = 300) -> dict:
        return self.wait_node(i, lambda st: st.get("wsrep_cluster_status") == "Primary"
                              and st.get("wsrep_local_state_comment") == "Synced", seconds, "Synced")

    def wait_cluster(self, size: int = 3, seconds: float = 300) -> None:
        deadline = time.monotonic() + seconds
        for i in range(len(NAMES)):
            self.wait_node(i, lambda st: st.get("wsrep_cluster_size") == str(size)
                           and st.get("wsrep_local_state_comment") == "Synced",
                           max(5.0, deadline - time.monotonic()), f"Synced in a cluster of {size}")


class _ContainerNodes:
    """galera.Nodes on the testbed's containers (the deploy's are keybuzz-mariadb over SSH)."""

    def __init__(self, tb: Testbed):
        self.tb = tb

    def state(self, name: str) -> galera.NodeState:
        return self.tb.node_state(NAMES.index(name))

    def stop(self, name: str) -> None:
        self.tb.docker(name).stop(timeout=30)

    def bootstrap(self, name: str) -> None:
        self.tb.bootstrap(NAMES.index(name))

    def apply_users(self, name: str) -> None:
        self.tb.apply_users(NAMES.index(name))

    def start(self, name: str) -> None:
        i = NAMES.index(name)
        if self.tb.running(i):  # running without a Primary component: restart it (as `keybuzz-mariadb start`)
            self.tb.docker(name).restart(timeout=30)
        else:
            self.tb.start_node(i)
        self.tb.wait_synced(i)


class _ScriptNodes:
    """galera.Nodes through the deploy's node script, as deploys/mariadb.py's SshNodes runs it over SSH."""

    def __init__(self, tb: Testbed):
        self.tb = tb

    def _run(self, name: str, *args: str) -> list[str]:
        out = self.tb.script(NAMES.index(name), *args)
        if out.returncode != 0:
            raise RuntimeError(f"{name}: keybuzz-mariadb {' '.join(args)} failed: {out.stderr[-1500:]}")
        return out.stdout.splitlines()

    def state(self, name: str) -> galera.NodeState:
        return galera.parse_node_state(name, self._run(name, "state"))

    def stop(self, name: str) -> None:
        self.tb.docker(name).stop(timeout=30)  # the deploy: systemctl stop mariadb

    def bootstrap(self, name: str) -> None:
        self._run(name, "bootstrap")

    def apply_users(self, name: str) -> None:
        self._run(name, "apply-users")

    def start(self, name: str) -> None:
        self._run(name, "start")
