"""`invoke all` (design §G): every layer from zero in an explicit order, each followed by its diag, failover and
perf checks; the first red deploy or check stops the run; a report (Markdown + JSON) of what ran.

    steps = plan(ordered())                       # [Step("deploy", "base_os"), Step("check", "base_os"), ...]
    report = run(ordered(), real_actions(), inventory=inventory_id())
    paths = write_report(report)                  # .keybuzz/reports/<UTC time>-<inventory>.{md,json}
    keybuzz.k3s.apps.apps_gate(latest_report(inv), inv, time.time(), LAYERS)   # [] when `invoke apps` may run

The order is the layer table's (keybuzz/layers.py). The checks of DB, Redis and RabbitMQ go through the load
balancer, hence through HAProxy, which is deployed after what it fronts (its config names their hosts): their
checks run right after the HAProxy deploy, before HAProxy's own (Layer.checked_after). ProxySQL comes after MariaDB
(MariaDB's checks talk to the nodes, ProxySQL's go through ProxySQL to MariaDB).

Everything the run does to the world goes through `Actions` (deploy, check, versions, sleep): the tests inject
their own functions and run this very orchestration.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from keybuzz import ROOT
from keybuzz.checks import Report
from keybuzz.layers import Layer
from keybuzz.runner import CHECK_KINDS, DeployResult, strip_colors

# A layer's checks run once every layer they go through is deployed (the LB -> HAProxy path).
# `invoke apps` trusts a green report for this long: long enough for a run, a review and the apps deploy in one
# working session; short enough that yesterday's green never vouches for today's cluster.
REPORT_MAX_AGE_S = 6 * 3600
DIAG_RETRIES, DIAG_RETRY_S = 3, 10  # a just-deployed service may still converge; failover/perf are never retried
HEARTBEAT_S = 30  # a step quiet this long prints a progress line (layer, step, elapsed)
REPORTS_DIR = ROOT / ".keybuzz" / "reports"  # $KEYBUZZ_REPORTS_DIR names another


@dataclass(frozen=True)
class Step:
    kind: str  # "deploy" | "check"
    layer: str


def plan(layers: Sequence[Layer], start: str | None = None) -> list[Step]:
    """The run's steps: each layer's deploy, its checks right after (or after its Layer.checked_after).

    `start` (--from) keeps the steps of that layer and the ones after it.

    >>> from keybuzz.layers import LAYERS
    >>> [f"{s.kind} {s.layer}" for s in plan([LAYERS[n] for n in ("base_os", "redis", "haproxy", "minio")])]
    ['deploy base_os', 'check base_os', 'deploy redis', 'deploy haproxy', 'check redis', 'check haproxy', \
'deploy minio', 'check minio']
    >>> [f"{s.kind} {s.layer}" for s in plan([LAYERS[n] for n in ("db", "redis", "haproxy")], start="redis")]
    ['deploy redis', 'deploy haproxy', 'check redis', 'check haproxy']
    """
    names = [layer.name for layer in layers]
    steps: list[Step] = []
    waiting: dict[str, list[str]] = {}
    for layer in layers:
        name = layer.name
        steps.append(Step("deploy", name))
        after = layer.checked_after
        if after in names and names.index(after) > names.index(name):
            waiting.setdefault(after, []).append(name)
            continue
        steps += [Step("check", waiting_name) for waiting_name in waiting.pop(name, [])]
        steps.append(Step("check", name))
    if start is not None:
        kept = set(names[names.index(start):])
        steps = [s for s in steps if s.layer in kept]
    return steps


# --- results --------------------------------------------------------------------------------------------------


@dataclass
class CheckResult:
    kind: str  # diag | failover | perf
    verdict: str  # green | red | n/a (the layer says why it does not apply)
    title: str = ""
    lines: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0
    attempts: int = 1


@dataclass
class LayerResult:
    name: str
    hosts: list[str] = field(default_factory=list)
    # green | red | dry-only (lab: deployed with --dry, never checked) | dry (a --dry run) | carried (an earlier
    # report's green result, --from) | not run
    status: str = "not run"
    deploy: str = "not run"  # ok | failed | missing | dry | not run
    changes: int | None = None  # None: unknown (dry run)
    seconds: float = 0.0
    checks: list[CheckResult] = field(default_factory=list)
    versions: dict = field(default_factory=dict)
    note: str = ""  # why it is dry-only / where it was carried from / what failed
    planned: list[str] = field(default_factory=list)  # --dry: pyinfra's "Detected changes"
    finished: float | None = None  # time.time() when its last step ended


@dataclass
class RunReport:
    inventory: dict  # {"path": servers file, "sha256": of its content}
    started: float
    lab: bool = False
    dry: bool = False
    start_layer: str | None = None
    finished: float | None = None
    layers: list[LayerResult] = field(default_factory=list)
    status: str = "running"  # green | red | incomplete (no red, but dry / dry-only layers)
    stopped: dict | None = None  # {"layer", "step", "check", "reason", "next"} of the first red

    def layer(self, name: str) -> LayerResult:
        return next(r for r in self.layers if r.name == name)

    def to_dict(self) -> dict:
        return asdict(self)


# --- what the run does to the world ------------------------------------------------------------------------------


@dataclass
class Actions:
    """The run's effects, injected: the real ones (real_actions) or a test's."""

    deploy: Callable[[Layer, bool, Callable[[str], None]], DeployResult]  # (layer, dry, progress)
    check: Callable[[Layer, str], Report]  # (layer, kind) -> a Report; may raise
    hosts: Callable[[Layer], list[str]] = lambda layer: []
    versions: Callable[[Layer], dict] = lambda layer: {}
    not_applicable: Callable[[Layer], Mapping[str, str]] = lambda layer: {}  # {kind: why}
    has_checks: Callable[[Layer], bool] = lambda layer: layer.has_checks()
    exists: Callable[[Layer], bool] = lambda layer: layer.exists()
    sleep: Callable[[float], None] = time.sleep


class Progress:
    """Progress lines `[all m:ss layer step] message`, and a heartbeat while a step is quiet for HEARTBEAT_S."""

    def __init__(self, out: Callable[[str], None] = print, heartbeat: float = HEARTBEAT_S):
        self.out, self.heartbeat, self.start = out, heartbeat, time.monotonic()
        self.where = ""
        self._step_start = self.start
        self._last = self.start
        self._timer: threading.Timer | None = None

    def _stamp(self) -> str:
        elapsed = int(time.monotonic() - self.start)
        return f"[all {elapsed // 60}:{elapsed % 60:02d}{' ' + self.where if self.where else ''}]"

    def __call__(self, message: str) -> None:
        self._last = time.monotonic()
        self.out(f"{self._stamp()} {message}")

    def step(self, layer: str, step: str) -> None:
        self.where, self._step_start = f"{layer} {step}", time.monotonic()
        self._arm()

    def _arm(self) -> None:
        self.stop()
        if self.heartbeat:
            self._timer = threading.Timer(self.heartbeat, self._beat)
            self._timer.daemon = True
            self._timer.start()

    def _beat(self) -> None:
        if time.monotonic() - self._last >= self.heartbeat * 0.9:
            self(f"still running ({time.monotonic() - self._step_start:.0f} s in this step)")
        self._arm()

    def stop(self) -> None:
        if self._timer:
            self._timer.cancel()
            self._timer = None


def deploy_lines(progress: Callable[[str], None]) -> Callable[[str], None]:
    """pyinfra's step lines and errors, not every host's success line (a layer prints thousands)."""
    def show(line: str) -> None:
        plain = strip_colors(line)
        if plain.startswith("--> ") or "rror" in plain or "Traceback" in plain:
            progress("  " + plain)
    return show


def planned_changes(output: str, limit: int = 80) -> list[str]:
    """pyinfra's "Detected changes" table of a dry run (what the layer would change), at most `limit` lines.

    >>> planned_changes("--> Connecting\\n--> Detected changes:\\nOperation  Change\\nRedis config  1 (redis-01)\\n\\n"
    ...                 "--> Beginning operation run...")
    ['Operation  Change', 'Redis config  1 (redis-01)']
    """
    text = strip_colors(output)
    _, found, rest = text.partition("--> Detected changes:")
    if not found:
        return []
    lines = []
    for line in rest.splitlines():
        if line.startswith("--> "):
            break
        if line.strip() and not line.lstrip().startswith("Detected changes may not"):
            lines.append(line.rstrip())
    return lines[:limit]


# --- the run ----------------------------------------------------------------------------------------------------


def first_red(lines: Iterable[str]) -> str:
    return next((line[2:] for line in lines if line.startswith("! ")), "")


def _to_result(kind: str, report: Report, seconds: float, attempts: int) -> CheckResult:
    return CheckResult(kind, "green" if report.ok else "red", report.title, list(report.lines), dict(report.metrics),
                       round(seconds, 2), attempts)


def _run_check(layer: Layer, kind: str, actions: Actions) -> tuple[Report, int]:
    attempts = 0
    while True:
        attempts += 1
        try:
            report = actions.check(layer, kind)
        except Exception as e:  # a crashing check is a red check, with its reason
            report = Report(f"{layer.name} {kind}")
            report.add(f"check raised {type(e).__name__}: {e}", ok=False)
        if report.ok or kind != "diag" or attempts > DIAG_RETRIES:
            return report, attempts
        actions.sleep(DIAG_RETRY_S)


def run(layers: Sequence[Layer], actions: Actions, *, inventory: dict, dry: bool = False, start: str | None = None,
        dry_only: Mapping[str, str] | None = None, previous: Mapping | None = None, lab: bool = False,
        progress: Callable[[str], None] | None = None) -> RunReport:
    """Run `plan(layers, start)` with `actions`; stop at the first red step. Never raises for a red step: the
    report says where it stopped (`report.stopped`) and what to do next.

    `dry_only`: {layer: why} deployed with --dry and never checked (the lab, lab/lab.yaml). `previous`: the latest
    report of the same inventory (a dict, latest_report), whose green layers before `start` are carried over;
    `start` is refused (ValueError) when one of them is not green there.
    """
    dry_only = dict(dry_only or {})
    say = progress if isinstance(progress, Progress) else Progress(progress or print)
    names = [layer.name for layer in layers]
    report = RunReport(inventory, time.time(), lab, dry, start)
    report.layers = [LayerResult(layer.name) for layer in layers]
    if start is not None:
        if start not in names:
            raise ValueError(f"--from {start}: no such layer; layers in order: {', '.join(names)}")
        for name in names[:names.index(start)]:
            report.layers[names.index(name)] = carried(previous, name, start)
    by_name = {layer.name: layer for layer in layers}
    steps = plan(layers, start)
    step = steps[0]
    try:
        for step in steps:
            layer, result = by_name[step.layer], report.layer(step.layer)
            if not result.hosts:
                try:
                    result.hosts = list(actions.hosts(layer))
                except Exception as e:  # unknown hosts are reported, not fatal: the deploy names the real problem
                    result.note = f"hosts unknown ({type(e).__name__})"
            say.step(layer.name, step.kind)
            stop = _deploy(layer, result, actions, dry or layer.name in dry_only, say) if step.kind == "deploy" \
                else _checks(layer, result, actions, dry, dry_only.get(layer.name), say)
            result.finished = time.time()
            if stop:
                report.stopped = stop
                report.status = "red"
                break
    except KeyboardInterrupt:  # the operator stopped it: the report still says how far it went
        report.stopped = {"layer": step.layer, "step": step.kind, "check": None, "reason": "interrupted (Ctrl-C)",
                          "next": f"`invoke all --from {step.layer}`"}
        report.status = "red"
        report.layer(step.layer).status = "red"
    finally:
        say.stop()
    report.finished = time.time()
    if report.status != "red":
        report.status = "green" if all(r.status in ("green", "carried") for r in report.layers) else "incomplete"
    return report


def carried(previous: Mapping | None, name: str, start: str) -> LayerResult:
    """Layer `name`'s green result in the previous report, for a run resumed at `start` (ValueError otherwise)."""
    if previous is None:
        raise ValueError(f"--from {start}: no earlier `invoke all` report of this inventory; run without --from")
    if previous.get("dry"):
        raise ValueError(f"--from {start}: the latest report is a --dry run; run without --from")
    old = next((r for r in previous.get("layers", []) if r["name"] == name), None)
    if old is None or old["status"] not in ("green", "carried", "dry-only"):
        status = old["status"] if old else "absent"
        raise ValueError(f"--from {start}: layer {name} is {status} in the latest report "
                         f"({previous.get('file', '?')}); run `invoke all --from {name}`")
    result = LayerResult(**{**old, "checks": [CheckResult(**c) for c in old["checks"]]})
    if result.status == "green":
        result.status = "carried"
    result.note = (f"carried from {previous.get('file', 'the previous report')}" + (f"; {old['note']}" if old["note"]
                   and not old["note"].startswith("carried") else ""))
    return result


