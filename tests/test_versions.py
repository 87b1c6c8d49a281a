"""versions.yaml (design §F): the eight pins verbatim, exact pins elsewhere, no `latest` anywhere."""

from __future__ import annotations

import re
from fnmatch import fnmatchcase

import pytest
import yaml

from helpers import ROOT, design_blocks, tracked_files
from keybuzz.errors import InputError
from keybuzz.versions import image, load_versions

LATEST = "lat" + "est"  # spelled apart so the repository scan below never matches this file

# design §F (tests/fixtures/design/section_F.md), verbatim
DESIGN_PINS = yaml.safe_load(design_blocks("F", "yaml")[0])


def test_design_pins_verbatim_and_everything_else_pinned():
    v = load_versions(override="")
    for key, value in DESIGN_PINS.items():
        assert v[key] == value
    for key in ("etcd_image", "pgbouncer_image", "k3s_version", "nginx_ingress_image", "docker_engine_package"):
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
    assert lab.is_file(), f"{lab} is missing: the lab (and every lab test) reads it"  # tracked: never a skip
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


# --- issue 9 §2: exact releases only, safe registry settings, a Docker Engine pin that survives rebuilds ---

DIGEST = "sha256:" + "0123456789abcdef" * 4


def _with(tmp_path, key, value):
    """versions.yaml with `key` set to `value` (YAML flow syntax); returns (path, line of key)."""
    text = (ROOT / "versions.yaml").read_text()
    lines = text.splitlines()
    line = next(i for i, x in enumerate(lines, 1) if x.startswith(f"{key}:"))
    lines[line - 1] = f"{key}: {value}"
    path = tmp_path / "versions.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path, line


@pytest.mark.parametrize("key, value", [
    ("redis_image", "redis:alpine"), ("rabbitmq_image", "rabbitmq:3-management"), ("postgres_image", "postgres:16"),
    ("redis_image", "redis:7.2"), ("rabbitmq_image", "rabbitmq:3.13-management"), ("haproxy_image", "haproxy:2.8"),
    ("haproxy_image", "haproxy:stable"), ("haproxy_image", "haproxy:lts"), ("haproxy_image", "haproxy:edge"),
    ("redis_image", "redis:7.2.5-stable"), ("postgres_image", "postgres:16-alpine"), ("redis_image", "redis:7"),
    ("etcd_image", "quay.io/coreos/etcd:v3.5"), ("k3s_version", "v1.30"), ("k3s_version", "stable"),
    ("nginx_ingress_image", "nginx/nginx-ingress:5.2"),
])
def test_floating_tag_is_refused(tmp_path, key, value):
    path, line = _with(tmp_path, key, f'"{value}"')
    with pytest.raises(InputError) as err:
        load_versions(path, override="", lock="")
    assert str(err.value).startswith(f"{path}:{line}: {key} ")
    assert "exact release" in str(err.value)


@pytest.mark.parametrize("key, value", [
    ("postgres_image", "postgres:16.4-alpine"), ("postgres_image", "postgres:16.4"), ("redis_image", "redis:7.2.5"),
    ("redis_image", f"redis:7.2.5-alpine@{DIGEST}"),
    ("redis_image", "127.0.0.1:5000/keybuzz-lab/redis:7.0.15-bookworm"),
    ("minio_image", "minio/minio:RELEASE.2024-10-02T17-50-41Z"), ("etcd_image", "quay.io/coreos/etcd:v3.5.15"),
    ("mariadb_galera_image", "bitnami/mariadb-galera:10.11.6-debian-12-r0"), ("k3s_version", "v1.30.4+k3s1"),
    ("pgbouncer_image", f"registry.example.com:443/bitnami/pgbouncer:1.23.1@{DIGEST}"),
])
def test_exact_releases_and_digest_pins_are_accepted(tmp_path, key, value):
    path, _ = _with(tmp_path, key, f'"{value}"')
    assert load_versions(path, override="", lock="")[key] == value


