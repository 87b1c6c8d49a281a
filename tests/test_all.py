"""`invoke all` (keybuzz/run_all.py), pure: the real orchestration run with injected effects (deploy, check,
versions, sleep are plain functions given to `run`; pyinfra and the hosts are not involved). One injected failure
per kind (deploy error, diag red, failover loss, missing layer, missing checks) stops the run where it happened;
the report (Markdown + JSON) carries figures and never a secret; `invoke apps`' gate reads it, both ways.
The run against real hosts: tests/test_all_lab.py."""

from __future__ import annotations

import json
import time

import pytest

from helpers import run as run_cli
from keybuzz import ROOT, run_all
from keybuzz.checks import Report
from keybuzz.k3s.apps import apps_gate
from keybuzz.layers import LAYERS, ordered
from keybuzz.runner import DeployResult
from keybuzz.servers import load_servers

CANARY = "CANARY-s3cr3t-4b5c6d7e8f90"
INVENTORY = {"path": "servers.tsv", "sha256": "0" * 64}


class World:
    """The effects of a run, recorded: each deploy and check call, in order. `fail` maps (layer, step) to how
    it fails: "error" (pyinfra exit != 0), "red" (a red report), "raise" (the check crashes), "loss" (a failover
    that loses messages)."""

    def __init__(self, fail=None, missing=(), without_checks=(), output=""):
        self.fail = dict(fail or {})
        self.missing, self.without_checks, self.output = set(missing), set(without_checks), output
        self.calls: list[str] = []
        self.sleeps: list[float] = []

    def deploy(self, layer, dry, progress):
        self.calls.append(f"deploy{' --dry' if dry else ''} {layer.name}")
        progress("--> Starting operation: something")
        if self.fail.get((layer.name, "deploy")) == "error":
            return DeployResult(False, -1, f"--> Starting\nError: {layer.name}-01 failed {self.output}\n", 1.5)
        if dry:
            return DeployResult(True, -1, f"--> Detected changes:\nOperation  Change\n{layer.name} config  1\n", 0.5)
        return DeployResult(True, 3, f"--> Results:\nGrand total  2  3  -  5\n{self.output}", 2.0)

    def check(self, layer, kind):
        self.calls.append(f"{kind} {layer.name}")
        how = self.fail.get((layer.name, kind))
        if how == "raise":
            raise ConnectionError("refused")
        report = Report(f"{layer.name} {kind}")
        if how == "loss":
            report.add("write gap 2.10 s")
            report.add("3 confirmed messages lost", ok=False)
            report.metrics.update(gap_s=2.1, lost=3)
        elif how == "red":
            report.add(f"{layer.name}-02 down", ok=False)
        else:
            report.add(f"{layer.name}-01 ok {self.output}")
            report.metrics.update({"gap_s": 0.8, "lost": 0} if kind == "failover" else
                                  {"ops_s": 1234} if kind == "perf" else {"members": 3})
        return report

    def actions(self, not_applicable=None):
        return run_all.Actions(
            deploy=self.deploy, check=self.check, hosts=lambda layer: [f"{layer.name}-01", f"{layer.name}-02"],
            versions=lambda layer: {f"{layer.name}_image": {"pinned": f"{layer.name}:1.2.3"}},
            not_applicable=lambda layer: (not_applicable or {}).get(layer.name, {}),
            has_checks=lambda layer: layer.name not in self.without_checks,
            exists=lambda layer: layer.name not in self.missing, sleep=self.sleeps.append)


def _run(world, **kw):
    lines: list[str] = []
    report = run_all.run(ordered(), world.actions(kw.pop("not_applicable", None)), inventory=INVENTORY,
                         progress=run_all.Progress(lines.append, heartbeat=0), **kw)
    return report, lines


def test_the_order_is_explicit_haproxy_before_the_checks_that_go_through_it_proxysql_after_mariadb():
    steps = [f"{s.kind} {s.layer}" for s in run_all.plan(ordered())]
    assert steps == ["deploy base_os", "check base_os", "deploy db", "deploy redis", "deploy rabbitmq",
                     "deploy haproxy", "check db", "check redis", "check rabbitmq", "check haproxy",
                     "deploy minio", "check minio", "deploy mariadb", "check mariadb", "deploy proxysql",
                     "check proxysql", "deploy k3s", "check k3s"]


