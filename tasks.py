"""invoke tasks: `invoke --list`.

    invoke credentials.init            create missing credentials (random, root:root 0600)
    invoke layer --name redis          deploy one layer, then run its checks
    invoke all [--from L] [--dry]      every layer in order with diag/failover/perf, stop at the first red, report
    invoke check --name redis          diag (add --failover / --perf)
    invoke apps [--render DIR]         KeyBuzz's apps on K3s, only when every layer is green (§G)
    invoke versions.check [--lock F]   every pinned image's digest from its registry (or the mirror)
    invoke lab.up / lab.down / lab.status / lab.ssh <host>

`--lab` on layer/all/check targets the local lab instead of servers.tsv.
"""

from __future__ import annotations

import os
import sys
import time

from invoke import Collection, Exit, task

from keybuzz import credentials, run_all, runner, versions
from keybuzz.errors import InputError
from keybuzz.inventory import preflight
from keybuzz.layers import LAYERS, ordered


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


def run_layer(layer, verbose: int = 0) -> None:
    """Validate inputs, then `pyinfra -y inventory.py deploys/<layer>.py` (keybuzz.runner); raise Exit on failure."""
    try:
        preflight([layer])
    except InputError as e:
        raise _fail(str(e)) from None
    print(f"==> layer {layer.name}: {layer.help}", flush=True)
    result = runner.deploy(layer, progress=lambda line: print(line, flush=True), verbose=verbose)
    if not result.ok:
        raise _fail(f"layer {layer.name} failed; fix the error above and re-run")
    print(f"==> layer {layer.name}: {result.changes} changes in {result.seconds:.0f} s", flush=True)


def run_checks(layer, failover=False, perf=False) -> bool:
    """Run the layer's checks (diag, then --failover / --perf); print each report; bad input -> Exit."""
    kinds = ["diag", *(["failover"] if failover else []), *(["perf"] if perf else [])]
    try:
        reports = runner.run_checks(layer, kinds)
    except InputError as e:
        raise _fail(str(e)) from None
    for report in reports:
        print(report, flush=True)
    return all(r.ok for r in reports)


@task(help={"name": f"one of: {', '.join(LAYERS)}", "lab": "target the local lab", "verbose": "pyinfra -v level"},
      incrementable=["verbose"])
def layer(c, name, lab=False, verbose=0):
    """Deploy one layer (pyinfra), then run its diag check."""
    _apply_env(lab)
    chosen = _get_layer(name)
    run_layer(chosen, verbose)
    if not run_checks(chosen):
        raise _fail(f"layer {name} deployed but its checks failed")


@task(name="all", help={"lab": "target the local lab (started if needed; its dry_only layers run with --dry only)",
                         "from": "resume at this layer (earlier layers must be green in the latest report)",
                         "dry": "show what each layer would change; change nothing, check nothing",
                         "reports": f"report directory (default $KEYBUZZ_REPORTS_DIR or {run_all.REPORTS_DIR})"})
def all_layers(c, lab=False, from_=None, dry=False, reports=None):
    """Every layer in order (§G), each followed by diag, failover and perf; stops at the first red; writes a report."""
    _apply_env(lab)
    layers = ordered()
    if from_ is not None and from_ not in LAYERS:
        raise _fail(f"--from {from_}: no such layer; layers in order: {', '.join(LAYERS)}")
    hidden = run_all.secret_values()  # whatever a check or pyinfra prints, no credential value reaches the screen
    say = run_all.Progress(lambda line: print(run_all.redact(line, hidden), flush=True))
    deploy, dry_only = None, {}
    if lab:
        from keybuzz.lab import lab as lab_module

        try:
            lab_module.start(say)  # from nothing: containers, registry, LB stand-in, .lab/ files (no deploy)
        except lab_module.LabError as e:
            raise _fail(f"lab: {e}") from None
        deploy, dry_only = lab_module.deploy, {n: d["why"] for n, d in lab_module.DRY_ONLY.items()}
        hidden[:] = run_all.secret_values()  # the lab's credentials exist now
    try:  # every input of every layer, before any host is contacted (a dry-only layer's own run checks its own)
        preflight([layer for layer in layers if layer.exists() and layer.name not in dry_only])
        inventory = run_all.inventory_id()
    except InputError as e:
        raise _fail(str(e)) from None
    previous = run_all.latest_report(inventory, reports) if from_ else None
    try:
        report = run_all.run(layers, run_all.real_actions(deploy), inventory=inventory, dry=dry, start=from_,
                             dry_only=dry_only, previous=previous, lab=lab, progress=say)
    except ValueError as e:  # --from refused
        raise _fail(str(e)) from None
    md, js = run_all.write_report(report, reports)
    print(run_all.redact(run_all.summary(report), hidden), flush=True)
    print(f"report: {md} and {js}", flush=True)
    if report.stopped:
        s = report.stopped
        raise _fail(run_all.redact(f"all stopped at layer {s['layer']}, {s['step']}"
                                   f"{' ' + s['check'] if s['check'] else ''}: {s['reason']}\n  next: {s['next']}",
                                   hidden))