@pytest.mark.parametrize("value, reason", [
    ("redis@" + DIGEST, "has no tag"),
    ("redis:7.2.5@sha256:abc", "malformed"),
    ("redis:7.2.5@sha512:" + "0" * 128, "malformed"),
    ("Redis:7.2.5", "malformed"),
])
def test_malformed_digest_pin_is_refused(tmp_path, value, reason):
    path, line = _with(tmp_path, "redis_image", f'"{value}"')
    with pytest.raises(InputError, match=rf"^{path}:{line}: redis_image .*{reason}"):
        load_versions(path, override="", lock="")


@pytest.mark.parametrize("value, ok", [
    ('""', True), ('"mirror.internal:5000"', True), ('"10.0.0.50:5000"', True), ('"registry.example.com"', True),
    ('"mirror:5000; rm -rf /"', False), ('"http://mirror:5000"', False), ('"mirror:5000/"', False),
    ('"mir ror:5000"', False), ("\"'m'\"", False), ('"mirror:99999"', False), ('"$(id)"', False),
    ('"mirror:5000/library"', False), ('"MIRROR:5000"', False), ("[]", False), ('"-mirror"', False),
])
def test_registry_mirror_must_be_host_and_port(tmp_path, value, ok):
    path, line = _with(tmp_path, "registry_mirror", value)
    if ok:
        load_versions(path, override="", lock="")
        return
    with pytest.raises(InputError) as err:
        load_versions(path, override="", lock="")
    assert str(err.value).startswith(f"{path}:{line}: registry_mirror ")
    assert "host or host:port" in str(err.value)


@pytest.mark.parametrize("value, ok", [
    ("[]", True), ('["172.30.0.2:5000"]', True), ('["mirror.internal:5000", "10.0.0.50:443"]', True),
    ('["172.30.0.2"]', False), ('["a b:5000"]', False), ('"172.30.0.2:5000"', False), ('[""]', False),
    ('["x:5000\\"; touch /tmp/p; \\""]', False), ("[5000]", False),
])
def test_insecure_registries_must_be_a_list_of_host_port(tmp_path, value, ok):
    path, line = _with(tmp_path, "insecure_registries", value)
    if ok:
        load_versions(path, override="", lock="")
        return
    with pytest.raises(InputError, match=rf"^{path}:{line}: insecure_registries "):
        load_versions(path, override="", lock="")


@pytest.mark.parametrize("value, ok", [
    ("docker.io=20.10.24+dfsg1-1+deb12u*", True), ("docker.io=20.10.24+dfsg1-1+deb12u1+b6", True),
    ("docker.io=20.10.24+dfsg1-1+deb12u1*", True),
    ("docker.io", False), ("docker.io=", False), ("docker.io=*", False), ("docker.io=20*", False),
    ("docker.io=20.10.24*", False), ("docker.io=20.10.24+dfsg1-1*+b6", False), ("docker-ce=5:24.0.7-1", False),
    ("docker.io=20.10.24+dfsg1-1+deb12u1 && curl x | sh", False), ("docker.io>=20.10.24+dfsg1-1", False),
])
def test_docker_engine_package_must_be_pinned(tmp_path, value, ok):
    path, line = _with(tmp_path, "docker_engine_package", f'"{value}"')
    if ok:
        assert load_versions(path, override="", lock="")["docker_engine_package"] == value
        return
    with pytest.raises(InputError, match=rf"^{path}:{line}: docker_engine_package "):
        load_versions(path, override="", lock="")


def test_shipped_docker_pin_survives_debian_rebuilds_and_security_updates_only():
    """The pin names Debian 12's docker.io 20.10.24, Debian revision 1, any +deb12uN stable/security update and any
    binNMU (+bN) of it: a reinstall from zero still finds it after Debian replaces the +b6 build, and an upstream
    change (backports' 26.x, a new Debian revision) is never taken."""
    from keybuzz.versions import package_pin

    name, pattern = package_pin(load_versions(override="", lock=""))
    assert name == "docker.io" and pattern.endswith("*")

    for version, ok in [("20.10.24+dfsg1-1+deb12u1+b6", True), ("20.10.24+dfsg1-1+deb12u1+b7", True),
                        ("20.10.24+dfsg1-1+deb12u2", True), ("20.10.24+dfsg1-1+deb12u10+b1", True),
                        ("26.1.5+dfsg1-9~bpo12+1", False), ("20.10.24+dfsg1-2", False),
                        ("20.10.25+dfsg1-1+deb12u1", False), ("20.10.24+dfsg1-1", False)]:
        assert fnmatchcase(version, pattern) is ok, version


