"""What a deploy file needs, in one call: the validated plan, versions and this layer's secrets.

Example (top of deploys/redis.py):
    >>> ctx = layer_context("redis")
    >>> ctx.image("redis_image")                 # pinned, through the mirror if set
    'redis:7.2.5-alpine'
    >>> ctx.secrets("redis")["REDIS_PASSWORD"]   # HiddenValue: prints *MASKED*
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from keybuzz import credentials
from keybuzz.layers import LAYERS, Layer
from keybuzz.servers import ServerPlan, load_servers
from keybuzz.versions import image, load_versions


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

    def addresses(self, role: str) -> list[tuple[str, str]]:
        """[(hostname, private_ip)] of a role, in servers.tsv order."""
        return [(s.name, s.ip) for s in self.plan.group(role)]


def layer_context(name: str) -> LayerContext:
    return LayerContext(LAYERS[name], _plan(), _versions())
