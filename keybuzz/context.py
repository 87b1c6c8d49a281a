"""What a deploy file needs, in one call: the validated plan, versions and this layer's secrets, and the
running cluster's answers asked once per run.

Example (top of deploys/redis.py)::

    ctx = layer_context("redis")
    ctx.image("redis_image")                 # pinned, through the mirror if set: 'redis:7.2.5-alpine'
    ctx.secrets("redis")["REDIS_PASSWORD"]   # HiddenValue: prints *MASKED*
    view = ctx.ask_once("the Sentinels", lambda: cluster_view(ips, password))
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TypeVar

from gevent.lock import Semaphore

from keybuzz import credentials
from keybuzz.layers import LAYERS, Layer
from keybuzz.servers import ServerPlan, load_servers, private_network
from keybuzz.versions import image, load_versions

T = TypeVar("T")

# pyinfra evaluates a deploy file once per host, with fresh globals: a cache there caches nothing. This module
# is imported once per process (one pyinfra run), so every host of the run shares what is kept here. pyinfra
# loads the hosts in parallel greenlets: the first one asks while the others wait on the key's lock.
_ASKED: dict[str, object] = {}
_LOCKS: dict[str, Semaphore] = {}


@cache
def _plan() -> ServerPlan:
    return load_servers()


@cache
def _versions() -> dict:
    return load_versions()


@dataclass(frozen=True)
class LayerContext:
    layer: Layer
    plan: ServerPlan
    versions: dict

    def image(self, key: str) -> str:
        return image(self.versions, key)

    def secrets(self, brick: str):
        """The brick's credentials; only bricks this layer's hosts need (§H.2) are allowed."""
        if brick not in self.layer.bricks:
            raise PermissionError(f"layer {self.layer.name} does not receive {brick} credentials (§H.2)")
        return credentials.load(brick)

    def ask_once(self, what: str, ask: Callable[[], T]) -> T:
        """`ask()` the first time `what` is needed in this run, the same answer for every later host, so
        that all hosts of one run act on one view of the cluster (two hosts must never see two masters).

        >>> ctx = layer_context("base_os")
        >>> [ctx.ask_once("doctest answer", lambda: n) for n in (1, 2)]
        [1, 1]
        """
        key = f"{self.layer.name}:{what}"
        with _LOCKS.setdefault(key, Semaphore()):
            if key not in _ASKED:
                _ASKED[key] = ask()
                print(f"keybuzz: asked {what} (once for this run)", file=sys.stderr, flush=True)
        return _ASKED[key]  # type: ignore[return-value]

    @property
    def private_network(self) -> str:
        """The servers' private network (Hetzner: 10.0.0.0/16); $KEYBUZZ_PRIVATE_NETWORK sets another (the lab).
        One source: keybuzz.servers.private_network, which also checks every address of servers.tsv.

        >>> import ipaddress
        >>> ipaddress.ip_network(layer_context("base_os").private_network).is_private
        True
        """
        return str(private_network())

    def addresses(self, role: str) -> list[tuple[str, str]]:
        """[(hostname, private_ip)] of a role, in servers.tsv order."""
        return [(s.name, s.ip) for s in self.plan.group(role)]


def layer_context(name: str) -> LayerContext:
    return LayerContext(LAYERS[name], _plan(), _versions())