def test_a_run_does_the_plan_s_steps_in_its_order_and_each_checks_diag_failover_perf():
    """What the run really calls is the plan above, step by step (not only the plan's list)."""
    world = World()
    _run(world)
    expected = [f"deploy {s.layer}" if s.kind == "deploy" else f"{kind} {s.layer}"
                for s in run_all.plan(ordered()) for kind in (("deploy",) if s.kind == "deploy" else
                                                               ("diag", "failover", "perf"))]
    assert world.calls == expected


@pytest.mark.parametrize("layer, step", [("base_os", "deploy"), ("db", "deploy"), ("haproxy", "deploy"),
                                         ("redis", "diag"), ("haproxy", "perf"), ("k3s", "failover")])
def test_the_first_red_step_is_the_last_step_run(layer, step):
    """Stop at the first failure, wherever it is: nothing after it runs (deploys and checks alike)."""
    world = World(fail={(layer, step): "error" if step == "deploy" else "loss"})
    report, _ = _run(world)
    failing = f"{step} {layer}"
    clean = World()
    _run(clean)
    once = [c for i, c in enumerate(world.calls) if i == 0 or c != world.calls[i - 1]]  # a red diag is asked again
    assert once == clean.calls[:clean.calls.index(failing) + 1]
    assert report.status == "red" and report.stopped["layer"] == layer


def test_a_green_run_deploys_and_checks_every_layer_and_reports_figures(tmp_path):
    world = World()
    report, lines = _run(world)
    assert report.status == "green" and report.stopped is None
    assert world.calls[:4] == ["deploy base_os", "diag base_os", "failover base_os", "perf base_os"]
    assert world.calls.count("diag redis") == 1 and len([c for c in world.calls if c.startswith("deploy")]) == 9
    assert world.calls.index("deploy haproxy") < world.calls.index("diag db")
    redis = report.layer("redis")
    assert (redis.hosts, redis.deploy, redis.changes) == (["redis-01", "redis-02"], "ok", 3)
    assert [(c.kind, c.verdict) for c in redis.checks] == [("diag", "green"), ("failover", "green"),
                                                           ("perf", "green")]
    assert redis.versions == {"redis_image": {"pinned": "redis:1.2.3"}}
    assert any(line.startswith("[all 0:00 redis failover] failover check of layer redis") for line in lines)
    md, js = run_all.write_report(report, tmp_path, secrets=[])
    data = json.loads(js.read_text())
    assert data["status"] == "green" and data["inventory"] == INVENTORY
    assert data["layers"][2]["checks"][1]["metrics"] == {"gap_s": 0.8, "lost": 0}
    text = md.read_text()
    assert "# invoke all: GREEN" in text and "figures: gap_s=0.8, lost=0" in text
    assert "| redis | green | ok | 3 |" in text
    assert oct(js.stat().st_mode & 0o777) == "0o600"
    assert apps_gate(run_all.latest_report(INVENTORY, tmp_path), INVENTORY, time.time(), LAYERS) == []


def test_a_deploy_error_stops_the_run_naming_layer_and_next_step():
    world = World(fail={("redis", "deploy"): "error"})
    report, _ = _run(world)
    assert report.status == "red"
    assert world.calls[-1] == "deploy redis" and "deploy rabbitmq" not in world.calls
    assert report.stopped["layer"] == "redis" and report.stopped["step"] == "deploy"
    assert "invoke all --from redis" in report.stopped["next"]
    assert "Error: redis-01 failed" in report.layer("redis").note
    assert [r.status for r in report.layers][2:] == ["red"] + ["not run"] * 6
    assert "==> RED: stopped at layer redis (deploy)" in run_all.summary(report)


def test_a_red_diag_is_retried_then_stops_the_run():
    world = World(fail={("minio", "diag"): "red"})
    report, _ = _run(world)
    assert world.calls.count("diag minio") == 1 + run_all.DIAG_RETRIES
    assert world.sleeps == [run_all.DIAG_RETRY_S] * run_all.DIAG_RETRIES
    assert world.calls[-1] == "diag minio" and "failover minio" not in world.calls
    assert report.stopped == {"layer": "minio", "step": "check", "check": "diag",
                              "reason": "minio diag is red: minio-02 down",
                              "next": "fix what the check names, confirm with `invoke check --name minio`, then "
                                      "`invoke all --from minio`"}
    assert report.layer("minio").checks[0].attempts == 1 + run_all.DIAG_RETRIES