def _deploy(layer: Layer, result: LayerResult, actions: Actions, dry: bool, say: Progress) -> dict | None:
    if not actions.exists(layer):
        result.deploy, result.status = "missing", "red"
        result.note = f"{layer.deploy} does not exist"
        say(f"RED: {layer.deploy} does not exist: the layer is not implemented")
        return {"layer": layer.name, "step": "deploy", "check": None, "reason": result.note,
                "next": f"write {layer.deploy} (a missing layer is red, never skipped), then "
                        f"`invoke all --from {layer.name}`"}
    say(f"deploying layer {layer.name} ({layer.help}){' with --dry' if dry else ''}")
    try:
        deployed = actions.deploy(layer, dry, deploy_lines(say))
    except Exception as e:  # pyinfra missing, the lab refusing...: a red deploy, reported, never a traceback
        deployed = DeployResult(False, -1, f"{type(e).__name__}: {e}", 0.0)
    result.seconds += deployed.seconds
    result.changes = deployed.changes if deployed.changes >= 0 else None
    if dry:
        result.planned = planned_changes(deployed.output)
        say("would change:\n" + ("\n".join("  " + line for line in result.planned) or "  nothing detected"))
    if not deployed.ok:
        result.deploy, result.status = "failed", "red"
        tail = [strip_colors(line) for line in deployed.output.splitlines()[-30:]]
        result.note = "\n".join(tail)
        say("RED: deploy failed; pyinfra's last lines:\n" + "\n".join(tail))
        return {"layer": layer.name, "step": "deploy", "check": None, "reason": f"pyinfra failed on {layer.deploy}",
                "next": f"fix the error shown by pyinfra (run `invoke layer --name {layer.name} -v` for details), "
                        f"then `invoke all --from {layer.name}`"}
    result.deploy = "dry" if dry else "ok"
    say(f"layer {layer.name}: {'dry run' if dry else 'deployed'}"
        f"{f', {result.changes} changes' if result.changes is not None else ''} in {deployed.seconds:.0f} s")
    return None


