"""The one place that knows how to reach a host over SSH: pyinfra's settings (group_data/all.py) and the
`ssh` command line of checks and the lab come from the same environment.

KEYBUZZ_SSH_USER (default root), KEYBUZZ_SSH_KEY (private key path, default: ssh-agent / ~/.ssh),
KEYBUZZ_SSH_PORT (default 22), KEYBUZZ_SSH_KNOWN_HOSTS (known_hosts file to trust; the lab sets its own).

    >>> command("10.0.0.126", "hostname", environ={"KEYBUZZ_SSH_KNOWN_HOSTS": "/k"})[-2:]
    ['root@10.0.0.126', 'hostname']
    >>> pyinfra_data({"KEYBUZZ_SSH_PORT": "2222"})
    {'ssh_user': 'root', 'ssh_port': 2222}
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping


def pyinfra_data(environ: Mapping[str, str] = os.environ) -> dict:
    """pyinfra's ssh_* host data for every host."""
    data: dict = {"ssh_user": environ.get("KEYBUZZ_SSH_USER", "root"),
                  "ssh_port": int(environ.get("KEYBUZZ_SSH_PORT", "22"))}
    if environ.get("KEYBUZZ_SSH_KEY"):
        data["ssh_key"] = environ["KEYBUZZ_SSH_KEY"]
    if environ.get("KEYBUZZ_SSH_KNOWN_HOSTS"):
        data["ssh_known_hosts_file"] = environ["KEYBUZZ_SSH_KNOWN_HOSTS"]
        data["ssh_strict_host_key_checking"] = "yes"
    return data


def command(ip: str, *remote: str, batch: bool = True, environ: Mapping[str, str] = os.environ) -> list[str]:
    """The ssh command line to `ip` with the same settings as pyinfra (non-interactive unless batch=False)."""
    data = pyinfra_data(environ)
    args = ["ssh", "-o", "ConnectTimeout=10", "-p", str(data["ssh_port"])]
    if batch:
        args += ["-o", "BatchMode=yes"]
    if "ssh_key" in data:
        args += ["-i", data["ssh_key"], "-o", "IdentitiesOnly=yes"]
    if "ssh_known_hosts_file" in data:
        args += ["-o", f"UserKnownHostsFile={data['ssh_known_hosts_file']}", "-o", "StrictHostKeyChecking=yes"]
    return [*args, f"{data['ssh_user']}@{ip}", *remote]


def run(ip: str, remote: str, timeout: float = 180, environ: Mapping[str, str] = os.environ
        ) -> subprocess.CompletedProcess:
    """Run shell command `remote` on `ip` (no secret may be in it: it is a command line)."""
    return subprocess.run(command(ip, remote, environ=environ), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
