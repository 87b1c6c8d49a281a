"""The operator's entry points: `invoke --list`, and clear one-line refusals instead of tracebacks."""

from __future__ import annotations

import socket
import sys

import pytest

from helpers import ROOT, run, write_tsv
from keybuzz.layers import LAYERS


def test_invoke_list_shows_one_line_of_help_per_task():
    result = run(["invoke", "--list"])
    assert result.returncode == 0, result.stderr
    for name in ("layer", "all", "check", "apps", "credentials.init", "versions.check", "lab.up", "lab.down",
                 "lab.status", "lab.ssh"):
        line = next((x for x in result.stdout.splitlines() if x.strip().startswith(name + " ")), "")
        assert len(line.split(None, 1)) == 2, f"{name} has no help line"


def test_unknown_layer_is_refused_listing_the_layers():
    result = run(["invoke", "layer", "--name", "redsi"])
    assert result.returncode != 0
    assert "keybuzz: no layer 'redsi'; layers in order: base_os, db, redis" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_layer_of_the_design_has_its_deploy_and_an_unknown_name_fails_clearly():
    assert [layer.name for layer in LAYERS.values() if not layer.exists()] == []
    result = run(["invoke", "layer", "--name", "nosuch"])
    assert result.returncode != 0
    assert result.stderr.strip() == ("keybuzz: no layer 'nosuch'; layers in order: "
                                     + ", ".join(LAYERS))
    assert "Traceback" not in result.stderr


def test_layer_with_bad_servers_file_stops_before_pyinfra(tmp_path):
    tsv = write_tsv(tmp_path / "s.tsv", [("haproxy-01", "10.0.0.10", "haproxy")])
    result = run(["invoke", "layer", "--name", "base_os"], env={"KEYBUZZ_SERVERS": str(tsv)})
    assert result.returncode != 0
    assert f"keybuzz: {tsv}:2: haproxy-01 is given 10.0.0.10" in result.stderr
    assert "Connecting" not in result.stdout + result.stderr


def test_check_without_checks_is_refused():
    result = run(["invoke", "check", "--name", "base_oss"])
    assert result.returncode != 0
    assert "keybuzz: no checks for 'base_oss'; layers with checks: base_os, db" in result.stderr


def test_versions_check_reports_an_unreachable_registry_per_image(tmp_path):
    """Every image pin pointed at a closed port on 127.0.0.1 (no traffic leaves the machine): one line per image,
    `-> unreachable`, exit code 1, and no lock written. Found / not found: tests/test_versions_registry_cluster.py."""
    import yaml

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: connections are refused
    keys = [k for k in yaml.safe_load((ROOT / "versions.yaml").read_text()) if k.endswith("_image")]
    override = tmp_path / "site.yaml"
    override.write_text("".join(f'{k}: "127.0.0.1:{port}/keybuzz/{k.replace("_", "-")}:1.2.3"\n' for k in keys))
    lock = tmp_path / "versions.lock.yaml"
    result = run(["invoke", "versions.check", "--lock", str(lock)],
                 env={"KEYBUZZ_VERSIONS": str(override), "KEYBUZZ_VERSIONS_LOCK": ""}, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [x for x in result.stdout.splitlines() if "->" in x]
    assert len(lines) == len(keys)
    for key, line in zip(keys, lines, strict=True):
        assert line.startswith(f"{key}  127.0.0.1:{port}/keybuzz/") and "-> unreachable" in line, line
    assert "not written" in result.stdout and not lock.exists()
    assert "keybuzz: not found or unreachable: " in result.stderr


def test_versions_check_refuses_bad_pins_before_asking_anything(tmp_path):
    override = tmp_path / "site.yaml"
    override.write_text('redis_image: "redis:alpine"\n')
    result = run(["invoke", "versions.check"], env={"KEYBUZZ_VERSIONS": str(override)})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(f"keybuzz: {override}:1: redis_image 'redis:alpine'")
    assert "->" not in result.stdout


# `--lab` runs the real invoke program with the lab's directory moved to a scratch one (keybuzz.lab.lab.LAB_DIR): the
# lab in .lab/ may be up and in use; nothing here may reach it, nor production (every servers file is refused).
_INVOKE_WITH_LAB_DIR = """
import pathlib, sys
from keybuzz.lab import lab
lab.LAB_DIR = pathlib.Path(sys.argv[1])
from invoke.main import program
program.run(["invoke", *sys.argv[2:]])
"""


@pytest.mark.parametrize("command", [["layer", "--name", "base_os"], ["check", "--name", "redis"]])
def test_lab_flag_points_layer_and_check_at_the_labs_files(tmp_path, command):
    """README: `invoke layer --name redis --lab`, `invoke check --name rabbitmq --lab` target the lab. Proof
    without contacting anything: both a production servers file (KEYBUZZ_SERVERS) and the lab's are refused, and
    the refusal names the lab's with --lab, the other without."""
    lab_dir = tmp_path / "lab"
    lab_dir.mkdir()
    lab_tsv = write_tsv(lab_dir / "servers.tsv", [("redis-01", "10.0.0.10", "redis")])
    prod_tsv = write_tsv(tmp_path / "servers.tsv", [("redis-01", "10.0.0.10", "redis")])
    home = tmp_path / "home"  # should a connection be attempted anyway, ssh runs /bin/false instead
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text("Host *\n    ProxyCommand /bin/false\n")
    env = {"KEYBUZZ_SERVERS": str(prod_tsv), "HOME": str(home)}
    outcomes = {}
    for flags in ([], ["--lab"]):
        result = run([sys.executable, "-c", _INVOKE_WITH_LAB_DIR, str(lab_dir), *command, *flags], env=env)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert "Connecting" not in result.stdout + result.stderr
        outcomes[bool(flags)] = result.stderr.strip().splitlines()[-1]
    assert outcomes[False].startswith(f"keybuzz: {prod_tsv}:2: "), outcomes
    assert outcomes[True].startswith(f"keybuzz: {lab_tsv}:2: "), outcomes
    assert "172.30.0.0/24" in outcomes[True]  # the lab's private network (KEYBUZZ_PRIVATE_NETWORK) too
