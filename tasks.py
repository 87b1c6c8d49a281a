"""invoke tasks: `invoke --list`.

    invoke credentials.init            create missing credentials (random, root:root 0600)
    invoke layer --name redis          deploy one layer, then run its checks
    invoke all                         every layer in the design's order, stop at the first failure
    invoke check --name redis          diag (add --failover / --perf)
    invoke lab.up / lab.down / lab.status / lab.ssh <host>

`--lab` on layer/all/check targets the local lab instead of servers.tsv.
"""

from __future__ import annotations

import importlib
import os
import sys

from invoke import Collection, Exit, task

from keybuzz import ROOT, credentials
from keybuzz.errors import InputError
from keybuzz.inventory import preflight
from keybuzz.layers import LAYERS, ordered

PYINFRA = str(ROOT / ".venv" / "bin" / "pyinfra") if (ROOT / ".venv/bin/pyinfra").exists() else "pyinfra"


def _lab_env() -> dict:
    from keybuzz.lab import lab

    return lab.env()


def _apply_env(use_lab: bool) -> dict:
    env = _lab_env() if use_lab else {}
    os.environ.update(env)
    return env


def _fail(message: str) -> Exit:
    return Exit(f"keybuzz: {message}", code=2)


def _get_layer(name: str):
    if name not in LAYERS:
        raise _fail(f"no layer {name!r}; layers in order: {', '.join(LAYERS)}")
    layer = LAYERS[name]
    if not layer.exists():
        raise _fail(f"layer {name!r} is not implemented yet ({layer.deploy} does not exist)")
    return layer


def run_layer(c, layer, verbose: int = 0) -> None:
    """Validate inputs, then `pyinfra -y inventory.py deploys/<layer>.py`; raise Exit on failure."""
    try:
        preflight([layer])
    except InputError as e:
        raise _fail(str(e)) from None
    flags = ("-" + "v" * verbose) if verbose else ""
    print(f"==> layer {layer.name}: {layer.help}", flush=True)
    result = c.run(f"{PYINFRA} -y {flags} inventory.py {layer.deploy}", warn=True, pty=False, env=os.environ.copy())
    if result.exited != 0:
        raise _fail(f"layer {layer.name} failed (pyinfra exit {result.exited}); fix the error above and re-run")


def run_checks(layer, failover=False, perf=False) -> bool:
    """Run the layer's checks (diag, then --failover / --perf); print each report; bad input -> Exit."""
    try:
        return _run_checks(layer, failover, perf)
    except InputError as e:
        raise _fail(str(e)) from None


def _run_checks(layer, failover, perf) -> bool:
    if not layer.check:
        return True
    module = importlib.import_module(f"keybuzz.checks.{layer.check}")
    from keybuzz.checks import Target

    target = Target.from_env()
    ok = True
    for kind, wanted in (("diag", True), ("failover", failover), ("perf", perf)):
        if wanted:
            report = getattr(module, kind)(target)
            print(report, flush=True)
            ok = ok and report.ok
    return ok


@task(help={"name": f"one of: {', '.join(LAYERS)}", "lab": "target the local lab", "verbose": "pyinfra -v level"},
      incrementable=["verbose"])
def layer(c, name, lab=False, verbose=0):
    """Deploy one layer (pyinfra), then run its diag check."""
    _apply_env(lab)
    chosen = _get_layer(name)
    run_layer(c, chosen, verbose)
    if not run_checks(chosen):
        raise _fail(f"layer {name} deployed but its checks failed")


@task(name="all", help={"lab": "target the local lab"})
def all_layers(c, lab=False):
    """Every implemented layer in the design's order (§G); stops at the first failure."""
    _apply_env(lab)
    for chosen in ordered():
        if not chosen.exists():
            print(f"==> layer {chosen.name}: not implemented yet, skipped")
            continue
        run_layer(c, chosen)
        if not run_checks(chosen):
            raise _fail(f"checks of layer {chosen.name} failed; later layers not run")


@task(help={"name": "layer to check", "failover": "controlled failover, measures the gap",
            "perf": "bounded benchmark through the load balancer", "lab": "target the local lab"})
def check(c, name, failover=False, perf=False, lab=False):
    """Diag of a layer (design §G); --failover and --perf add the heavier checks."""
    _apply_env(lab)
    chosen = LAYERS.get(name)
    if chosen is None or not chosen.check:
        with_checks = [n for n, layer_ in LAYERS.items() if layer_.check]
        raise _fail(f"no checks for {name!r}; layers with checks: {', '.join(with_checks)}")
    if not run_checks(chosen, failover, perf):
        raise Exit(code=1)


@task(name="init", help={"dir": "credentials directory (default $KEYBUZZ_CREDENTIALS_DIR or "
                                f"{credentials.DEFAULT_DIR})"})
def credentials_init(c, dir=None):
    """Create missing credentials files/variables with random values (never overwrites a value)."""
    for line in credentials.init(dir) or ["all credentials present, nothing changed"]:
        print(line)


ns = Collection(layer, all_layers, check)
ns.add_collection(Collection("credentials", credentials_init))
try:
    from keybuzz.lab import tasks as lab_tasks

    ns.add_collection(lab_tasks.ns, name="lab")
except ImportError as e:  # the lab package is optional for production installs
    print(f"(lab tasks unavailable: {e})", file=sys.stderr)