def _checks(layer: Layer, result: LayerResult, actions: Actions, dry: bool, dry_only_why: str | None,
            say: Progress) -> dict | None:
    if dry or dry_only_why is not None:
        result.status = "dry" if dry else "dry-only"
        if dry_only_why is not None:
            result.note = f"dry-run only in the lab ({dry_only_why})"
            say(f"layer {layer.name}: {result.note}: not checked")
        return None
    module_path = f"keybuzz/{layer.name}/check.py"
    if not actions.has_checks(layer):
        result.status = "red"
        result.note = f"{module_path} does not exist: the layer cannot be checked"
        say(f"RED: {result.note}")
        return {"layer": layer.name, "step": "check", "check": "diag", "reason": result.note,
                "next": f"write {module_path} (diag, failover, perf; a layer that cannot be checked is red), then "
                        f"`invoke all --from {layer.name}`"}
    not_applicable = dict(actions.not_applicable(layer))
    for kind in CHECK_KINDS:
        if kind in not_applicable:
            result.checks.append(CheckResult(kind, "n/a", f"{layer.name} {kind}", [f"  {not_applicable[kind]}"]))
            say(f"{kind}: n/a ({not_applicable[kind]})")
            continue
        say.step(layer.name, kind)
        say(f"{kind} check of layer {layer.name}")
        begin = time.monotonic()
        report, attempts = _run_check(layer, kind, actions)
        checked = _to_result(kind, report, time.monotonic() - begin, attempts)
        result.checks.append(checked)
        result.seconds += checked.seconds
        say(str(report))
        if not report.ok:
            result.status = "red"
            flag = "" if kind == "diag" else f" --{kind}"
            return {"layer": layer.name, "step": "check", "check": kind,
                    "reason": f"{report.title} is red: {first_red(report.lines)}",
                    "next": f"fix what the check names, confirm with `invoke check --name {layer.name}{flag}`, then "
                            f"`invoke all --from {layer.name}`"}
    try:
        result.versions = dict(actions.versions(layer))
    except Exception as e:  # versions are information: an unreadable one is said, not fatal
        result.versions = {"unknown": f"{type(e).__name__}"}
    result.status = "green"
    return None