@task(help={"name": "layer to check", "failover": "controlled failover, measures the gap",
            "perf": "bounded benchmark through the load balancer", "lab": "target the local lab"})
def check(c, name, failover=False, perf=False, lab=False):
    """Diag of a layer (design §G); --failover and --perf add the heavier checks."""
    _apply_env(lab)
    chosen = LAYERS.get(name)
    if chosen is None or not chosen.has_checks():
        with_checks = [n for n, layer_ in LAYERS.items() if layer_.has_checks()]
        raise _fail(f"no checks for {name!r}; layers with checks: {', '.join(with_checks)}")
    if not run_checks(chosen, failover, perf):
        raise Exit(code=1)


@task(help={"lab": "target the local lab",
            "render": "write the generated manifests (no secret) into this directory and stop: no gate, no cluster"})
def apps(c, lab=False, render=None):
    """KeyBuzz's applications on K3s (apps.yaml, design §E), refused unless every layer's checks are green (§G)."""
    from pathlib import Path

    from keybuzz.k3s import apps as k3s_apps
    from keybuzz.k3s import client
    from keybuzz.servers import load_servers

    _apply_env(lab)
    try:
        listed, namespace = k3s_apps.load_apps()
        plan = load_servers()
        minio = [s.ip for s in plan.group("minio") if s.ip]
        docs = k3s_apps.manifests(listed, namespace, minio[0] if minio else None)
    except InputError as e:
        raise _fail(str(e)) from None
    problems = k3s_apps.policy_problems(docs)
    if problems:
        raise _fail("apps refused by the policy check (design §E):\n  " + "\n  ".join(problems))
    if render:
        out = Path(render)
        out.mkdir(parents=True, exist_ok=True)
        for app in listed:
            mine = [d for source, d in docs if d["metadata"].get("name") == app.name and d["kind"] != "Namespace"]
            (out / f"{app.name}.yaml").write_text(k3s_apps.to_yaml(mine))
        print(f"{len(listed)} apps rendered into {out}/ (no Secret: they are created at deploy time)")
        return
    inventory = run_all.inventory_id()
    latest = run_all.latest_report(inventory)
    reasons = k3s_apps.apps_gate(latest, inventory, time.time(), list(LAYERS))
    if reasons:
        raise _fail("apps refused: the latest `invoke all` report of this inventory is not 100 % green and recent "
                    "(design §G):\n  " + "\n  ".join(reasons))
    print(f"gate: {latest['file']} is green", flush=True)
    try:
        plan.require_addresses(("k3s_masters",))
        secrets = k3s_apps.secrets(listed, namespace, credentials.load)  # every brick read before any change
    except InputError as e:
        raise _fail(str(e)) from None
    master = plan.group("k3s_masters")[0].ip
    lines = client.apply(master, k3s_apps.to_yaml([docs[0][1]]))  # the namespace, before what lives in it
    lines += client.apply(master, k3s_apps.to_yaml(secrets))  # through stdin: never a file, never argv
    lines += client.apply(master, k3s_apps.to_yaml(d for _, d in docs[1:]))
    for line in lines:
        print(line)
    print(f"==> apps: {len(listed)} apps, {client.changed(lines)} objects created or changed")


@task(name="init", help={"dir": "credentials directory (default $KEYBUZZ_CREDENTIALS_DIR or "
                                f"{credentials.DEFAULT_DIR})"})
def credentials_init(c, dir=None):
    """Create missing credentials files/variables with random values (never overwrites a value)."""
    try:
        changes = credentials.init(dir)
    except InputError as e:  # an existing .env that cannot be read safely is never rewritten
        raise _fail(str(e)) from None
    for line in changes or ["all credentials present, nothing changed"]:
        print(line)


@task(name="check", help={"lock": "write the digests found to this lock file; deploys use it with "
                                  "KEYBUZZ_VERSIONS_LOCK=<file>"})
def versions_check(c, lock=None):
    """Ask the registry (or the mirror) for every pinned image's digest; --lock FILE writes a lock file."""
    try:
        pins = versions.load_versions()
    except InputError as e:
        raise _fail(str(e)) from None
    results = versions.check_images(pins)
    for result in results:
        print(result.line(), flush=True)
    missing = [r.key for r in results if r.status != "found"]
    if lock:
        if len(missing) == len(results):
            print(f"no image found: {lock} not written")
        else:
            locked = versions.write_lock(lock, results, pins)
            print(f"lock written: {lock} ({len(locked)} of {len(results)} images"
                  f"{'; not locked: ' + ', '.join(missing) if missing else ''}); "
                  f"deploys use it with KEYBUZZ_VERSIONS_LOCK={lock}")
    if missing:
        raise Exit(f"keybuzz: not found or unreachable: {', '.join(missing)}", code=1)


ns = Collection(layer, all_layers, check, apps)
ns.add_collection(Collection("credentials", credentials_init))
ns.add_collection(Collection("versions", versions_check))
try:
    from keybuzz.lab import tasks as lab_tasks

    ns.add_collection(lab_tasks.ns, name="lab")
except ImportError as e:  # the lab package is optional for production installs
    print(f"(lab tasks unavailable: {e})", file=sys.stderr)
