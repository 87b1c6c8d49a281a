"""The one place that knows how to reach a host over SSH: pyinfra's settings (group_data/all.py) and the
`ssh` command line of checks and the lab come from the same environment.

KEYBUZZ_SSH_USER (default root), KEYBUZZ_SSH_KEY (private key path, default: ssh-agent / ~/.ssh),
KEYBUZZ_SSH_PORT (default 22), KEYBUZZ_SSH_KNOWN_HOSTS (known_hosts file to trust, default
/root/.ssh/known_hosts; the lab sets its own, written from each lab host's key read through docker).

Host keys are always checked strictly (pyinfra `ssh_strict_host_key_checking=yes`, `ssh -o
StrictHostKeyChecking=yes`): an unknown or changed key stops the connection before anything (a password, the
Erlang cookie) is sent. `require_known_hosts` runs at preflight (keybuzz.inventory), before any host is
contacted: the file must exist and hold a key for every host the run will contact.

    >>> command("10.0.0.126", "hostname", environ={"KEYBUZZ_SSH_KNOWN_HOSTS": "/k"})[-2:]
    ['root@10.0.0.126', 'hostname']
    >>> data = pyinfra_data({"KEYBUZZ_SSH_PORT": "2222"})
    >>> data["ssh_port"], data["ssh_strict_host_key_checking"], data["ssh_known_hosts_file"]
    (2222, 'yes', '/root/.ssh/known_hosts')
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterable, Mapping

from keybuzz.errors import InputError

DEFAULT_KNOWN_HOSTS = "/root/.ssh/known_hosts"  # install-01 runs as root (README, "Running against production")


def known_hosts_file(environ: Mapping[str, str] = os.environ, default: str = DEFAULT_KNOWN_HOSTS) -> str:
    """The known_hosts file every connection trusts: $KEYBUZZ_SSH_KNOWN_HOSTS, else `default`."""
    return environ.get("KEYBUZZ_SSH_KNOWN_HOSTS") or default


def pyinfra_data(environ: Mapping[str, str] = os.environ) -> dict:
    """pyinfra's ssh_* host data for every host: strict host key checking against known_hosts_file(), always."""
    data: dict = {"ssh_user": environ.get("KEYBUZZ_SSH_USER", "root"),
                  "ssh_port": int(environ.get("KEYBUZZ_SSH_PORT", "22"))}
    if environ.get("KEYBUZZ_SSH_KEY"):
        data["ssh_key"] = environ["KEYBUZZ_SSH_KEY"]
    data["ssh_known_hosts_file"] = known_hosts_file(environ)
    data["ssh_strict_host_key_checking"] = "yes"
    return data


def _how_to_fill(path: str) -> str:
    return (f"put the servers' host keys in {path} from a trusted channel: on each server's Hetzner console run "
            "`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`, compare that fingerprint with "
            "`ssh-keyscan -t ed25519 <private_ip> | ssh-keygen -lf -` run from install-01, and append the "
            f"ssh-keyscan line to {path} only when they match (or set KEYBUZZ_SSH_KNOWN_HOSTS to such a file)")


def require_known_hosts(hosts: Iterable[tuple[str, str]], environ: Mapping[str, str] = os.environ,
                        default: str = DEFAULT_KNOWN_HOSTS) -> str:
    """Refuse (InputError, one line) a run whose known_hosts file is missing, unsafe or lacks a key of one of
    `hosts` [(name, ip)]; returns the file. Nothing is contacted.

    >>> require_known_hosts([], {}, default="/nonexistent/known_hosts")
    Traceback (most recent call last):
    keybuzz.errors.InputError: KEYBUZZ_SSH_KNOWN_HOSTS: not set, and /nonexistent/known_hosts does not exist; put ...
    """
    from paramiko.hostkeys import HostKeyEntry, HostKeys  # paramiko comes with pyinfra

    path = known_hosts_file(environ, default)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not environ.get("KEYBUZZ_SSH_KNOWN_HOSTS"):
            raise InputError("KEYBUZZ_SSH_KNOWN_HOSTS", 0, f"not set, and {path} does not exist; "
                             f"{_how_to_fill(path)}") from None
        raise InputError(path, 0, f"does not exist; {_how_to_fill(path)}") from None
    except OSError as e:
        raise InputError(path, 0, f"cannot be read ({e.strerror}); {_how_to_fill(path)}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(path, 0, f"is not a regular file; {_how_to_fill(path)}")
    if st.st_mode & 0o022 or st.st_uid not in (0, os.getuid()):
        raise InputError(path, 0, f"writable by group or others, or owned by another user (uid {st.st_uid}, mode "
                         f"{stat.S_IMODE(st.st_mode):04o}): anyone who can write it decides which hosts are "
                         f"trusted; fix: chown root:root {path} && chmod 644 {path}")
    keys = HostKeys()
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, 0, f"cannot be read ({getattr(e, 'strerror', None) or e}); "
                         f"{_how_to_fill(path)}") from None
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith(("#", "@")):  # comments; @cert-authority / @revoked markers
            continue
        try:
            entry = HostKeyEntry.from_line(line, lineno) if len(line.split()) >= 3 else False
        except Exception:  # noqa: BLE001 - paramiko raises several types for a malformed key
            entry = False
        if entry is False:
            raise InputError(path, lineno, "unreadable host key line (expected `<host>[,<host>] <key type> "
                             "<base64 key>`, as ssh-keyscan prints); fix or remove it")
        if entry is not None:  # None: a key type paramiko does not know, ignored as pyinfra would
            for hostname in entry.hostnames:
                keys.add(hostname, entry.key.get_name(), entry.key)
    port = int(environ.get("KEYBUZZ_SSH_PORT", "22"))
    for name, ip in hosts:
        lookup = ip if port == 22 else f"[{ip}]:{port}"
        if not keys.lookup(lookup):
            raise InputError(path, 0, f"no host key for {name} ({ip}) on port {port}; {_how_to_fill(path)}")
    return path


def command(ip: str, *remote: str, batch: bool = True, environ: Mapping[str, str] = os.environ) -> list[str]:
    """The ssh command line to `ip` with the same settings as pyinfra (non-interactive unless batch=False)."""
    data = pyinfra_data(environ)
    args = ["ssh", "-o", "ConnectTimeout=10", "-p", str(data["ssh_port"])]
    if batch:
        args += ["-o", "BatchMode=yes"]
    if "ssh_key" in data:
        args += ["-i", data["ssh_key"], "-o", "IdentitiesOnly=yes"]
    args += ["-o", f"UserKnownHostsFile={data['ssh_known_hosts_file']}", "-o", "StrictHostKeyChecking=yes"]
    return [*args, f"{data['ssh_user']}@{ip}", *remote]


def run(ip: str, remote: str, timeout: float = 180, environ: Mapping[str, str] = os.environ
        ) -> subprocess.CompletedProcess:
    """Run shell command `remote` on `ip` (no secret may be in it: it is a command line)."""
    return subprocess.run(command(ip, remote, environ=environ), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