# --- MinIO (issue 9 §2): the design's stamp is kept in versions.yaml, refused at minio preflight ---


@pytest.mark.parametrize("stamp, problem", [
    ("RELEASE.2024-10-02T17-50-41Z", None),
    ("RELEASE.2024-10-02T10-00Z", "not a MinIO release tag"),
    ("RELEASE.2024-13-02T17-50-41Z", "not a MinIO release tag"),
    ("RELEASE.2024-10-02T17-50-41", "not a MinIO release tag"),
])
def test_minio_preflight_checks_the_release_stamp(stamp, problem):
    from keybuzz.errors import PinRefused
    from keybuzz.minio.settings import preflight

    for ref in (f"minio/minio:{stamp}", f"minio/minio:{stamp}@{DIGEST}"):
        if problem is None:
            preflight({"minio_image": ref})
            continue
        with pytest.raises(PinRefused) as err:
            preflight({"minio_image": ref})
        assert err.value.key == "minio_image" and problem in err.value.reason


def test_design_minio_pin_is_refused_at_minio_preflight_with_the_fix(tmp_path, monkeypatch):
    """keybuzz.inventory.preflight of the minio layer (no deploy yet): the design's line is refused at its line of
    versions.yaml, naming the release of that day and KEYBUZZ_VERSIONS; an override with that release passes."""
    from keybuzz import credentials
    from keybuzz.inventory import preflight
    from keybuzz.layers import LAYERS
    from keybuzz.servers import load_servers

    monkeypatch.setenv("KEYBUZZ_CREDENTIALS_DIR", str(tmp_path / "credentials"))
    monkeypatch.delenv("KEYBUZZ_VERSIONS", raising=False)
    monkeypatch.delenv("KEYBUZZ_VERSIONS_LOCK", raising=False)
    credentials.init(bricks=["minio"])
    plan = load_servers(ROOT / "servers.tsv")
    line = next(i for i, x in enumerate((ROOT / "versions.yaml").read_text().splitlines(), 1)
                if x.startswith("minio_image:"))
    with pytest.raises(InputError) as err:
        preflight([LAYERS["minio"]], plan)
    message = str(err.value)
    assert message.startswith(f"{ROOT / 'versions.yaml'}:{line}: ")
    for part in ("RELEASE.2024-10-02T10-00Z", "not a MinIO release tag", "RELEASE.YYYY-MM-DDTHH-MM-SSZ",
                 "RELEASE.2024-10-02T17-50-41Z", "KEYBUZZ_VERSIONS"):
        assert part in message, part
    override = tmp_path / "site.yaml"
    override.write_text('minio_image: "minio/minio:RELEASE.2024-10-02T17-50-41Z"\n')
    monkeypatch.setenv("KEYBUZZ_VERSIONS", str(override))
    known_hosts = tmp_path / "known_hosts"
    key = "AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f"
    known_hosts.write_text("".join(f"{s.ip} ssh-ed25519 {key}\n" for s in plan.group("minio")))
    monkeypatch.setenv("KEYBUZZ_SSH_KNOWN_HOSTS", str(known_hosts))
    preflight([LAYERS["minio"]], plan)  # no error: every check passed, nothing contacted


# --- lock file of digests (invoke versions.check --lock) ---