# --- the report: files, secrets, screen ------------------------------------------------------------------------


def inventory_id(path: str | os.PathLike | None = None) -> dict:
    """{"path", "sha256"} of the servers file the run targets (the same inventory = the same content)."""
    from keybuzz.servers import servers_path

    p = Path(path) if path else servers_path()
    return {"path": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}


def reports_dir() -> Path:
    return Path(os.environ.get("KEYBUZZ_REPORTS_DIR") or REPORTS_DIR)


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret value replaced (longest first) by [redacted].

    >>> redact("login app:s3cret-x ok", ["s3cret-x"])
    'login app:[redacted] ok'
    """
    for value in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(value, "[redacted]")
    return text


def secret_values() -> list[str]:
    """Every credential value this install host holds (to keep them out of the report, whatever a check says)."""
    from keybuzz import credentials

    values: list[str] = []
    try:
        store = credentials.backend()
    except Exception:  # no backend: no value to hide
        return values
    for brick in credentials.BRICKS:
        try:
            values += [str(v) for v in store.read(brick).values() if v]
        except Exception:  # a brick not present on this host holds no value to hide
            continue
    return values


def to_markdown(report: RunReport) -> str:
    when = datetime.fromtimestamp(report.started, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    took = (report.finished or report.started) - report.started
    out = [f"# invoke all{' --lab' if report.lab else ''}{' --dry' if report.dry else ''}"
           f"{f' --from {report.start_layer}' if report.start_layer else ''}: {report.status.upper()}", "",
           f"- started {when}, {took / 60:.1f} min", f"- inventory {report.inventory['path']} "
           f"(sha256 {report.inventory['sha256'][:12]})"]
    if report.stopped:
        s = report.stopped
        out += [f"- **stopped at layer {s['layer']}, {s['step']}{' ' + s['check'] if s['check'] else ''}**: "
                f"{s['reason']}", f"- next: {s['next']}"]
    out += ["", "| layer | status | deploy | changes | seconds | checks | hosts |", "|---|---|---|---|---|---|---|"]
    for r in report.layers:
        checks = ", ".join(f"{c.kind} {c.verdict}" for c in r.checks) or "-"
        changes = "-" if r.changes is None else str(r.changes)
        out.append(f"| {r.name} | {r.status} | {r.deploy} | {changes} | {r.seconds:.0f} | {checks} | "
                   f"{len(r.hosts)} |")
    for r in report.layers:
        out += ["", f"## {r.name}: {r.status}", ""]
        if r.hosts:
            out.append(f"hosts: {', '.join(r.hosts)}")
        if r.note:
            out += ["", "```", r.note, "```"] if "\n" in r.note else [f"note: {r.note}"]
        for c in r.checks:
            tries = f", {c.attempts} attempts" if c.attempts > 1 else ""
            out += ["", f"### {c.kind}: {c.verdict} ({c.seconds:.1f} s{tries})", "", "```", c.title, *c.lines, "```"]
            if c.metrics:
                out.append("figures: " + ", ".join(f"{k}={v}" for k, v in c.metrics.items()))
        if r.versions:
            out += ["", "versions:"] + [f"- {k}: {v}" for k, v in r.versions.items()]
        if r.planned:
            out += ["", "would change:", "```", *r.planned, "```"]
    return "\n".join(out) + "\n"


def summary(report: RunReport) -> str:
    """The on-screen summary: one line per layer, then the verdict."""
    lines = [f"{'layer':<10} {'status':<9} {'deploy':<8} {'changes':<8} {'seconds':<8} checks"]
    for r in report.layers:
        checks = " ".join(f"{c.kind}:{c.verdict}" for c in r.checks) or (r.note.splitlines()[0][:60] if r.note
                                                                          else "-")
        lines.append(f"{r.name:<10} {r.status:<9} {r.deploy:<8} {'-' if r.changes is None else r.changes!s:<8} "
                     f"{r.seconds:<8.0f} {checks}")
    stop = report.stopped
    where = f": stopped at layer {stop['layer']} ({stop['step']}{' ' + stop['check'] if stop['check'] else ''})" \
        if stop else ""
    lines.append(f"==> {report.status.upper()}{where}")
    return "\n".join(lines)


def write_report(report: RunReport, directory: str | os.PathLike | None = None,
                 secrets: Iterable[str] | None = None) -> tuple[Path, Path]:
    """Write <dir>/<UTC time>-<inventory sha256[:12]>.{md,json} (0600: a report names hosts), secrets redacted."""
    directory = Path(directory) if directory else reports_dir()
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromtimestamp(report.started, UTC).strftime("%Y%m%dT%H%M%SZ")
    base = directory / f"{stamp}-{report.inventory['sha256'][:12]}{'-dry' if report.dry else ''}"
    values = list(secret_values() if secrets is None else secrets)
    paths = (base.with_suffix(".md"), base.with_suffix(".json"))
    data = report.to_dict()
    data["file"] = str(paths[1])
    texts = (to_markdown(report), json.dumps(data, indent=2, default=str) + "\n")
    for path, text in zip(paths, texts, strict=True):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(redact(text, values))
    return paths


def read_reports(directory: str | os.PathLike | None = None) -> list[dict]:
    """Every readable JSON report in the directory (unreadable ones are ignored: never trusted)."""
    directory = Path(directory) if directory else reports_dir()
    out = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("inventory"), dict):
            data["file"] = str(path)
            out.append(data)
    return out


def latest_report(inventory: Mapping, directory: str | os.PathLike | None = None,
                  include_dry: bool = False) -> dict | None:
    """The most recent real (not --dry) run's report of the same inventory content, or None."""
    same = [r for r in read_reports(directory) if r["inventory"].get("sha256") == inventory["sha256"]
            and (include_dry or not r.get("dry"))]
    return max(same, key=lambda r: r.get("started") or 0, default=None)


