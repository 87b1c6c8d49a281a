"""The MinIO layer in the lab, DRY ONLY: no registry this project reaches ships MinIO, so the lab pins a well-formed
release that does not exist in its registry (lab/versions.lab.yaml) and runs deploys/minio.py with pyinfra --dry
over SSH against minio-01..03: preflight, facts on hosts that have no MinIO yet, the planned operations, no secret
at -vvv, nothing changed. And the design's names (§B) resolve on the MinIO hosts (the base OS layer's block)."""

from __future__ import annotations

import pytest

from keybuzz import credentials
from keybuzz.lab import lab as lab_module
from keybuzz.minio.settings import ENV_FILE, dns_names

MINIO_HOSTS = [(h.name, h.ip) for h in lab_module.TOPOLOGY if h.role == "minio"]
PLANNED = [
    f"Install {ENV_FILE}",
    "Install /opt/keybuzz/minio/secrets/minio_root_user",
    "Install /opt/keybuzz/minio/secrets/minio_root_password",
    "Pull 172.30.0.2:5000/minio/minio:RELEASE.2024-10-02T17-50-41Z",
    "Install minio.service",
    "Enable and start minio (a first install starts the three nodes together)",
    "Create the apps' buckets, policies and users",
]


@pytest.fixture(scope="module")
def dry(lab):
    """deploys/minio.py once with --dry at -vvv (keybuzz.runner drops -y for a dry run: pyinfra then prints the
    operations it would run and exits)."""
    return lab.deploy("minio", verbose=3, extra=("--dry",))


def test_dry_run_succeeds_and_shows_the_planned_operations(lab, dry):
    assert dry.ok, dry.output[-4000:]
    assert "--> Detected changes:" in dry.output
    for operation in PLANNED:
        assert operation in dry.output, operation
    assert [name for name, _ in MINIO_HOSTS] == ["minio-01", "minio-02", "minio-03"]


def test_dry_run_prints_no_secret_at_vvv(lab, dry):
    for value in credentials.load("minio").values():
        assert value.unmask() not in dry.output


def test_dry_run_changes_nothing_on_the_minio_hosts(lab, dry):
    for name, _ in MINIO_HOSTS:
        answer = lab.exec(name, f"test -e {ENV_FILE} || test -e /etc/systemd/system/minio.service "
                                "|| docker ps -a --format '{{.Names}}' | grep -qx minio")
        assert answer.returncode != 0, f"--dry changed {name}"


def test_the_designs_names_resolve_on_every_minio_host(lab):
    names = dns_names(MINIO_HOSTS)  # minio-0N.keybuzz.io and s3.keybuzz.io -> minio-01
    for host, _ in MINIO_HOSTS:
        for name, ip in names.items():
            answer = lab.exec(host, f"getent ahostsv4 {name}")
            assert answer.returncode == 0 and answer.stdout.split()[0] == ip, f"{host}: {name}: {answer.stdout!r}"
