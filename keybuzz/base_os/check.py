"""Checks of the base OS layer (design §G): `invoke check --name base_os`, lab and production alike.

    diag      on every host of servers.tsv (install host aside), over SSH: Docker Engine active (inactive on the
              K3s nodes, which must not run it), systemd-timesyncd enabled, the nftables table `inet keybuzz`
              loaded, the kernel settings file present, the hosts block in /etc/hosts
    failover  not applicable (NOT_APPLICABLE): the base OS has no service to fail over; each service layer's
              failover check covers the host it stops
    perf      not applicable: nothing of its own to measure

Nothing is written; no secret is read.

Example::

    print(diag(Target.from_env()))
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from keybuzz import ssh
from keybuzz.base_os.settings import HOSTS_BEGIN, NO_DOCKER_ROLES, SYSCTL_FILE
from keybuzz.checks import Report, Target

NOT_APPLICABLE = {
    "failover": "the base OS runs no service of its own to fail over (each service layer's failover covers it)",
    "perf": "the base OS has nothing of its own to measure (each service layer's perf does)",
}

# What `invoke all`'s report says runs (keybuzz.run_all.layer_versions): the Docker package's installed version
# (nothing on K3s nodes, which have no Docker)
VERSION_COMMANDS = {"docker_engine_package": "dpkg-query -W -f '${Version}' docker.io 2>/dev/null || true"}

HOST_FACTS = (
    'echo "docker=$(systemctl is-active docker.service)"; '
    'echo "timesyncd=$(systemctl is-enabled systemd-timesyncd.service)"; '
    'echo "nft=$(nft list tables 2>/dev/null | grep -c \'inet keybuzz\')"; '
    f'echo "sysctl=$(test -s {SYSCTL_FILE} && echo 1 || echo 0)"; '
    f'echo "hosts=$(grep -c \'^{HOSTS_BEGIN}\' /etc/hosts)"'  # the marker starts the line
)


def host_problems(role: str, facts: dict[str, str]) -> list[str]:
    """What is wrong on one host, from HOST_FACTS' output.

    >>> host_problems("redis", {"docker": "active", "timesyncd": "enabled", "nft": "1", "sysctl": "1", "hosts": "1"})
    []
    >>> host_problems("k3s_workers", {"docker": "active", "timesyncd": "enabled", "nft": "0", "sysctl": "1",
    ...                                "hosts": "1"})
    ['Docker Engine active (K3s nodes must not run it)', 'nftables table inet keybuzz not loaded']
    """
    problems = []
    docker = facts.get("docker", "?")
    if role in NO_DOCKER_ROLES and docker == "active":
        problems.append("Docker Engine active (K3s nodes must not run it)")
    if role not in NO_DOCKER_ROLES and docker != "active":
        problems.append(f"Docker Engine {docker}")
    if facts.get("timesyncd") != "enabled":
        problems.append(f"systemd-timesyncd {facts.get('timesyncd', '?')}")
    if facts.get("nft") != "1":
        problems.append("nftables table inet keybuzz not loaded")
    if facts.get("sysctl") != "1":
        problems.append(f"{SYSCTL_FILE} missing")
    if facts.get("hosts") != "1":
        problems.append("/etc/hosts has no KeyBuzz hosts block")
    return problems


def _facts(ip: str) -> dict[str, str] | str:
    try:
        result = ssh.run(ip, HOST_FACTS, timeout=30)
    except Exception as e:  # a host that does not answer is a red line, not a crash
        return f"ssh failed ({type(e).__name__})"
    if result.returncode != 0 and "docker=" not in result.stdout:
        return f"ssh failed (exit {result.returncode})"
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def diag(target: Target) -> Report:
    report = Report("base_os diag")
    hosts = [s for s in target.plan.servers if s.role != "install" and s.ip]
    with ThreadPoolExecutor(max_workers=8) as pool:
        found = list(pool.map(lambda s: _facts(s.ip), hosts))
    for server, facts in zip(hosts, found, strict=True):
        problems = [facts] if isinstance(facts, str) else host_problems(server.role, facts)
        report.add(f"{server.name} {server.ip}: {'; '.join(problems) or 'ok'}", ok=not problems)
    report.metrics.update(hosts=len(hosts), red=sum(1 for line in report.lines if line.startswith("!")))
    if not hosts:
        report.add("no host in the servers file", ok=False)
    return report
