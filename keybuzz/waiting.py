"""The one bounded polling loop used by checks, testbeds, tests and benchmarks.

Example::

    wait_for(lambda: client.ping(), 20, what="redis PING")   # returns the truthy value
"""

from __future__ import annotations

import time


def wait_for(predicate, seconds: float, interval: float = 0.5, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value (returned), at most `seconds`, else TimeoutError.

    An exception from `predicate` counts as "not yet" (a booting service answers with all sorts of
    errors); the last one is named in the TimeoutError.
    """
    deadline = time.monotonic() + seconds
    error = None
    while True:
        try:
            value = predicate()
        except Exception as e:  # noqa: BLE001 - see docstring
            value, error = None, e
        if value:
            return value
        if time.monotonic() >= deadline:
            last = f" (last error: {error!r})" if error else ""
            raise TimeoutError(f"{what}: not reached within {seconds:.0f} s{last}")
        time.sleep(interval)
