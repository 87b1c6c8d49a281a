"""A throw-away S3 PROTOCOL STAND-IN in a container, for the S3 side of the minio layer's client and checks.

No registry this project reaches ships MinIO, so there is no MinIO here: this testbed runs Debian's moto S3
server (lab/images/s3-standin, `moto_server`: the S3 REST API with AWS Signature V4) on its own private bridge
(192.168.210.0/24), named `keybuzz-minio-test-s3-standin-*`. It has no MinIO admin API, no /minio/health/*,
no distributed mode or erasure coding: what it proves is that keybuzz.minio.client / check speak S3 correctly
(signing, buckets, put/get/delete, the probe, the perf loop) and report a dead endpoint as red.

Example::

    with S3StandIn() as tb:
        client = s3(tb.endpoint, tb.access_key, tb.secret_key)
        round_trip(client, "keybuzz-check").ok    # True
        tb.pause(); ...; tb.unpause()
"""

from __future__ import annotations

import secrets

from docker.types import EndpointConfig  # noqa: E402
from testcontainers.core.container import DockerContainer  # noqa: E402

from keybuzz.lab import images  # noqa: E402
from keybuzz.minio.settings import S3_PORT  # noqa: E402
from keybuzz.testbed import ContainerTestbed  # noqa: E402
from keybuzz.waiting import wait_for  # noqa: E402

NAME_PREFIX = "keybuzz-minio-test-"
IMAGE = "s3-standin"


class S3StandIn(ContainerTestbed):
    """One moto S3 server (a protocol stand-in, not MinIO) at <bridge>.10:9000; removed on exit."""

    SUBNET_OCTETS = range(210, 211)  # this layer's testbed range: 192.168.210.0/24

    def __init__(self):
        super().__init__("keybuzz-minio-tb-")
        # moto accepts any key pair; random ones still prove the client signs with what it is given
        self.access_key = "kbtest" + secrets.token_hex(4)
        self.secret_key = secrets.token_urlsafe(24)

    @property
    def address(self) -> str:
        return self.ip(10)

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{S3_PORT}"

    def start(self) -> None:
        image = images.build(IMAGE, progress=lambda m: None)
        self.create_network()
        assert self.network is not None
        name = f"{NAME_PREFIX}s3-standin-{self.prefix.split('.')[-1]}"
        container = DockerContainer(image).with_name(name).with_kwargs(
            network=self.network.name,
            networking_config={self.network.name: EndpointConfig("1.41", ipv4_address=self.address)})
        container.start()
        self.containers["s3"] = container
        wait_for(self._answers, 60, 0.5, what=f"S3 stand-in at {self.endpoint}")

    def _answers(self) -> bool:
        import urllib.request
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/", timeout=2) as answer:
                return answer.status < 500
        except OSError as e:
            return getattr(e, "code", 0) in (200, 403)

    def pause(self) -> None:
        self.docker("s3").pause()

    def unpause(self) -> None:
        self.docker("s3").unpause()


class FreshHosts(ContainerTestbed):
    """Three fresh Debian hosts (the lab's `host` image: systemd + sshd, no Docker, nothing deployed) standing for
    minio-01..03 at the design's last octets on this layer's bridge (192.168.210.134/.131/.132), with the design's
    names in their /etc/hosts (as the base OS layer's block puts them), for `pyinfra --dry` runs of
    deploys/minio.py through the real inventory, preflight and SSH with strict host keys.

    `env` points the deploy code at them (servers.tsv, credentials, SSH key and known_hosts, private network,
    the lab's versions file). Containers are named keybuzz-minio-test-host-<name>.
    """

    SUBNET_OCTETS = range(210, 211)

    def __init__(self, names_in_hosts: bool = True, share_with: ContainerTestbed | None = None):
        """`share_with`: a running testbed whose bridge these hosts join (this layer has one /24)."""
        super().__init__("keybuzz-minio-hosts-")
        self.names_in_hosts = names_in_hosts
        self.shared = share_with
        self.env: dict[str, str] = {}

    def create_network(self) -> None:
        if self.shared is None:
            super().create_network()
        else:
            self.prefix = self.shared.prefix

    @property
    def _network_name(self) -> str:
        network = self.shared.network if self.shared is not None else self.network
        assert network is not None
        return network.name

    def nodes(self) -> list[tuple[str, str]]:
        from keybuzz.minio.settings import design_nodes

        return design_nodes(f"{self.prefix}.0/24")

    def start(self) -> None:
        import os
        import subprocess

        from keybuzz import credentials
        from keybuzz.minio.settings import dns_names

        image = images.build("host", progress=lambda m: None)
        self.create_network()
        key = self.dir / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        os.chmod(f"{key}.pub", 0o644)
        nodes = self.nodes()
        extra_hosts = dns_names(nodes) if self.names_in_hosts else {}
        for name, ip in nodes:
            container = DockerContainer(image).with_name(f"{NAME_PREFIX}host-{name}").with_kwargs(
                network=self._network_name, hostname=name, extra_hosts=extra_hosts,
                networking_config={self._network_name: EndpointConfig("1.41", ipv4_address=ip)},
                cap_add=["ALL"], cap_drop=["SYS_RESOURCE"], security_opt=["seccomp=unconfined",
                                                                          "apparmor=unconfined"],
                cgroupns="host", tmpfs={"/run": "", "/run/lock": ""},
                device_cgroup_rules=["a *:* rwm"],
            ).with_volume_mapping("/sys/fs/cgroup", "/sys/fs/cgroup", "rw").with_volume_mapping(
                f"{key}.pub", images.LAB_AUTHORIZED_FILE, "ro")
            container.start()
            self.containers[name] = container
        known = []
        for name, ip in nodes:
            wait_for(lambda n=name: self.exec(n, "systemctl is-active ssh.service >/dev/null && "
                                                 "test -s /etc/ssh/ssh_host_ed25519_key.pub")[0] == 0,
                     90, 1, what=f"sshd on {name}")
            keytype, pub = self.exec(name, "cat /etc/ssh/ssh_host_ed25519_key.pub")[1].split()[:2]
            known.append(f"{ip},{name} {keytype} {pub}")
        (self.dir / "known_hosts").write_text("\n".join(known) + "\n")
        os.chmod(self.dir / "known_hosts", 0o600)
        tsv = self.dir / "servers.tsv"
        tsv.write_text("hostname\tprivate_ip\trole\tnote\n"
                       + "".join(f"{name}\t{ip}\tminio\tkeybuzz-minio-test host\n" for name, ip in nodes))
        self.env = {
            "KEYBUZZ_SERVERS": str(tsv),
            "KEYBUZZ_PRIVATE_NETWORK": f"{self.prefix}.0/24",
            "KEYBUZZ_VERSIONS": str(images.ROOT / "lab" / "versions.lab.yaml"),
            "KEYBUZZ_CREDENTIALS_DIR": str(self.dir / "credentials"),
            "KEYBUZZ_SSH_USER": "root",
            "KEYBUZZ_SSH_KEY": str(key),
            "KEYBUZZ_SSH_KNOWN_HOSTS": str(self.dir / "known_hosts"),
        }
        credentials.init(self.dir / "credentials", bricks=["minio"])

    def exec(self, name: str, cmd: str) -> tuple[int, str]:
        code, out = self.docker(name).exec_run(["sh", "-c", cmd])
        return code, out.decode(errors="replace")
