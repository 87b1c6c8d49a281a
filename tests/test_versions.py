"""versions.yaml (design §F): the eight pins verbatim, exact pins elsewhere, no `latest` anywhere."""

from __future__ import annotations

import re

import pytest
import yaml

from helpers import ROOT, tracked_files
from keybuzz.errors import InputError
from keybuzz.versions import image, load_versions

LATEST = "lat" + "est"  # spelled apart so the repository scan below never matches this file

DESIGN_PINS = {
    "postgres_image": "postgres:16.4-alpine",
    "patroni_image": "zalando/patroni:3.3.0",
    "redis_image": "redis:7.2.5-alpine",
    "rabbitmq_image": "rabbitmq:3.13.2-management",
    "minio_image": "minio/minio:RELEASE.2024-10-02T10-00Z",
    "haproxy_image": "haproxy:2.8.5",
    "mariadb_galera_image": "bitnami/mariadb-galera:10.11.6",
    "proxysql_image": "proxysql/proxysql:2.6.4",
}


def test_design_pins_verbatim_and_everything_else_pinned():
    v = load_versions(override="")
    for key, value in DESIGN_PINS.items():
        assert v[key] == value
    for key in ("etcd_image", "pgbouncer_image", "k3s_version", "ingress_nginx_image", "docker_engine_package"):
        assert v[key] and LATEST not in v[key]


@pytest.mark.parametrize("value, reason", [
    (f"redis:{LATEST}", "uses 'latest'"),
    ("redis", "has no tag"),
    ("", "is empty"),
    ("redis:", "has no tag"),
])
def test_bad_pin_is_refused_with_line(tmp_path, value, reason):
    bad = tmp_path / "versions.yaml"
    text = (ROOT / "versions.yaml").read_text().replace('redis_image: "redis:7.2.5-alpine"', f'redis_image: "{value}"')
    bad.write_text(text)
    line = next(i for i, x in enumerate(text.splitlines(), 1) if x.startswith("redis_image:"))
    with pytest.raises(InputError) as err:
        load_versions(bad, override="")
    assert str(err.value).startswith(f"{bad}:{line}: redis_image")
    assert reason in str(err.value)


def test_override_replaces_known_keys_and_refuses_unknown(tmp_path):
    override = tmp_path / "lab.yaml"
    override.write_text('redis_image: "127.0.0.1:5000/keybuzz-lab/redis:7.0.15-bookworm"\n')
    v = load_versions(override=override)
    assert v["redis_image"].endswith("redis:7.0.15-bookworm")
    assert v["haproxy_image"] == "haproxy:2.8.5"
    override.write_text('redis_image: "redis:7.0.15"\nredis_imgae: "redis:7.0.15"\n')
    with pytest.raises(InputError, match=rf"{override}:2: unknown key 'redis_imgae'"):
        load_versions(override=override)
    override.write_text(f'haproxy_image: "haproxy:{LATEST}"\n')
    with pytest.raises(InputError, match=rf"{override}:1: haproxy_image uses 'latest'"):
        load_versions(override=override)


def test_registry_mirror_prefixes_images_without_registry():
    v = {"redis_image": "redis:7.2.5-alpine", "etcd_image": "quay.io/coreos/etcd:v3.5.15", "registry_mirror": "m:5000"}
    assert image(v, "redis_image") == "m:5000/redis:7.2.5-alpine"
    assert image(v, "etcd_image") == "quay.io/coreos/etcd:v3.5.15"
    assert image({**v, "registry_mirror": ""}, "redis_image") == "redis:7.2.5-alpine"


def test_lab_versions_file_is_valid():
    lab = ROOT / "lab" / "versions.lab.yaml"
    if not lab.exists():
        pytest.skip("no lab versions file")
    v = load_versions(override=lab)
    for key in yaml.safe_load(lab.read_text()):
        assert v[key]


# --- repository scan: design §F forbids `latest` and untagged images in every script and manifest ---

_LATEST_TAG = re.compile(r"[\w./-]+:" + LATEST + r"\b", re.IGNORECASE)
_FROM = re.compile(r"^\s*FROM\s+(\S+)", re.IGNORECASE | re.MULTILINE)
_IMAGE_KEY = re.compile(r"^\s*-?\s*image:\s*[\"']?([^\s\"'#]+)", re.MULTILINE)
_DOCKER_RUN_LATEST = re.compile(r"docker\s+(run|pull)\b[^\n]*\s" + LATEST + r"\b", re.IGNORECASE)


def _text_files():
    for path in tracked_files():
        try:
            yield path, path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue


def test_no_latest_tag_in_any_tracked_file():
    hits = [f"{p.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}: {m.group(0)}"
            for p, text in _text_files() for m in _LATEST_TAG.finditer(text)]
    hits += [f"{p.relative_to(ROOT)}: {m.group(0)}" for p, text in _text_files()
             for m in _DOCKER_RUN_LATEST.finditer(text)]
    assert hits == []


def test_every_image_reference_is_tagged():
    untagged = []
    for p, text in _text_files():
        refs = []
        if p.name.startswith("Dockerfile"):
            refs = [r for r in _FROM.findall(text) if not r.startswith("$")]
        elif p.suffix in (".yaml", ".yml", ".j2"):
            refs = _IMAGE_KEY.findall(text)
        for ref in refs:
            if "{{" in ref or "$" in ref:
                continue  # templated from versions.yaml
            last = ref.rsplit("/", 1)[-1]
            if ":" not in last and "@sha256" not in ref:
                untagged.append(f"{p.relative_to(ROOT)}: {ref}")
    assert untagged == []
