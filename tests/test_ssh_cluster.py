"""Strict host keys against a real sshd (README: "strict host keys and known_hosts required"; keybuzz/ssh.py): one
lab `host` container (systemd + sshd) on a bridge of its own. With its real key in known_hosts both paths the
project uses reach it (ssh.run for checks, pyinfra through inventory.py and group_data/all.py for deploys); with
another key for the same address both refuse before any command runs on it."""

from __future__ import annotations

import subprocess
import uuid

import pytest
from docker.types import EndpointConfig
from testcontainers.core.container import DockerContainer

from helpers import run, write_tsv
from keybuzz import ssh
from keybuzz.lab import images
from keybuzz.testbed import ContainerTestbed
from keybuzz.waiting import wait_for


class OneHost(ContainerTestbed):
    """One fresh lab host at <bridge>.11, the test's key authorized for root; `known_key`: its ed25519 host key."""

    SUBNET_OCTETS = range(245, 250)  # 210 (minio) and 230 (mariadb) are single-bridge testbeds: kept clear

    def __init__(self):
        super().__init__("keybuzz-ssh-test-")
        self.known_key = ""

    def start(self) -> None:
        image = images.build("host", progress=lambda m: None)
        self.create_network()
        key = self.dir / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        (self.dir / "id_ed25519.pub").chmod(0o644)
        container = DockerContainer(image).with_name(f"keybuzz-ssh-test-{uuid.uuid4().hex[:8]}").with_kwargs(
            network=self.network.name, hostname="db-01",
            networking_config={self.network.name: EndpointConfig("1.41", ipv4_address=self.ip(11))},
            cap_add=["ALL"], cap_drop=["SYS_RESOURCE"], security_opt=["seccomp=unconfined", "apparmor=unconfined"],
            cgroupns="host", tmpfs={"/run": "", "/run/lock": ""}, device_cgroup_rules=["a *:* rwm"],
        ).with_volume_mapping("/sys/fs/cgroup", "/sys/fs/cgroup", "rw").with_volume_mapping(
            f"{key}.pub", images.LAB_AUTHORIZED_FILE, "ro")
        container.start()
        self.containers["host"] = container
        wait_for(lambda: self.exec("systemctl is-active ssh.service >/dev/null && "
                                   "test -s /etc/ssh/ssh_host_ed25519_key.pub")[0] == 0, 90, 1, what="sshd")
        self.known_key = " ".join(self.exec("cat /etc/ssh/ssh_host_ed25519_key.pub")[1].split()[:2])

    def exec(self, cmd: str) -> tuple[int, str]:
        code, out = self.docker("host").exec_run(["sh", "-c", cmd])
        return code, out.decode(errors="replace")

    def env(self, known_hosts_line: str, name: str) -> dict[str, str]:
        known = self.dir / f"known_hosts-{name}"
        known.write_text(known_hosts_line + "\n")
        known.chmod(0o644)
        tsv = write_tsv(self.dir / "servers.tsv", [("db-01", self.ip(11), "db")])
        return {"KEYBUZZ_SERVERS": str(tsv), "KEYBUZZ_PRIVATE_NETWORK": f"{self.prefix}.0/24",
                "KEYBUZZ_SSH_USER": "root", "KEYBUZZ_SSH_KEY": str(self.dir / "id_ed25519"),
                "KEYBUZZ_SSH_KNOWN_HOSTS": str(known)}


@pytest.fixture(scope="module")
def host():
    with OneHost() as bed:
        yield bed


def _other_key(bed) -> str:
    """A well-formed ed25519 host key that is not the host's (a man in the middle's, or a reinstalled server's)."""
    path = bed.dir / f"other-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def _pyinfra_touch(env: dict[str, str], marker: str) -> subprocess.CompletedProcess:
    """`pyinfra inventory.py exec` as a deploy connects: the project's inventory and group_data/all.py."""
    return run(["pyinfra", "-y", "inventory.py", "exec", "--", f"touch {marker}"], env=env, timeout=120)


def test_the_right_host_key_lets_checks_and_pyinfra_in(host):
    env = host.env(f"{host.ip(11)} {host.known_key}", "right")
    result = ssh.run(host.ip(11), "hostname", timeout=30, environ=env)
    assert result.returncode == 0 and result.stdout.strip() == "db-01", result.stderr
    marker = f"/tmp/pyinfra-ran-{uuid.uuid4().hex[:8]}"
    deployed = _pyinfra_touch(env, marker)
    assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]
    assert host.exec(f"test -e {marker}")[0] == 0


def test_another_host_key_for_the_address_is_refused_before_any_command_runs(host):
    env = host.env(f"{host.ip(11)} {_other_key(host)}", "wrong")
    ssh.require_known_hosts([("db-01", host.ip(11))], env)  # preflight passes: a key is there, just not its
    marker = f"/tmp/ssh-ran-{uuid.uuid4().hex[:8]}"
    result = ssh.run(host.ip(11), f"touch {marker}", timeout=30, environ=env)
    assert result.returncode == 255, result.stdout + result.stderr
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in result.stderr and "verification failed" in result.stderr
    marker_pyinfra = f"/tmp/pyinfra-ran-{uuid.uuid4().hex[:8]}"
    deployed = _pyinfra_touch(env, marker_pyinfra)
    output = deployed.stdout + deployed.stderr
    assert deployed.returncode != 0, output[-3000:]
    assert f"SSH host key error (Host key for {host.ip(11)} does not match.)" in output, output[-3000:]
    assert host.exec(f"ls {marker} {marker_pyinfra} 2>&1")[1].count("No such file") == 2


def test_an_unknown_host_is_refused_too_not_trusted_on_first_use(host):
    """known_hosts holds a key for another address only: strict checking never adds the host's key by itself."""
    env = host.env(f"{host.prefix}.99 {host.known_key}", "other-address")
    result = ssh.run(host.ip(11), "true", timeout=30, environ=env)
    assert result.returncode == 255 and "Host key verification failed" in result.stderr, result.stderr
    known = (host.dir / "known_hosts-other-address").read_text()
    assert host.ip(11) not in known  # nothing was learnt