# --- the real effects -----------------------------------------------------------------------------------------


def not_applicable(layer: Layer) -> dict[str, str]:
    """{kind: why} a layer's check module declares (NOT_APPLICABLE) for checks that have no meaning for it."""
    module = importlib.import_module(layer.check)
    return dict(getattr(module, "NOT_APPLICABLE", {}) or {})


def check(layer: Layer, kind: str, target=None) -> Report:
    """One check of a layer; a check module without `kind` is a red report (a missing check is never skipped)."""
    from keybuzz.checks import Target

    module = importlib.import_module(layer.check)
    function = getattr(module, kind, None)
    if function is None:
        report = Report(f"{layer.name} {kind}")
        report.add(f"keybuzz/{layer.name}/check.py has no {kind}(target)", ok=False)
        return report
    return function(target or Target.from_env())


def layer_hosts(layer: Layer) -> list[str]:
    from keybuzz.servers import load_servers

    plan_ = load_servers()
    return [s.name for role in layer.roles for s in plan_.group(role)]


_RUNNING = ("docker ps --format '{{.Image}}' | sort -u | while read -r image; do "
            "echo \"$image $(docker image inspect --format '{{join .RepoDigests \",\"}}' \"$image\" 2>/dev/null)\"; "
            "done")


def running_images(output: str) -> dict[str, str]:
    """{image: repo digests} from _RUNNING's output.

    >>> running_images("registry:5000/redis:7.2.5-alpine registry:5000/redis@sha256:ab\\n")
    {'registry:5000/redis:7.2.5-alpine': 'registry:5000/redis@sha256:ab'}
    """
    out = {}
    for line in output.splitlines():
        image, _, digests = line.strip().partition(" ")
        if image:
            out[image] = digests.strip()
    return out