def test_a_failover_that_loses_messages_stops_the_run_at_once_with_its_figures():
    world = World(fail={("rabbitmq", "failover"): "loss"})
    report, _ = _run(world)
    assert world.calls.count("failover rabbitmq") == 1 and world.sleeps == []  # never retried
    assert world.calls[-1] == "failover rabbitmq" and "diag haproxy" not in world.calls
    assert report.stopped["check"] == "failover" and "--failover" in report.stopped["next"]
    failover = report.layer("rabbitmq").checks[1]
    assert (failover.verdict, failover.metrics) == ("red", {"gap_s": 2.1, "lost": 3})


def test_a_deploy_that_raises_is_a_red_deploy():
    world = World()

    def refuse(layer, dry, progress):
        raise RuntimeError("lab/lab.yaml: layer k3s runs in the lab with --dry only")
    actions = world.actions()
    actions.deploy = refuse
    report = run_all.run(ordered(), actions, inventory=INVENTORY, progress=run_all.Progress(lambda _: None, 0))
    assert report.stopped["layer"] == "base_os" and report.stopped["step"] == "deploy"
    assert report.layer("base_os").note == "RuntimeError: lab/lab.yaml: layer k3s runs in the lab with --dry only"


def test_an_interrupted_run_still_reports_how_far_it_went():
    world = World()
    actions = world.actions()

    def interrupted(layer, kind):
        if (layer.name, kind) == ("rabbitmq", "perf"):
            raise KeyboardInterrupt
        return world.check(layer, kind)
    actions.check = interrupted
    report = run_all.run(ordered(), actions, inventory=INVENTORY, progress=run_all.Progress(lambda _: None, 0))
    assert report.status == "red" and report.stopped["reason"] == "interrupted (Ctrl-C)"
    assert (report.stopped["layer"], report.layer("redis").status, report.layer("rabbitmq").status) == (
        "rabbitmq", "green", "red")


def test_a_crashing_check_is_red():
    world = World(fail={("k3s", "perf"): "raise"})
    report, _ = _run(world)
    assert report.stopped["layer"] == "k3s" and "check raised ConnectionError: refused" in report.stopped["reason"]


def test_a_missing_layer_is_red_never_skipped():
    world = World(missing={"mariadb"})
    report, _ = _run(world)
    assert report.status == "red" and report.layer("mariadb").deploy == "missing"
    assert report.stopped["reason"] == "deploys/mariadb.py does not exist"
    assert "deploy proxysql" not in world.calls


def test_a_layer_without_checks_is_red():
    world = World(without_checks={"haproxy"})
    report, _ = _run(world)
    assert report.stopped["layer"] == "haproxy" and "keybuzz/haproxy/check.py does not exist" in report.stopped[
        "reason"]


def test_a_check_the_layer_declares_not_applicable_is_said_not_run():
    world = World()
    report, _ = _run(world, not_applicable={"base_os": {"failover": "no service", "perf": "nothing to measure"}})
    assert "failover base_os" not in world.calls and "diag base_os" in world.calls
    assert [(c.kind, c.verdict) for c in report.layer("base_os").checks] == [("diag", "green"), ("failover", "n/a"),
                                                                             ("perf", "n/a")]
    assert report.status == "green"


def test_dry_run_deploys_with_dry_checks_nothing_and_shows_planned_changes():
    world = World()
    report, _ = _run(world, dry=True)
    assert world.calls == [f"deploy --dry {layer.name}" for layer in ordered()]
    assert report.status == "incomplete" and report.layer("redis").planned == ["Operation  Change", "redis config  1"]
    assert report.layer("redis").changes is None
    assert apps_gate(report.to_dict(), INVENTORY, time.time(), LAYERS) == ["the latest report is a --dry run: run "
                                                                            "`invoke all`"]


def test_lab_dry_only_layers_are_reported_as_such_neither_green_nor_skipped():
    world = World()
    report, _ = _run(world, dry_only={"minio": "no registry ships MinIO"}, lab=True)
    assert "deploy --dry minio" in world.calls and "diag minio" not in world.calls and "deploy mariadb" in world.calls
    minio = report.layer("minio")
    assert (minio.status, minio.deploy, minio.note) == ("dry-only", "dry",
                                                        "dry-run only in the lab (no registry ships MinIO)")
    assert report.status == "incomplete"
    assert "minio      dry-only  dry" in run_all.summary(report)
    assert apps_gate(report.to_dict(), INVENTORY, time.time(), LAYERS) == [
        "the latest report: the run is incomplete",
        "minio: dry-only: dry-run only in the lab (no registry ships MinIO)"]


