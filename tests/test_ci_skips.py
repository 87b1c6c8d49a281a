"""In CI (CI=true) a skipped lab or containers test fails the run (tests/conftest.py); a pure test may still skip.
Proof: the real conftest (loaded as a plugin) on a small generated test tree, run by pytest in a subprocess, with
and without CI=true: every way a test can skip (in the test, in a fixture, from a skipif mark, a whole module at
import) for each kind of test."""

from __future__ import annotations

import sys
from xml.etree import ElementTree

from helpers import ROOT, run

CONTAINERS = '''
import pytest

@pytest.fixture
def needs_docker():
    pytest.skip("no docker here")

def test_skips_in_the_test():
    pytest.skip("no ssh client here")

def test_skips_in_a_fixture(needs_docker):
    pass

@pytest.mark.skipif(True, reason="needs docker and mmdebstrap")
def test_skipped_by_a_mark():
    pass

def test_runs():
    pass
'''
LAB = '''
import pytest

@pytest.fixture
def lab():  # stands in for conftest's lab fixture (which starts the lab): the `lab` marker follows from the name
    pytest.skip("no lab versions file")

def test_uses_the_lab(lab):
    pass

def test_pure_test_in_a_lab_file():
    pytest.skip("a pure test may skip")
'''
PURE = '''
import pytest

def test_pure_skip():
    pytest.skip("/dev/shm is not a mount of its own here")

def test_lab_image_user(lab_image):  # a Docker image user: containers, wherever it lives
    pytest.skip("no docker here")
'''
MODULE_SKIPPED = '''
import pytest

pytest.skip("docker is not installed", allow_module_level=True)

def test_never_collected():
    pass
'''


def _outcomes(tmp_path, ci: bool) -> tuple[dict[str, str], str]:
    """{test or module name: passed | failed | skipped | error} from pytest's JUnit XML, and pytest's output."""
    for name, text in {"test_x_cluster.py": CONTAINERS, "test_x_lab.py": LAB, "test_x.py": PURE,
                       "test_y_cluster.py": MODULE_SKIPPED}.items():
        (tmp_path / name).write_text(text)
    xml = tmp_path / "junit.xml"
    env = {"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "CI": "true" if ci else ""}
    result = run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-rA", "-q",
                  "-o", "addopts=", f"--junitxml={xml}",
                  "-W", "ignore::pytest.PytestUnknownMarkWarning",  # the markers are declared in pyproject.toml
                  "--continue-on-collection-errors",  # else the module's error stops the run before the others
                  str(tmp_path)], env=env, cwd=tmp_path, timeout=120)
    out = result.stdout + result.stderr
    found = {}
    for case in ElementTree.parse(xml).iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        found[case.get("name")] = {"failure": "failed", "error": "error", "skipped": "skipped"}.get(
            (kinds or ["passed"])[0], "passed")
    return found, out


def test_in_ci_every_skip_of_a_lab_or_containers_test_fails_the_run_and_pure_skips_stay(tmp_path):
    found, out = _outcomes(tmp_path, ci=True)
    assert found == {
        "test_skips_in_the_test": "failed",  # skipped in the call phase
        "test_skips_in_a_fixture": "error",  # skipped in setup (report.when == "setup")
        "test_skipped_by_a_mark": "error",  # skipif is evaluated in setup too
        "test_runs": "passed",
        "test_uses_the_lab": "error",  # a lab test (the `lab` fixture) skipped in setup
        "test_pure_test_in_a_lab_file": "skipped",  # pure, though in a *_lab.py file
        "test_pure_skip": "skipped",
        "test_lab_image_user": "failed",  # uses lab images: containers, wherever it lives
        "test_y_cluster": "error",  # a whole containers module skipped at import
    }, out[-4000:]
    assert "skipped (setup) in CI, which must run every lab and containers test" in out
    assert "test_y_cluster.py skipped at collection in CI" in out
    assert "no docker here" in out and "needs docker and mmdebstrap" in out  # the reasons stay visible


def test_outside_ci_they_skip_with_their_reason(tmp_path):
    found, out = _outcomes(tmp_path, ci=False)
    assert found == {name: "passed" if name == "test_runs" else "skipped" for name in found}, out[-4000:]
    assert len(found) == 9 and "no ssh client here" in out and "in CI" not in out
