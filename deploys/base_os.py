"""Base OS layer (design §G, first layer): what every host needs before its service layer runs.

    pyinfra -y inventory.py deploys/base_os.py         # or: invoke layer --name base_os [--lab]

On every host (all roles but install):
  * Docker Engine from Debian's archive at the version pinned in versions.yaml (not on K3s nodes: K3s brings
    containerd, and Docker's iptables FORWARD DROP policy would break pod traffic between nodes)
    (`docker_engine_package`), held so that `apt upgrade` does not move it; services run as
    containers (§B, §F) under systemd units (keybuzz/ops.py).
  * /etc/docker/daemon.json: the private registry / mirror settings of versions.yaml
    (`insecure_registries`, `registry_mirror`); dockerd restarts only when this file changed.
  * time sync: systemd-timesyncd, enabled; started where the machine owns its clock (not inside a
    container, where systemd itself refuses: ConditionVirtualization=!container).
  * kernel settings the services need (/etc/sysctl.d/60-keybuzz.conf), applied now when /proc/sys
    is writable; a container's /proc/sys is read-only, then the file only takes effect at boot and
    the run says so.
  * /opt/keybuzz/<service> directories of the host's role (root, 0755: the service layer protects
    what is below, e.g. data 0750 and secrets 0600/0400, and manages the same mode on it).
  * a host firewall (nftables, its own table): the role's service ports (OPEN_PORTS of each layer's
    settings) and SSH from the private network, everything from the role's TRUSTED_NETWORKS (K3s pods and
    services), SSH from $KEYBUZZ_ADMIN_NETWORKS, nothing else inbound.
  * /etc/hosts block naming every host of servers.tsv, plus minio-0N.keybuzz.io and s3.keybuzz.io
    (-> minio-01) from design §B.
A second run changes nothing.
"""

import os
from io import BytesIO

from pyinfra import host, logger
from pyinfra.api import FileUploadCommand, StringCommand, operation
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import FileContents
from pyinfra.facts.server import Command, Sysctl
from pyinfra.operations import files, server, systemd
from pyinfra.operations.util import any_changed

from keybuzz.base_os.settings import (
    FIREWALL_FILE,
    HOSTS_BEGIN,
    HOSTS_END,
    NO_DOCKER_ROLES,
    SYSCTL_FILE,
    SYSCTLS,
    admin_networks,
    open_ports,
    trusted_networks,
)
from keybuzz.context import layer_context
from keybuzz.layers import data_dirs, host_ready_commands
from keybuzz.ops import apt_packages, restart_if, template, validated_file
from keybuzz.render import render

ctx = layer_context("base_os")



@operation()
def etc_hosts_block(block: str, path: str = "/etc/hosts"):
    """Put `block` (from its BEGIN marker line to its END marker line) at the end of `path`.

    Rewrites the file in place when it cannot be replaced: a container's /etc/hosts is a bind
    mount that `mv` cannot replace (pyinfra's files.block does).

    Example::

        etc_hosts_block(name="Name every host in /etc/hosts", block=render("base_os/hosts.j2", ...))
    """
    wanted = [line.strip() for line in block.strip("\n").splitlines()]
    current = host.get_fact(FileContents, path=path) or []
    start = next((i for i, line in enumerate(current) if line.startswith(HOSTS_BEGIN)), None)
    if start is not None:
        end = next((i for i in range(start, len(current)) if current[i].startswith(HOSTS_END)), len(current) - 1)
        if [line.strip() for line in current[start:end + 1]] == wanted:
            host.noop(f"{path} names every host")
            return
    new_block, new_file = f"{path}.keybuzz-block", f"{path}.keybuzz-new"
    yield FileUploadCommand(BytesIO(("\n".join(wanted) + "\n").encode()), new_block)
    # the file without our old block, then the new block; replaced atomically when possible
    yield StringCommand(
        f"awk '/^{HOSTS_BEGIN}/{{s=1}} !s{{print}} /^{HOSTS_END}/{{s=0}}' {path} > {new_file}"
        f" && cat {new_block} >> {new_file} && chmod 644 {new_file}"
        f" && {{ mv -f {new_file} {path} 2>/dev/null || cat {new_file} > {path}; }}"
        f" && rm -f {new_block} {new_file}"
    )


_noted: set[str] = set()


@operation()
def apply_sysctls(path: str, wanted: dict):
    """Apply the settings of `path` now if the running values differ and /proc/sys is writable.

    In a container /proc/sys is read-only: nothing can be applied, the run says so and reports no
    change (the values are then the machine's; at boot of a real host systemd-sysctl applies `path`).
    """
    current = host.get_fact(Sysctl, keys=list(wanted))
    differ = {k: v for k, v in wanted.items() if current.get(k) != v}
    if not differ:
        host.noop("kernel settings already in effect")
        return
    probe = " && ".join(f"test -w /proc/sys/{k.replace('.', '/')}" for k in differ)
    if host.get_fact(Command, command=f"{probe} && echo writable || echo read-only") != "writable":
        now = ", ".join(f"{k}={current.get(k, '?')}" for k in differ)
        note = f"/proc/sys is read-only here (a container): {path} is in place, not applied (now {now})"
        if note not in _noted:  # once per host and run: a warning, not a change
            _noted.add(note)
            logger.warning(f"[{host.name}] {note}")
        host.noop(note)
        return
    yield StringCommand("sysctl", "-q", "-p", path)


