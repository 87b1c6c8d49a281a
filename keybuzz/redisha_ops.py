"""pyinfra operations of the Redis and HAProxy layers that keybuzz/ops.py does not have (yet).

Example:
    owned_directory(name="Create /opt/keybuzz/redis/data", path="/opt/keybuzz/redis/data",
                    uid=999, gid=1000, mode="750")
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.server import Command


@operation()
def owned_directory(path: str, uid: int, gid: int, mode: str):
    """A directory owned by numeric ids that may have no name on the host (the containers' users).

    pyinfra's files.directory compares owner *names* (`stat -c %U`, "UNKNOWN" for a nameless uid), so it
    would chown again on every run; this compares `uid:gid:mode` numerically and changes only what differs.
    """
    quoted = shlex.quote(path)
    current = host.get_fact(Command, command=f"stat -c '%u:%g:%a' {quoted} 2>/dev/null || echo absent")
    if current == f"{uid}:{gid}:{mode.lstrip('0') or '0'}":
        host.noop(f"{path} is {uid}:{gid} {mode}")
        return
    yield f"mkdir -p {quoted} && chown {uid}:{gid} {quoted} && chmod {mode} {quoted}"
