"""Talking to the K3s API from the install host: `k3s kubectl` on a master over SSH (keybuzz.ssh), manifests
and Secrets on stdin (never on a command line, never in a file).

    apply(master_ip, to_yaml(docs))           # ['deployment.apps/api unchanged', ...]
    get_json(master_ip, "get nodes")          # the parsed `-o json` answer
"""

from __future__ import annotations

import json
import subprocess

from keybuzz import ssh

KUBECTL = "k3s kubectl"


class KubectlError(RuntimeError):
    """kubectl failed; the message carries its stderr (which never holds a Secret's value)."""


def _run(ip: str, remote: str, stdin: str | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(ssh.command(ip, remote), input=stdin, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise KubectlError(f"{remote.split(' -f ')[0]} on {ip}: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def apply(ip: str, manifests_yaml: str, timeout: float = 300) -> list[str]:
    """`kubectl apply -f -` on `ip` with the manifests on stdin; kubectl's lines ("secret/x configured")."""
    return _run(ip, f"{KUBECTL} apply -f -", stdin=manifests_yaml, timeout=timeout).splitlines()


def get_json(ip: str, args: str, timeout: float = 60) -> dict:
    """`kubectl <args> -o json` on `ip`, parsed (args are fixed strings of this code, no user input)."""
    return json.loads(_run(ip, f"{KUBECTL} {args} -o json", timeout=timeout))


def raw(ip: str, path: str, timeout: float = 60) -> str:
    """`kubectl get --raw <path>` on `ip` (e.g. /readyz?verbose)."""
    return _run(ip, f"{KUBECTL} get --raw '{path}'", timeout=timeout)


def shell(ip: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """A fixed shell command of this code on `ip` (curl of a node address...)."""
    return ssh.run(ip, command, timeout=timeout)


def changed(lines: list[str]) -> int:
    """How many objects kubectl apply created or changed.

    >>> changed(["namespace/keybuzz unchanged", "deployment.apps/api configured", "service/api created"])
    2
    """
    return sum(1 for line in lines if line.rstrip().endswith(("created", "configured")))
