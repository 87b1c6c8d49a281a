"""`invoke all --lab` end to end (marker `lab`): every layer the lab can run, deployed and checked (diag, failover,
perf) in the explicit order, the lab/lab.yaml dry_only layers run with --dry and reported as such, the report
(Markdown + JSON) complete and free of the lab's credential values; then `--from` carries the earlier layers,
`--dry` changes nothing, and `invoke apps --lab` is refused (the lab's report is never 100 % green: K3s is dry-only).

Order matters (one lab per session): the tests run top to bottom, after every other test of the session
(tests/conftest.py). The first takes the lab down and lets `invoke all --lab` start it from nothing (unless
KEYBUZZ_LAB_KEEP=1), as the issue's target says: no lab -> a report in under 15 minutes.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from helpers import ROOT, run
from keybuzz import credentials
from keybuzz.lab import lab as lab_module
from keybuzz.layers import ordered

RUN_TIMEOUT_S = 3600  # bound of one `invoke all --lab` (target: under 15 min on the 2-core machine)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    return tmp_path_factory.mktemp("reports")


def _latest(reports_dir, dry=False) -> dict:
    files = sorted(reports_dir.glob("*-dry.json" if dry else "*[0-9a-f].json"))
    assert files, f"no report in {reports_dir}"
    return json.loads(files[-1].read_text())


def _lab_secrets() -> list[str]:
    values = []
    for brick in credentials.BRICKS:
        try:
            # generated secrets (43 characters); user names ("postgres", "erpnext") are not secrets and do
            # appear in the output (`credentials postgres loaded` names the brick)
            values += [v for v in credentials.FileBackend(lab_module.paths()["credentials"]).read(brick).values() if
                       len(v) >= 16]
        except Exception:  # a brick the lab has no file for holds nothing to leak
            continue
    return values


def test_invoke_all_lab_from_no_lab_runs_every_layer_the_lab_can_run_and_writes_a_green_report(lab, reports):
    if os.environ.get("KEYBUZZ_LAB_KEEP") != "1":  # from no lab at all (tests/conftest.py runs this file last)
        lab_module.down(progress=lambda m: None)
    start = time.monotonic()
    result = run(["invoke", "all", "--lab", "--reports", str(reports)], timeout=RUN_TIMEOUT_S)
    seconds = time.monotonic() - start
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    data = _latest(reports)
    by_name = {r["name"]: r for r in data["layers"]}
    assert list(by_name) == [layer.name for layer in ordered()]  # every layer, in order: none skipped
    assert data["status"] == ("incomplete" if lab_module.DRY_ONLY else "green") and data["stopped"] is None
    for name, r in by_name.items():
        if name in lab_module.DRY_ONLY:
            assert (r["status"], r["deploy"], r["checks"]) == ("dry-only", "dry", []), r
            assert r["note"] == f"dry-run only in the lab ({lab_module.DRY_ONLY[name]['why']})"
            continue
        assert (r["status"], r["deploy"]) == ("green", "ok"), (name, r["note"], r["checks"])
        assert r["hosts"] and r["changes"] is not None and r["seconds"] > 0
        assert [c["kind"] for c in r["checks"]] == ["diag", "failover", "perf"]
        assert all(c["verdict"] in ("green", "n/a") for c in r["checks"])
        assert r["versions"], name
    # failover figures of the layers that lose nothing (issue 15: messages / transactions lost)
    assert by_name["db"]["checks"][1]["metrics"]["lost"] == 0
    assert by_name["rabbitmq"]["checks"][1]["metrics"]["lost"] == 0
    assert "gap_s" in by_name["redis"]["checks"][1]["metrics"]
    # the HAProxy tier's failover: one HAProxy host stopped, new connections through the LB measured per port
    tier = by_name["haproxy"]["checks"][1]["metrics"]
    assert {"window_6379_s", "window_5672_s", "failed_6379", "failed_5672"} <= set(tier), tier
    # the base OS's running Docker package, from its VERSION_COMMANDS (hosts without Docker: K3s nodes)
    assert by_name["base_os"]["versions"]["docker_engine_package"]["running"], by_name["base_os"]["versions"]
    # the images actually running, with their digest from the lab registry
    running = by_name["redis"]["versions"]["redis_image"]["running"]
    assert set(running) == {h.name for h in lab_module.TOPOLOGY if h.role == "redis"}
    assert all("@sha256:" in v for v in running.values()), running
    # progress: layer, step, elapsed
    assert re.search(r"^\[all \d+:\d\d redis failover\] ", result.stdout, re.M), result.stdout[-3000:]
    md = Path(data["file"]).with_suffix(".md").read_text()
    for text in (md, json.dumps(data), out):
        for value in _lab_secrets():
            assert value not in text
    # the lead's figures (README): the whole run and each layer's share
    print(f"\ninvoke all --lab: {seconds / 60:.1f} min; " + ", ".join(
        f"{r['name']} {r['seconds']:.0f} s" for r in data["layers"]))


def test_from_resumes_carrying_the_earlier_green_layers(lab, reports):
    last = ordered()[-1].name
    result = run(["invoke", "all", "--lab", "--from", last, "--reports", str(reports)], timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    data = _latest(reports)
    assert data["start_layer"] == last
    for r in data["layers"][:-1]:
        assert r["status"] in ("carried", "dry-only") and r["note"].startswith("carried from "), r


def test_dry_run_changes_nothing_and_checks_nothing(lab, reports):
    result = run(["invoke", "all", "--lab", "--dry", "--reports", str(reports)], timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    data = _latest(reports, dry=True)
    assert data["dry"] is True and data["status"] == "incomplete"
    assert all(r["deploy"] == "dry" and r["checks"] == [] for r in data["layers"])
    assert lab_module.deploy("redis").changes == 0  # the deployed layers were left as they were


def test_invoke_apps_is_refused_on_the_lab_report(lab, reports, tmp_path):
    apps = tmp_path / "apps.yaml"
    apps.write_text((ROOT / "apps.yaml").read_text().replace(
        'image: ""', 'image: "registry.keybuzz.io/keybuzz/app:1.0.0"'))
    result = run(["invoke", "apps", "--lab"], env={"KEYBUZZ_REPORTS_DIR": str(reports), "KEYBUZZ_APPS": str(apps)})
    assert result.returncode != 0
    assert "apps refused: the latest `invoke all` report of this inventory is not 100 % green" in result.stderr
    if "k3s" in lab_module.DRY_ONLY:
        assert "k3s: dry-only: dry-run only in the lab" in result.stderr, result.stderr
