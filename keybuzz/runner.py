"""The one runner of layers, used by `invoke` and the lab alike: pyinfra on a layer's deploy file (output
streamed, changed operations counted), then the layer's checks (diag, failover, perf).

    result = deploy(LAYERS["redis"], progress=print)    # DeployResult(ok=True, changes=0, ...)
    reports = run_checks(LAYERS["redis"], ("diag",))   # [Report]
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from keybuzz import ROOT
from keybuzz.checks import Report, Target
from keybuzz.layers import Layer

CHECK_KINDS = ("diag", "failover", "perf")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class DeployResult:
    ok: bool
    changes: int  # changed operations summed over hosts; -1 when pyinfra printed no results table
    output: str
    seconds: float = 0.0


def strip_colors(text: str) -> str:
    """pyinfra's output without its terminal colours.

    >>> strip_colors("\x1b[32mSuccess\x1b[0m")
    'Success'
    """
    return _ANSI.sub("", text)


def parse_changes(output: str) -> int | None:
    """Changed operations (summed over hosts) from pyinfra's `--> Results:` table, None if absent.

    The table's "Grand total" row reads `Grand total  <hosts> <changed> <errors> <no change>`,
    '-' for zero; "changed" counts operations that did something on a host.

    >>> parse_changes("--> Results:\\nOperation  Hosts  Success  Error  No Change\\nGrand total  16  -  -  16")
    0
    >>> parse_changes("--> Connecting to hosts...") is None
    True
    """
    text = strip_colors(output)
    _, found, results = text.rpartition("--> Results:")
    if not found:
        return None
    for line in results.splitlines():
        m = re.match(r"^\s*Grand total\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$", line)
        if m:
            return 0 if m.group(2) == "-" else int(m.group(2))
    return None


def pyinfra_command() -> str:
    venv = ROOT / ".venv" / "bin" / "pyinfra"
    return str(venv) if venv.exists() else (shutil.which("pyinfra") or "pyinfra")


def deploy(layer: Layer, progress: Callable[[str], None] | None = None, verbose: int = 0,
           extra: Iterable[str] = (), env: Mapping[str, str] | None = None, timeout: float = 1200) -> DeployResult:
    """`pyinfra -y inventory.py deploys/<layer>.py` from the repository root; bounded by `timeout` seconds.
    With `--dry` in `extra`: no `-y`, so that pyinfra prints the planned operations (no "Results" table: changes -1).

    `progress`, if given, receives pyinfra's lines as they come (long steps stay visible); `env` is added to
    the current environment (the lab's inventory settings).
    """
    # `-y` would skip pyinfra's change detection; with `--dry` that detection is the whole point: pyinfra 3.10 then
    # gathers every operation's facts, prints "Detected changes" (the planned operations) and exits unexecuted
    extra = tuple(extra)
    confirm = [] if "--dry" in extra else ["-y"]
    cmd = [pyinfra_command(), *confirm, *(["-" + "v" * verbose] if verbose else []), *extra, "inventory.py",
           layer.deploy]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, bufsize=1)
    watchdog = threading.Timer(timeout, proc.kill)  # a hung run is killed after `timeout` s
    watchdog.start()
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if progress:
                progress(line.rstrip("\n"))
        rc = proc.wait()
    finally:
        watchdog.cancel()
    output = "".join(lines)
    changes = parse_changes(output)
    ok = rc == 0 and (changes is not None or not confirm)  # a dry run has no Results table
    return DeployResult(ok, changes if changes is not None else -1, output, time.monotonic() - start)


def run_checks(layer: Layer, kinds: Iterable[str] = ("diag",), target: Target | None = None) -> list[Report]:
    """The layer's checks of `kinds` (design §G), in order; a check that raises is a red report naming why.

    A layer without keybuzz/<layer>/check.py has no checks: [] (callers decide whether that is red).
    """
    if not layer.has_checks():
        return []
    module = importlib.import_module(layer.check)
    target = target or Target.from_env()
    reports = []
    for kind in kinds:
        if kind not in CHECK_KINDS:
            raise ValueError(f"unknown check {kind!r}; checks: {', '.join(CHECK_KINDS)}")
        why = (getattr(module, "NOT_APPLICABLE", None) or {}).get(kind)
        if why:  # a check the layer declares meaningless for it (base_os failover): said, never run
            report = Report(f"{layer.name} {kind}")
            report.add(f"not applicable: {why}")
            reports.append(report)
            continue
        try:
            reports.append(getattr(module, kind)(target))
        except Exception as e:  # a crashing check is a red check, reported with its reason
            report = Report(f"{layer.name} {kind}")
            report.add(f"check raised {type(e).__name__}: {e}", ok=False)
            reports.append(report)
    return reports
