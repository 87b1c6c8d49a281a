"""The K3s deploy against 8 real SSH hosts (lab host containers, keybuzz/k3s/testbed.py), `pyinfra --dry` only:
facts gathered over SSH, every operation prepared, nothing executed. No K3s binary exists on any registry this
project reaches: the run is the labelled dry run without artifacts (KEYBUZZ_K3S_DRY_WITHOUT_ARTIFACTS=1)."""

from __future__ import annotations

import subprocess

import pytest

from keybuzz.k3s import settings as K
from keybuzz.k3s.testbed import PREFIX, K3sDryBed
from keybuzz.versions import pin_location


@pytest.fixture(scope="module")
def bed():
    with K3sDryBed() as tb:
        yield tb


def _phases(bed, result) -> list[str]:
    return [names[0] for names, _ in bed.plan(result) if names[0].startswith("K3s phase")]


def test_dry_run_starts_master_01_then_the_other_masters_then_the_workers(bed):
    result = bed.deploy(verbose=3)
    assert result.ok, result.output[-3000:]
    phases = _phases(bed, result)
    assert [p.split(":")[0] for p in phases] == [f"K3s phase {n}" for n in range(1, 6)], phases
    assert "start k3s-master-01 (cluster-init" in phases[0]
    assert "start the other masters (they join k3s-master-01), one at a time" in phases[1]
    assert "wait until the 3 masters are Ready (before any worker joins)" in phases[2]
    assert "start the workers' agents (they join through https://10.0.0.5:6443)" in phases[3]
    assert "DRY RUN WITHOUT ARTIFACTS" in result.output
    assert bed.token() not in result.output  # -vvv: facts, commands and file uploads are printed


def test_with_a_registry_mirror_every_node_gets_registries_yaml(bed):
    override = bed.dir / "versions.mirror.yaml"
    override.write_text('registry_mirror: "mirror.internal:5000"\n')
    result = bed.deploy(versions_override=str(override))
    assert result.ok, result.output[-3000:]
    names = [n for names, _ in bed.plan(result) for n in names]
    assert f"Install {K.REGISTRIES_FILE} (every image through mirror.internal:5000)" in names
    assert f"No {K.REGISTRIES_FILE} (no registry mirror)" not in names


def test_without_artifacts_and_without_the_dry_mode_preflight_refuses_before_connecting(bed):
    result = bed.deploy(dry_without_artifacts=False)
    assert not result.ok
    path, line = pin_location("k3s_version", override="", lock="")
    assert (f"keybuzz: {path}:{line}: {bed.dir}/no-artifacts/v1.30.4+k3s1/{K.SUMS_ASSET} is missing; download "
            f"{K.SUMS_ASSET} of K3s v1.30.4+k3s1 from https://github.com/k3s-io/k3s/releases/tag/v1.30.4%2Bk3s1"
            ) in result.output
    assert "Connecting" not in result.output


def test_a_node_registered_with_another_token_is_refused(bed):
    worker = PREFIX + "k3s-worker-03"

    def node(cmd, data=""):
        subprocess.run(["docker", "exec", "-i", worker, "sh", "-c", cmd], input=data, text=True, check=True)
    node(f"mkdir -p {K.DATA_DIR}/agent {K.CONFIG_DIR} && touch {K.DATA_DIR}/agent/client-kubelet.crt")
    node(f"umask 077 && cat > {K.TOKEN_FILE}", "the token of another cluster")
    try:
        result = bed.deploy()
        assert not result.ok
        assert ("k3s-worker-03: already registered in a K3s cluster with another token than K3S_TOKEN of "
                "credentials/k3s.env: restore the cluster's token there, or wipe this node") in result.output
        node(f"umask 077 && cat > {K.TOKEN_FILE}", bed.token())  # the cluster's own token: accepted
        result = bed.deploy()
        assert result.ok, result.output[-3000:]
        assert bed.token() not in result.output
    finally:
        node(f"rm -rf {K.DATA_DIR} {K.CONFIG_DIR}")


def test_a_master_is_checked_against_the_token_k3s_keeps(bed):
    """A server's own record (server/token: K10<CA hash>::server:<token>) is what decides, not our token file."""
    master = PREFIX + "k3s-master-02"

    def node(cmd, data=""):
        subprocess.run(["docker", "exec", "-i", master, "sh", "-c", cmd], input=data, text=True, check=True)
    node(f"mkdir -p {K.DATA_DIR}/server/db && umask 077 && cat > {K.SERVER_TOKEN}",
         "K10" + "ab" * 32 + "::server:the-token-of-another-cluster\n")
    try:
        result = bed.deploy()
        assert not result.ok
        assert "k3s-master-02: already registered in a K3s cluster with another token" in result.output
        node(f"umask 077 && cat > {K.SERVER_TOKEN}", "K10" + "ab" * 32 + f"::server:{bed.token()}\n")
        result = bed.deploy(verbose=3)
        assert result.ok, result.output[-3000:]
        assert bed.token() not in result.output
    finally:
        node(f"rm -rf {K.DATA_DIR}")
