"""invoke tasks of the lab (`invoke lab.up`, `lab.down`, `lab.status`, `lab.ssh <host>`).

    invoke lab.up                       build what is missing, start, deploy every implemented layer
    invoke lab.up --layers base_os      only the base OS layer
    invoke lab.status                   containers, addresses, states
    invoke lab.ssh redis-01             interactive shell (or: invoke lab.ssh redis-01 -c 'docker ps')
    invoke lab.down                     remove every container, network and volume the lab created

Targeting the lab with the production commands: `invoke layer --name redis --lab`, or
`pyinfra .lab/inventory.py deploys/redis.py` from the repository root (after lab.up).
"""

from __future__ import annotations

import os

from invoke import Collection, Exit, task

from keybuzz.lab import lab


def _print(message: str) -> None:
    print(message, flush=True)


@task(help={"layers": "comma-separated layers to deploy (default: every implemented one; '' for none)"})
def up(c, layers=None):
    """Build what is missing, start the lab, deploy the implemented layers, print the green/red table."""
    chosen = None if layers is None else [n for n in layers.split(",") if n.strip()]
    try:
        rows = lab.up(chosen, progress=_print)
    except lab.LabError as e:
        raise Exit(f"lab: {e}", code=2) from None
    if not all(r.green for r in rows):
        raise Exit("lab: some layers are red (see the table above)", code=1)


@task
def down(c):
    """Remove every container, network and volume the lab created, and .lab/ (images stay cached)."""
    lab.down(progress=_print)
    left = {k: v for k, v in lab.leftovers().items() if v}
    if left:
        raise Exit(f"lab: still present after down: {left}", code=1)
    print("lab is down")


@task
def status(c):
    """The lab's containers: name, role, address, state."""
    rows = lab.status()
    print(f"{'host':<12} {'role':<14} {'address':<16} state")
    for r in rows:
        print(f"{r['name']:<12} {r['role']:<14} {r['address']:<16} {r['state']}")
    mem = lab.memory_bytes()
    if mem:
        print(f"memory used by the lab's containers: {mem / 2**30:.2f} GiB")


@task(positional=["host"], help={"host": "lab host name, e.g. redis-01", "command": "run this instead of a shell"})
def ssh(c, host, command=None):
    """Log into a lab host over SSH with the lab's key (as the deploy code does)."""
    try:
        argv = lab.ssh_command(host, *([command] if command else []))
    except lab.LabError as e:
        raise Exit(f"lab: {e}", code=2) from None
    os.execvp(argv[0], argv)


ns = Collection(up, down, status, ssh)
