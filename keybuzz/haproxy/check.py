"""Checks of the haproxy layer: the Redis path must go through HAProxy (no "not deployed yet" leniency).

Example::

    print(diag(Target.from_env()))
"""

from keybuzz.checks import Target
from keybuzz.redis import check as _redis


def diag(target: Target):
    """Redis diag that requires every HAProxy to answer and point at the Sentinel majority's master."""
    return _redis.diag(target, require_haproxy=True)


failover = _redis.failover
perf = _redis.perf
