"""What every layer's checks (design §G: diag, failover, perf) share: the report and the target.

Each layer's `keybuzz/<layer>/check.py` provides `diag(target)`, `failover(target)` and `perf(target)`,
each returning a `Report` (ok flag + short lines for a human); keybuzz.runner runs them for invoke and the lab.

    >>> r = Report("redis diag"); r.add("redis-01 master"); r.add("redis-02 down", ok=False); print(r)
    FAIL redis diag
      redis-01 master
    ! redis-02 down
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from keybuzz import credentials
from keybuzz.servers import ServerPlan, load_servers


@dataclass
class Report:
    title: str
    ok: bool = True
    lines: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)

    def add(self, line: str, ok: bool = True) -> None:
        self.lines.append(("  " if ok else "! ") + line)
        self.ok = self.ok and ok

    def __str__(self) -> str:
        return "\n".join([f"{'OK  ' if self.ok else 'FAIL'} {self.title}", *self.lines])


@dataclass
class Target:
    """Where checks send traffic: the servers of the plan and the private load balancer address.

    `lb` is the address clients use (10.0.0.10 in production, the lab's stand-in in the lab);
    set by $KEYBUZZ_LB_ADDRESS.
    """

    plan: ServerPlan
    lb: str

    @classmethod
    def from_env(cls) -> Target:
        return cls(load_servers(), os.environ.get("KEYBUZZ_LB_ADDRESS", "10.0.0.10"))

    def secrets(self, brick: str):
        return credentials.load(brick)
