"""What the container testbeds (keybuzz/<layer>/testbed.py) share: a private Docker
bridge of their own, a scratch directory, and removal of everything on exit.

Traffic goes only to the containers a testbed creates: its bridge is a free 192.168.x.0/24, never
10.0.0.0/8 and never the lab's 172.30.0.0/24.

Example::

    class MyBed(ContainerTestbed):
        def start(self):
            self.create_network()
    with MyBed("keybuzz-my-tb-") as tb:
        tb.ip(11)
    # -> '192.168.173.11'
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # the reaper image cannot be pulled here

import docker  # noqa: E402
from docker.types import IPAMConfig, IPAMPool  # noqa: E402
from testcontainers.core.container import DockerContainer  # noqa: E402
from testcontainers.core.network import Network  # noqa: E402


def free_subnet(client, third_octets: range) -> str:
    """A 192.168.<x>.0/24 with x in `third_octets` that no Docker network uses."""
    used = {c["Subnet"] for n in client.networks.list() for c in (n.attrs.get("IPAM", {}).get("Config") or [])
            if "Subnet" in c}
    candidates = [f"192.168.{x}.0/24" for x in third_octets if f"192.168.{x}.0/24" not in used]
    if not candidates:
        raise RuntimeError(f"no free 192.168.x.0/24 for x in {third_octets.start}-{third_octets.stop - 1}: "
                           "remove leftover Docker networks (docker network prune)")
    return random.choice(candidates)


class ContainerTestbed:
    """Base of the testbeds: `with Bed(...) as tb:` starts it; on exit containers, network and files go."""

    __test__ = False  # not a pytest test class
    SUBNET_OCTETS = range(150, 250)  # subclasses narrow it so two testbeds never pick the same bridge

    def __init__(self, dir_prefix: str):
        self.client = docker.from_env()
        self.dir = Path(tempfile.mkdtemp(prefix=dir_prefix))
        self.containers: dict[str, DockerContainer] = {}
        self.network: Network | None = None
        self.prefix = ""

    def ip(self, last: int) -> str:
        return f"{self.prefix}.{last}"

    def create_network(self) -> None:
        subnet = free_subnet(self.client, self.SUBNET_OCTETS)
        self.prefix = subnet.rsplit(".", 1)[0]
        self.network = Network(docker_network_kw={"ipam": IPAMConfig(pool_configs=[IPAMPool(subnet=subnet)])})
        self.network.create()

    def start(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        for c in self.containers.values():
            try:
                c.stop()
            except Exception:  # noqa: BLE001 - best effort cleanup, the next one must still go
                pass
        self.containers.clear()
        if self.network and self.network._network is not None:
            try:
                self.network.remove()
            except Exception:  # noqa: BLE001
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def docker(self, name: str):
        """The docker-py container object of `name`."""
        return self.containers[name].get_wrapped_container()
