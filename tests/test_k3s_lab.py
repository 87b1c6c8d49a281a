"""K3s layer against the lab (marker `lab`), `pyinfra --dry` only: no registry this project reaches ships K3s or
a Kubernetes API server, so the lab never runs K3s. The dry run is the labelled one without artifacts
(KEYBUZZ_K3S_DRY_WITHOUT_ARTIFACTS=1, accepted only with --dry): facts are gathered over SSH on the lab's
k3s-master-01..03 and k3s-worker-01..05, every operation is prepared, nothing is executed or uploaded."""

from __future__ import annotations

import pytest

from keybuzz import credentials
from keybuzz.k3s import settings as K
from keybuzz.k3s.testbed import K3sDryBed


@pytest.fixture(scope="module")
def dry_run(lab, tmp_path_factory):
    # KEYBUZZ_K3S_DRY_WITHOUT_ARTIFACTS=1 comes from lab/lab.yaml (dry_only: k3s: env)
    env = {K.ARTIFACTS_ENV: str(tmp_path_factory.mktemp("no-k3s-artifacts"))}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        return lab.deploy("k3s", verbose=3, extra=("--dry", "--json"))


def test_dry_run_succeeds_in_the_design_order(dry_run):
    assert dry_run.ok, dry_run.output[-4000:]
    phases = [names[0] for names, _ in K3sDryBed.plan(dry_run) if names[0].startswith("K3s phase")]
    assert len(phases) == 5, phases
    assert "start k3s-master-01 (cluster-init" in phases[0]
    assert "start the other masters (they join k3s-master-01), one at a time" in phases[1]
    assert "wait until the 3 masters are Ready" in phases[2]
    assert "start the workers' agents" in phases[3]
    assert "DRY RUN WITHOUT ARTIFACTS" in dry_run.output


def test_dry_run_prints_no_secret_at_vvv(lab, dry_run):
    token = credentials.load("k3s")["K3S_TOKEN"].unmask()
    assert token not in dry_run.output


def test_real_run_without_artifacts_is_refused_before_any_host_is_contacted(lab, tmp_path):
    from keybuzz import runner
    from keybuzz.layers import LAYERS

    with pytest.raises(lab.LabError, match="--dry only"):  # the lab itself never runs it for real
        lab.deploy("k3s")
    with pytest.MonkeyPatch.context() as mp:  # and the layer's own preflight refuses it anyway
        mp.setenv(K.ARTIFACTS_ENV, str(tmp_path))
        mp.delenv(K.DRY_WITHOUT_ARTIFACTS_ENV, raising=False)
        result = runner.deploy(LAYERS["k3s"], env=lab.env(), timeout=300)
    assert not result.ok
    assert f"{K.SUMS_ASSET} is missing; download" in result.output and "Connecting" not in result.output