def test_lock_file_pins_digests_and_refuses_a_stale_or_bad_lock(tmp_path, monkeypatch):
    lock = tmp_path / "versions.lock.yaml"
    lock.write_text(f'redis_image: "redis:7.2.5-alpine@{DIGEST}"\n')
    v = load_versions(override="", lock=lock)
    assert v["redis_image"] == f"redis:7.2.5-alpine@{DIGEST}"
    assert image({**v, "registry_mirror": "m:5000"}, "redis_image") == f"m:5000/redis:7.2.5-alpine@{DIGEST}"
    monkeypatch.setenv("KEYBUZZ_VERSIONS_LOCK", str(lock))  # what deploys read
    assert load_versions(override="")["redis_image"].endswith(DIGEST)
    for text, reason in [
        (f'redis_image: "redis:7.2.4-alpine@{DIGEST}"\n', "stale: the lock has redis:7.2.4-alpine, the pin is "
                                                          "redis:7.2.5-alpine"),
        ('redis_image: "redis:7.2.5-alpine"\n', "has no digest"),
        (f'redis_imgae: "redis:7.2.5-alpine@{DIGEST}"\n', "unknown key 'redis_imgae'"),
        ('k3s_version: "v1.30.4+k3s1"\n', "only image pins"),
    ]:
        lock.write_text(text)
        with pytest.raises(InputError) as err:
            load_versions(override="", lock=lock)
        assert str(err.value).startswith(f"{lock}:1: ") and reason in str(err.value), str(err.value)


def test_write_lock_round_trips_through_the_loader(tmp_path):
    from keybuzz.versions import Resolved, write_lock

    v = load_versions(override="", lock="")
    results = [Resolved("redis_image", "m:5000/redis:7.2.5-alpine", DIGEST, "found"),
               Resolved("haproxy_image", "haproxy:2.8.5", None, "not found")]
    lock = tmp_path / "lock.yaml"
    assert write_lock(lock, results, v) == ["redis_image"]
    assert load_versions(override="", lock=lock)["redis_image"] == f"redis:7.2.5-alpine@{DIGEST}"
    assert load_versions(override="", lock=lock)["haproxy_image"] == "haproxy:2.8.5"


# --- the registry client (Docker Registry HTTP API v2): the parts that need no registry ---


@pytest.mark.parametrize("ref, expected", [
    ("redis:7.2.5-alpine", ("registry-1.docker.io", "library/redis", "7.2.5-alpine", None)),
    ("minio/minio:RELEASE.2024-10-02T17-50-41Z", ("registry-1.docker.io", "minio/minio", "RELEASE.2024-10-02T17-50-41Z",
                                                  None)),
    ("docker.io/library/haproxy:2.8.5", ("registry-1.docker.io", "library/haproxy", "2.8.5", None)),
    ("quay.io/coreos/etcd:v3.5.15", ("quay.io", "coreos/etcd", "v3.5.15", None)),
    ("m:5000/redis:7.2.5-alpine", ("m:5000", "redis", "7.2.5-alpine", None)),
    ("localhost/x/y:1.2.3", ("localhost", "x/y", "1.2.3", None)),
    (f"127.0.0.1:5000/keybuzz-lab/redis:7.0.15-bookworm@{DIGEST}",
     ("127.0.0.1:5000", "keybuzz-lab/redis", "7.0.15-bookworm", DIGEST)),
])
def test_image_reference_is_split_as_docker_does(ref, expected):
    from keybuzz.versions import parse_reference

    r = parse_reference(ref)
    assert (r.registry, r.repository, r.tag, r.digest) == expected


def test_bearer_challenge_is_parsed():
    from keybuzz.versions import parse_challenge

    scheme, params = parse_challenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                                     'scope="repository:library/redis:pull"')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                      "scope": "repository:library/redis:pull"}
    assert parse_challenge('Basic realm="Registry Realm"') == ("basic", {"realm": "Registry Realm"})
    assert parse_challenge("") == ("", {})


def test_check_lines_name_key_image_and_answer():
    from keybuzz.versions import Resolved

    assert Resolved("redis_image", "redis:7.2.5-alpine", DIGEST, "found").line() == \
        f"redis_image  redis:7.2.5-alpine  -> {DIGEST}"
    assert Resolved("patroni_image", "zalando/patroni:3.3.0", None, "not found").line().endswith("-> not found")
    assert Resolved("x_image", "r:5/x:1.2.3", None, "unreachable", "connection refused").line().endswith(
        "-> unreachable (connection refused)")