def test_from_resumes_after_a_fix_carrying_the_earlier_green_layers(tmp_path):
    first, _ = _run(World(fail={("minio", "failover"): "loss"}))
    run_all.write_report(first, tmp_path, secrets=[])
    previous = run_all.latest_report(INVENTORY, tmp_path)
    world = World()
    second, _ = _run(world, start="minio", previous=previous)
    assert world.calls[0] == "deploy minio" and "deploy redis" not in world.calls
    assert second.status == "green" and second.layer("redis").status == "carried"
    assert second.layer("redis").checks[1].metrics == {"gap_s": 0.8, "lost": 0}
    assert second.layer("redis").note.startswith("carried from " + str(tmp_path))
    with pytest.raises(ValueError, match=r"--from k3s: layer minio is red in the latest report .*; run `invoke all "
                                         r"--from minio`"):
        _run(World(), start="k3s", previous=previous)
    with pytest.raises(ValueError, match="no earlier `invoke all` report of this inventory; run without --from"):
        _run(World(), start="k3s", previous=None)


def test_the_report_never_holds_a_secret_whatever_a_check_or_pyinfra_says(tmp_path, monkeypatch):
    """Canary credential values in the credentials directory; a check line, its figures and pyinfra's output all
    carry the canary: neither file does."""
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "redis.env").write_text(f"REDIS_PASSWORD={CANARY}\n")
    (creds / "redis.env").chmod(0o600)
    monkeypatch.setenv("KEYBUZZ_CREDENTIALS_DIR", str(creds))
    world = World(fail={("haproxy", "deploy"): "error"}, output=f"password={CANARY}")
    report, _ = _run(world)
    report.layer("base_os").checks[0].metrics["auth"] = CANARY
    assert CANARY in json.dumps(report.to_dict())  # the canary did reach the report's data
    md, js = run_all.write_report(report, tmp_path / "reports")
    for path in (md, js):
        text = path.read_text()
        assert CANARY not in text and "[redacted]" in text, path
    assert CANARY not in run_all.summary(report)


def test_the_apps_gate_refuses_old_red_missing_and_other_inventories(tmp_path):
    report, _ = _run(World())
    data = report.to_dict()
    now = time.time()
    assert apps_gate(data, INVENTORY, now, LAYERS) == []
    later = now + run_all.REPORT_MAX_AGE_S + 3600
    (reason,) = apps_gate(data, INVENTORY, later, LAYERS)
    assert "h old (bound 6 h): run `invoke all` again" in reason
    other = {"path": "other.tsv", "sha256": "1" * 64}
    assert apps_gate(data, other, now, LAYERS) == ["the latest report is of another inventory: run `invoke all`"]
    data["layers"] = [r for r in data["layers"] if r["name"] != "proxysql"]
    assert apps_gate(data, INVENTORY, now, LAYERS) == ["proxysql: not in the latest report"]
    red, _ = _run(World(fail={("redis", "failover"): "loss"}))
    assert apps_gate(red.to_dict(), INVENTORY, now, LAYERS)[:2] == [
        "the latest report: the run is red", "redis: red: failover red: 3 confirmed messages lost"]


def test_latest_report_is_the_newest_real_run_of_the_same_inventory(tmp_path):
    old, _ = _run(World())
    old.started -= 100
    new, _ = _run(World(fail={("db", "diag"): "red"}))
    dry, _ = _run(World(), dry=True)
    dry.started += 100
    other, _ = _run(World())
    other.inventory = {"path": "x", "sha256": "f" * 64}
    other.started += 200
    for r in (old, new, dry, other):
        run_all.write_report(r, tmp_path, secrets=[])
    (tmp_path / "broken.json").write_text("{not json")
    latest = run_all.latest_report(INVENTORY, tmp_path)
    assert latest["status"] == "red" and latest["file"].endswith(".json")
    assert run_all.latest_report(INVENTORY, tmp_path, include_dry=True)["dry"] is True


def test_a_quiet_step_shows_progress_with_layer_step_and_elapsed():
    lines: list[str] = []
    world = World()

    def slow_check(layer, kind):
        time.sleep(0.35 if (layer.name, kind) == ("db", "failover") else 0)
        return world.check(layer, kind)

    actions = world.actions()
    actions.check = slow_check
    run_all.run([LAYERS["db"]], actions, inventory=INVENTORY, progress=run_all.Progress(lines.append, heartbeat=0.1))
    beats = [line for line in lines if "still running" in line]
    assert any(line.startswith("[all 0:00 db failover] still running (") for line in beats), lines


