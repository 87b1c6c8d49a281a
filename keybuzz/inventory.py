"""Builds the pyinfra inventory from servers.tsv, after validating every input up front (kubespray-style).

`inventory.py` at the repository root calls `build_groups()`. When the command line names a
deploy (`pyinfra inventory.py deploys/redis.py`), only the hosts that layer touches are in the
inventory, and their addresses, the groups it renders, versions.yaml, the layer's credentials and the
SSH known_hosts (a key for every host it contacts: keybuzz.ssh) are checked before pyinfra contacts any host.

Example::

    groups = build_groups(["pyinfra", "inventory.py", "deploys/redis.py"])
    [name for name, _ in groups["redis"]]
    # -> ['redis-01', 'redis-02', 'redis-03']
"""

from __future__ import annotations

import importlib
import sys

from keybuzz import ROOT, credentials, ssh
from keybuzz.errors import InputError, PinRefused
from keybuzz.layers import LAYERS, Layer, from_deploy_path
from keybuzz.servers import ROLES, load_servers
from keybuzz.versions import load_versions, pin_location


def layers_in_argv(argv) -> list[Layer]:
    """Layers whose deploy files appear on the pyinfra command line."""
    found = []
    for arg in argv[1:]:
        layer = from_deploy_path(arg)
        if layer:
            found.append(layer)
        elif arg.endswith(".py") and "deploys/" in arg:
            name = arg.rsplit("/", 1)[-1][:-3]
            raise InputError(arg, 0, f"no layer {name!r}; layers: {', '.join(LAYERS)}")
    return found


def preflight(layers, plan=None) -> None:
    """Everything a run of `layers` needs, checked before any connection: raises InputError.

    A layer may refuse pins it cannot deploy: keybuzz/<layer>/settings.py `preflight(versions)` raising
    PinRefused, reported at the line of versions.yaml (or of the override file) that pins the key; and hosts
    it cannot deploy to: `preflight_servers(plan)` raising InputError (servers.tsv, line, fix).
    Last, SSH trust: the known_hosts file must hold a key of every host the layers deploy to (keybuzz.ssh).
    """
    plan = plan or load_servers()
    versions = load_versions()
    for layer in layers:
        plan.require_addresses(layer.roles + layer.renders)
        plan.require_hosts(layer.name, layer.roles, layer.renders)
        for brick in layer.bricks:
            credentials.load(brick)
        if (ROOT / "keybuzz" / layer.name / "settings.py").is_file():
            settings = importlib.import_module(f"keybuzz.{layer.name}.settings")
            try:
                getattr(settings, "preflight", lambda _versions: None)(versions)
            except PinRefused as e:
                raise InputError(*pin_location(e.key), e.reason) from None
            # a layer may refuse a group the design fixes (raises InputError naming servers.tsv and the line)
            getattr(settings, "preflight_servers", lambda _plan: None)(plan)
    contacted = {s.name: s.ip for layer in layers for s in plan.servers if s.role in layer.roles and s.ip}
    if contacted:
        ssh.require_known_hosts(contacted.items())


def build_groups(argv=None) -> dict[str, list]:
    """pyinfra groups {role: [(hostname, data), ...]}, restricted to the layers on the command line."""
    argv = sys.argv if argv is None else argv
    plan = load_servers()
    layers = layers_in_argv(argv)
    preflight(layers, plan)
    wanted = {role for layer in layers for role in layer.roles} if layers else set(ROLES)
    groups: dict[str, list] = {}
    for s in plan.servers:
        if s.role not in wanted or s.ip is None:
            continue  # a TBD host can only appear here if no layer touches it
        groups.setdefault(s.role, []).append(
            (s.name, {"ssh_hostname": s.ip, "private_ip": s.ip, "role": s.role})
        )
    if not layers and groups:  # a plain `pyinfra inventory.py <operation>` contacts every host listed
        ssh.require_known_hosts([(name, data["private_ip"]) for hosts in groups.values() for name, data in hosts])
    return groups


def run_inventory(namespace: dict) -> None:
    """Entry point for inventory.py: fill its module namespace, or exit with one line on bad input."""
    try:
        namespace.update(build_groups())
    except InputError as e:
        print(f"keybuzz: {e}", file=sys.stderr)
        raise SystemExit(2) from None
