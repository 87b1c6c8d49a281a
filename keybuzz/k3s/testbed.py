"""The K3s deploy against real SSH hosts, `pyinfra --dry` only: 3 + 5 lab host containers (systemd, sshd; the
lab's `host` image) on a bridge of their own (192.168.220.0/24), a servers.tsv, credentials and known_hosts of
their own. No K3s binary exists on any registry this project reaches, so the run is the labelled dry run
without artifacts (keybuzz/k3s/settings.py): pyinfra connects, gathers every fact and prepares every operation.

    with K3sDryBed() as bed:
        result = bed.deploy(verbose=3)       # runner.DeployResult of `pyinfra -y --dry --json ... deploys/k3s.py`
        bed.plan(result)                     # [(operation names, hosts with a change)] in execution order
"""

from __future__ import annotations

import json
import subprocess
import time

from keybuzz import credentials, runner
from keybuzz.k3s import settings as K
from keybuzz.layers import LAYERS
from keybuzz.testbed import ContainerTestbed

PREFIX = "keybuzz-k3s-test-"
SUBNET = "192.168.220.0/24"
HOSTS = [(f"k3s-master-0{i}", 80 + i, "k3s_masters") for i in (1, 2, 3)] + \
        [(f"k3s-worker-0{i}", 90 + i, "k3s_workers") for i in (1, 2, 3, 4, 5)]
SSH_WAIT_SECONDS = 120


def _docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


class K3sDryBed(ContainerTestbed):
    def __init__(self):
        super().__init__("keybuzz-k3s-test-")
        self.prefix = SUBNET.rsplit(".", 1)[0]
        self.names: list[str] = []
        self.env: dict[str, str] = {}

    def start(self) -> None:
        from keybuzz.lab import images

        image = images.build("host", progress=lambda _: None)
        _docker("network", "create", "--subnet", SUBNET, f"{PREFIX}net")
        key = self.dir / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        for name, last, _ in HOSTS:
            _docker("run", "-d", "--name", PREFIX + name, "--hostname", name, "--network", f"{PREFIX}net",
                    "--ip", self.ip(last), *images.HOST_RUN_ARGS,
                    "-v", f"{key}.pub:{images.LAB_AUTHORIZED_FILE}:ro", image)
            self.names.append(PREFIX + name)
        known = []
        deadline = time.monotonic() + SSH_WAIT_SECONDS
        for name, last, _ in HOSTS:
            while True:  # bounded: sshd makes its host keys at first boot
                r = _docker("exec", PREFIX + name, "sh", "-c", "systemctl is-active -q ssh && "
                            "cat /etc/ssh/ssh_host_ed25519_key.pub", check=False)
                if r.returncode == 0 and r.stdout.strip():
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sshd not ready on {PREFIX + name} after {SSH_WAIT_SECONDS} s")
                time.sleep(1)
            known.append(f"{self.ip(last)} {' '.join(r.stdout.split()[:2])}")
        (self.dir / "known_hosts").write_text("\n".join(known) + "\n")
        (self.dir / "servers.tsv").write_text("hostname\tprivate_ip\trole\tnote\n" + "".join(
            f"{name}\t{self.ip(last)}\t{role}\tk3s dry-run testbed\n" for name, last, role in HOSTS))
        credentials.init(self.dir / "credentials", bricks=["k3s"])
        self.env = {
            "KEYBUZZ_SERVERS": str(self.dir / "servers.tsv"),
            "KEYBUZZ_CREDENTIALS_DIR": str(self.dir / "credentials"),
            "KEYBUZZ_SSH_USER": "root",
            "KEYBUZZ_SSH_KEY": str(key),
            "KEYBUZZ_SSH_KNOWN_HOSTS": str(self.dir / "known_hosts"),
            "KEYBUZZ_PRIVATE_NETWORK": SUBNET,
            "KEYBUZZ_VERSIONS": "",
            "KEYBUZZ_K3S_ARTIFACTS": str(self.dir / "no-artifacts"),
            K.DRY_WITHOUT_ARTIFACTS_ENV: "1",
        }

    def stop(self) -> None:
        for name in self.names:
            _docker("rm", "-f", "-v", name, check=False)
        self.names.clear()
        _docker("network", "rm", f"{PREFIX}net", check=False)
        super().stop()

    def token(self) -> str:
        return credentials.load("k3s", credentials.FileBackend(self.dir / "credentials"))["K3S_TOKEN"].unmask()

    def deploy(self, verbose: int = 0, dry_without_artifacts: bool = True, versions_override: str = ""
               ) -> runner.DeployResult:
        env = {**self.env, "KEYBUZZ_VERSIONS": versions_override}
        if not dry_without_artifacts:
            env[K.DRY_WITHOUT_ARTIFACTS_ENV] = ""
        return runner.deploy(LAYERS["k3s"], verbose=verbose, extra=("--dry", "--json"), env=env, timeout=600)

    @staticmethod
    def plan(result: runner.DeployResult) -> list[tuple[list[str], list[str]]]:
        """[(names, hosts with a change or a conditional change)] of pyinfra's --json plan, in execution order."""
        line = next(line for line in result.output.splitlines() if line.startswith('{"plan"'))
        return [(op["names"], op["hosts_with_change"] + op["hosts_with_conditional_change"])
                for op in json.loads(line)["plan"]]