# --- Docker Engine -----------------------------------------------------------------------------------

ROLE = host.data.get("role")
WITH_DOCKER = ROLE not in NO_DOCKER_ROLES  # K3s nodes: K3s brings containerd (keybuzz/base_os/settings.py)
PACKAGES = ["ca-certificates", "systemd-timesyncd", "procps", "nftables"]
if WITH_DOCKER:
    files.directory(name="Create /etc/docker", path="/etc/docker", user="root", group="root", mode="755")
    # Written before the package is installed, so that the first dockerd already starts with it.
    daemon_json = template("base_os/daemon.json.j2", "/etc/docker/daemon.json",
                           insecure_registries=ctx.versions["insecure_registries"],
                           registry_mirror=ctx.versions["registry_mirror"] or "")
    PACKAGES = [ctx.versions["docker_engine_package"], *PACKAGES]


apt_packages(PACKAGES, "CA certificates, time sync, procps, nftables (and the pinned Docker Engine)",
             no_recommends=True)
if WITH_DOCKER:
    # The apt preferences pin keeps Docker within versions.yaml's pin while taking its security rebuilds; a hold
    # (what earlier versions of this layer set) would block those.
    if "docker.io" in (host.get_fact(Command, command="apt-mark showhold") or "").split():
        server.shell(name="Release the old hold on docker.io (the apt preferences pin replaces it)",
                     commands=["apt-mark unhold docker.io"])

    systemd.service(name="Enable and start Docker", service="docker.service", running=True, enabled=True)
    server.shell(
        name="Restart Docker (daemon.json changed) and wait until this host's services serve again",
        # every service runs under dockerd: one host at a time, and the next only once the layers on this one are
        # back (their HOST_READY: RabbitMQ node in its cluster, Redis replica in sync, Galera Synced...), so a
        # cluster never loses two members to this restart
        commands=["systemctl restart docker.service", *host_ready_commands(ROLE)],
        _if=any_changed(daemon_json),
        _serial=True,
    )

# --- time sync -----------------------------------------------------------------------------------------

in_container = (host.get_fact(Command, command="systemd-detect-virt --container || true") or "none") != "none"
systemd.service(
    name="Enable time sync (systemd-timesyncd)",
    service="systemd-timesyncd.service",
    enabled=True,
    running=None if in_container else True,  # a container shares the machine's clock
)

# --- kernel settings -------------------------------------------------------------------------------------

template("base_os/sysctl.conf.j2", SYSCTL_FILE, sysctls=SYSCTLS)
apply_sysctls(name="Apply kernel settings", path=SYSCTL_FILE, wanted=SYSCTLS)

# --- host firewall (nftables, table inet keybuzz: the role's ports from the private network only) -------------

TCP_PORTS, UDP_PORTS = open_ports(ROLE)
try:
    ADMIN_NETWORKS = admin_networks(os.environ.get("KEYBUZZ_ADMIN_NETWORKS"))
except ValueError as e:
    raise DeployError(str(e)) from None
files.directory(name="Create /etc/keybuzz", path="/etc/keybuzz", user="root", group="root", mode="755")
firewall = validated_file(
    name=f"Install {FIREWALL_FILE} (checked with nft -c before it replaces the old one)",
    dest=FIREWALL_FILE, check="nft -c -f",
    content=render("base_os/firewall.nft.j2", hostname=host.name, role=ROLE, private_network=ctx.private_network,
                   admin_networks=ADMIN_NETWORKS, tcp_ports=TCP_PORTS, udp_ports=UDP_PORTS,
                   trusted_networks=trusted_networks(ROLE)),
)
firewall_unit = template("base_os/keybuzz-firewall.service", "/etc/systemd/system/keybuzz-firewall.service")
# loaded at boot by its unit; a changed rule set is applied now (a restart of the oneshot unit loads the file)
restart_if("keybuzz-firewall", firewall, firewall_unit)

# --- data directories ------------------------------------------------------------------------------------

files.directory(name="Create /opt/keybuzz", path="/opt/keybuzz", user="root", group="root", mode="755")
for data_dir in data_dirs(host.data.get("role")):
    files.directory(name=f"Create /opt/keybuzz/{data_dir}", path=f"/opt/keybuzz/{data_dir}",
                    user="root", group="root", mode="755")

# --- name resolution ------------------------------------------------------------------------------------

etc_hosts_block(
    name="Name every host in /etc/hosts (servers.tsv, minio-0N.keybuzz.io, s3.keybuzz.io)",
    block=render("base_os/hosts.j2",
                 servers=[(s.name, s.ip) for s in ctx.plan.servers if s.ip],
                 minio=[s.name for s in ctx.plan.group("minio")]),
)
