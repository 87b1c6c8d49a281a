"""Layer map: design §G order, and §H.2 — each host receives only the credentials its role needs."""

from __future__ import annotations

import pytest

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