def _repo_name(ref: str) -> str:
    """redis:7.2.5-alpine, 172.30.0.2:5000/library/redis:7.2.5-alpine -> redis

    >>> _repo_name("172.30.0.2:5000/library/redis:7.2.5-alpine"), _repo_name("quay.io/coreos/etcd:v3.5.15")
    ('redis', 'etcd')
    """
    return re.split(r"[:@]", ref.rsplit("/", 1)[-1])[0]


def layer_versions(layer: Layer, pins: Mapping | None = None, ask: Callable[[str, str], str] | None = None,
                   plan=None) -> dict:
    """What the report says a layer runs: each pin of versions.yaml (Layer.versions), and per host what actually
    runs: the image (with its registry digest) where Docker tells it, and for the other pins the answer of the
    command the layer's check module names in VERSION_COMMANDS (K3s: `k3s --version`; base OS: the Docker
    package). `ask(ip, command)` -> its output (SSH by default; "" when the host does not answer).
    """
    from keybuzz import ssh
    from keybuzz.servers import load_servers
    from keybuzz.versions import load_versions

    pins = pins if pins is not None else load_versions()
    plan = plan or load_servers()
    keys = layer.versions
    out: dict = {key: {"pinned": str(pins.get(key, "?"))} for key in keys}
    images = {_repo_name(str(pins[k])): k for k in keys if k.endswith("_image") and pins.get(k)}
    commands = {k: c for k, c in getattr(_check_module(layer), "VERSION_COMMANDS", {}).items() if k in out}

    def over_ssh(ip: str, command: str) -> str:
        result = ssh.run(ip, command, timeout=30)
        return result.stdout if result.returncode == 0 else ""

    ask = ask or over_ssh
    for role in layer.roles:
        for server in plan.group(role):
            if not server.ip:
                continue
            if images:
                for image, digests in running_images(ask(server.ip, _RUNNING)).items():
                    key = images.get(_repo_name(image))
                    if key:
                        out[key].setdefault("running", {})[server.name] = \
                            f"{image}{' ' + digests if digests else ''}"
            for key, command in commands.items():
                answer = ask(server.ip, command).strip().splitlines()
                if answer:
                    out[key].setdefault("running", {})[server.name] = answer[0].strip()
    return out


def _check_module(layer: Layer):
    """keybuzz.<layer>.check, or None for a layer without checks."""
    return importlib.import_module(layer.check) if layer.has_checks() else None


def real_actions(deploy: Callable[..., DeployResult] | None = None) -> Actions:
    """The effects of a real run: pyinfra through keybuzz.runner (or `deploy(layer_name, progress, extra=...)`,
    the lab's), the layers' checks against Target.from_env(), versions over SSH."""
    from keybuzz import runner

    def deploy_layer(layer: Layer, dry: bool, progress: Callable[[str], None]) -> DeployResult:
        extra = ("--dry",) if dry else ()
        if deploy is not None:
            return deploy(layer.name, progress, extra=extra)
        return runner.deploy(layer, progress=progress, extra=extra)

    return Actions(deploy=deploy_layer, check=check, hosts=layer_hosts, versions=layer_versions,
                   not_applicable=not_applicable)