def test_versions_name_the_pin_and_what_each_host_runs_with_its_digest():
    answers = {"10.0.0.11": "registry:5000/haproxy:2.8.5 registry:5000/haproxy@sha256:aa\nother:1.0 \n",
               "10.0.0.12": ""}
    versions = run_all.layer_versions(LAYERS["haproxy"], {"haproxy_image": "haproxy:2.8.5"},
                                      ask=lambda ip, command: answers.get(ip, ""))
    assert versions == {"haproxy_image": {"pinned": "haproxy:2.8.5", "running": {
        "haproxy-01": "registry:5000/haproxy:2.8.5 registry:5000/haproxy@sha256:aa"}}}


@pytest.mark.parametrize("layer, key, command_word, answer, running", [
    ("k3s", "k3s_version", "k3s", "k3s version v1.30.4+k3s1 (98262b5d)\ngo version go1.22.5\n",
     "k3s version v1.30.4+k3s1 (98262b5d)"),
    ("base_os", "docker_engine_package", "dpkg-query", "20.10.24+dfsg1-1+deb12u1", "20.10.24+dfsg1-1+deb12u1"),
])
def test_versions_of_what_is_not_an_image_come_from_the_layer_s_version_command(layer, key, command_word, answer,
                                                                                  running, tmp_path):
    """Layers whose pins are not images (K3s binary, the Docker package) say what runs through their check
    module's VERSION_COMMANDS, asked on every host of the layer; a host that does not answer is left out."""
    lines = (ROOT / "servers.tsv").read_text().splitlines()
    filled = tmp_path / "servers.tsv"  # the TBD addresses (K3s nodes) given one, as an operator will
    filled.write_text("\n".join(line.replace("\tTBD\t", f"\t10.0.9.{n}\t") for n, line in enumerate(lines)) + "\n")
    plan = load_servers(filled)
    ips = [s.ip for role in LAYERS[layer].roles for s in plan.group(role)]
    silent = ips[0]
    asked = []

    def ask(ip, command):
        asked.append(ip)
        return answer if command_word in command and ip != silent else ""

    versions = run_all.layer_versions(LAYERS[layer], {key: "pin"}, ask=ask, plan=plan)
    hosts = versions[key]["running"]
    assert set(hosts.values()) == {running}, versions
    assert sorted(set(asked)) == sorted(ips) and len(hosts) == len(ips) - 1 > 1


def test_invoke_all_refuses_an_unknown_from_before_anything_runs():
    result = run_cli(["invoke", "all", "--from", "redsi"])
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "keybuzz: --from redsi: no such layer; layers in order: base_os, db, redis" in result.stderr


def test_invoke_apps_runs_only_past_a_recent_green_report_of_the_same_inventory(tmp_path):
    """Both ways through the CLI, no host contacted: without a report the gate refuses; with a green report of
    this servers file it lets the apps through to the next step (which then stops on the masters' TBD addresses,
    before any connection)."""
    from test_k3s_apps import _filled

    (tmp_path / "no-credentials").mkdir()  # a second guard: nothing to log in with, whatever servers.tsv says
    env = {"KEYBUZZ_APPS": str(_filled(tmp_path)), "KEYBUZZ_REPORTS_DIR": str(tmp_path / "reports"),
           "KEYBUZZ_CREDENTIALS_DIR": str(tmp_path / "no-credentials")}
    refused = run_cli(["invoke", "apps"], env=env)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "apps refused: the latest `invoke all` report of this inventory is not 100 % green and recent" in \
        refused.stderr and "no `invoke all` report of this inventory" in refused.stderr
    inventory = run_all.inventory_id()
    green = run_all.run(ordered(), World().actions(), inventory=inventory, progress=run_all.Progress(lambda _: None,
                                                                                                   heartbeat=0))
    run_all.write_report(green, tmp_path / "reports", secrets=[])
    passed = run_cli(["invoke", "apps"], env=env)
    assert "gate: " in passed.stdout and " is green" in passed.stdout, passed.stdout + passed.stderr
    assert "apps refused" not in passed.stderr
    assert passed.returncode != 0 and "has no private_ip (TBD)" in passed.stderr  # stopped before any connection
