"""Layer map: design §G order, and §H.2 — each host receives only the credentials its role needs."""

from __future__ import annotations

import ast

import pytest

from keybuzz import ROOT
from keybuzz.context import layer_context
from keybuzz.layers import LAYERS, from_deploy_path, ordered


def test_order_follows_design_g():
    names = [layer.name for layer in ordered()]
    # base OS -> DB -> Redis -> RabbitMQ -> MinIO -> MariaDB -> K3s, HAProxy right after what it fronts
    assert names.index("base_os") == 0 and names[-1] == "k3s"
    for before, after in [("db", "redis"), ("redis", "rabbitmq"), ("rabbitmq", "minio"), ("minio", "mariadb"),
                          ("mariadb", "k3s"), ("rabbitmq", "haproxy"), ("haproxy", "minio"), ("mariadb", "proxysql")]:
        assert names.index(before) < names.index(after), (before, after)


def test_each_layer_gets_only_its_bricks(monkeypatch, tmp_path):
    monkeypatch.setenv("KEYBUZZ_CREDENTIALS_DIR", str(tmp_path))
    assert LAYERS["redis"].bricks == ("redis",)
    assert LAYERS["rabbitmq"].bricks == ("rabbitmq",)
    assert LAYERS["base_os"].bricks == ()
    with pytest.raises(PermissionError, match="layer redis does not receive rabbitmq credentials"):
        layer_context("redis").secrets("rabbitmq")
    with pytest.raises(PermissionError):
        layer_context("haproxy").secrets("postgres")


@pytest.mark.parametrize("path, name", [("deploys/redis.py", "redis"), ("/x/deploys/base_os.py", "base_os"),
                                        ("./deploys/haproxy.py", "haproxy"), ("redis.py", None)])
def test_deploy_path_to_layer(path, name):
    layer = from_deploy_path(path)
    assert (layer.name if layer else None) == name


SERVICE_WORDS = ("redis", "sentinel", "rabbit", "amqp", "haproxy", "postgres", "patroni", "pgbouncer", "etcd",
                 "minio", "mariadb", "galera", "proxysql", "k3s")


def test_the_core_names_no_service_and_each_layer_has_its_own_package():
    """keybuzz/*.py is the shared core only; a layer's code lives in keybuzz/<layer>/ (one folder per layer)."""
    core = [p for p in (ROOT / "keybuzz").glob("*.py")]
    offenders = [p.name for p in core if any(word in p.stem for word in SERVICE_WORDS)]
    assert not offenders, f"per-service modules in the core: {offenders}"
    for layer in LAYERS.values():
        if layer.exists() and layer.name != "base_os":
            assert (ROOT / "keybuzz" / layer.name / "settings.py").is_file(), layer.name
            assert (ROOT / "templates" / layer.name).is_dir(), layer.name


def test_deploy_files_import_no_private_helper():
    """A deploy file uses the public operations, facts and settings of the core and its layer package."""
    for deploy in sorted((ROOT / "deploys").glob("*.py")):
        tree = ast.parse(deploy.read_text(encoding="utf-8"))
        private = [alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   for alias in node.names if alias.name.startswith("_")]
        assert not private, f"{deploy.name} imports private helpers {private}"


def test_templates_ending_in_j2_are_rendered_and_the_others_copied_as_is():
    """`.j2` means "rendered": a copied file holds no Jinja syntax, so it cannot be mistaken for a template."""
    for path in (ROOT / "templates").rglob("*"):
        if path.is_file() and path.suffix != ".j2":
            text = path.read_text(encoding="utf-8")
            assert "{{" not in text and "{%" not in text, f"{path.relative_to(ROOT)} has Jinja syntax: name it .j2"
