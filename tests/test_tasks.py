"""The operator's entry points: `invoke --list`, and clear one-line refusals instead of tracebacks."""

from __future__ import annotations

from helpers import run, write_tsv


def test_invoke_list_shows_one_line_of_help_per_task():
    result = run(["invoke", "--list"])
    assert result.returncode == 0, result.stderr
    for name in ("layer", "all", "check", "credentials.init", "lab.up", "lab.down", "lab.status", "lab.ssh"):
        line = next((x for x in result.stdout.splitlines() if x.strip().startswith(name + " ")), "")
        assert len(line.split(None, 1)) == 2, f"{name} has no help line"


def test_unknown_layer_is_refused_listing_the_layers():
    result = run(["invoke", "layer", "--name", "redsi"])
    assert result.returncode != 0
    assert "keybuzz: no layer 'redsi'; layers in order: base_os, db, redis" in result.stderr
    assert "Traceback" not in result.stderr


def test_unimplemented_layer_fails_clearly():
    result = run(["invoke", "layer", "--name", "k3s"])
    assert result.returncode != 0
    assert "keybuzz: layer 'k3s' is not implemented yet (deploys/k3s.py does not exist)" in result.stderr
    assert "Traceback" not in result.stderr


def test_layer_with_bad_servers_file_stops_before_pyinfra(tmp_path):
    tsv = write_tsv(tmp_path / "s.tsv", [("haproxy-01", "10.0.0.10", "haproxy")])
    result = run(["invoke", "layer", "--name", "base_os"], env={"KEYBUZZ_SERVERS": str(tsv)})
    assert result.returncode != 0
    assert f"keybuzz: {tsv}:2: haproxy-01 is given 10.0.0.10" in result.stderr
    assert "Connecting" not in result.stdout + result.stderr


def test_check_without_checks_is_refused():
    result = run(["invoke", "check", "--name", "minio"])
    assert result.returncode != 0
    assert "keybuzz: no checks for 'minio'" in result.stderr
