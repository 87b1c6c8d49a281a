"""Shared fixtures. The lab (keybuzz/lab/lab.py) for end-to-end tests marked `lab`:

    @pytest.mark.lab
    def test_something(lab):                 # lab = the keybuzz.lab.lab module, lab up, base OS deployed
        assert lab.deploy("redis").ok
        lab.exec("redis-01", "docker ps")

The session brings the lab up from nothing (after a `down`), deploys the base OS layer, and at the
end takes it down and fails if any container, network or volume of the lab is left.
KEYBUZZ_LAB_KEEP=1 reuses a running lab and leaves it up (for working on a layer).

While a `lab` test runs, os.environ carries lab.env() (KEYBUZZ_SERVERS, ... -> the lab); other tests
see the environment they started with.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import pytest

import keybuzz.testbed  # noqa: F401 - sets the testcontainers environment (once, there)
from keybuzz.lab import lab as lab_module

# pyinfra deploy files used by tests: run by pyinfra, never imported (--doctest-modules would import them)
collect_ignore = ["fixtures"]

_LAB_KEYS = tuple(lab_module.env())
_ENV_BEFORE = {k: os.environ.get(k) for k in _LAB_KEYS}


def _progress(message: str) -> None:
    """Lab progress goes straight to the terminal / CI log: a from-scratch lab takes minutes."""
    print(message, file=sys.__stderr__, flush=True)


@dataclass
class LabSession:
    module: object
    rows: list  # lab.LayerRow of the `up` this session did
    up_seconds: float


@pytest.fixture(scope="session")
def lab_session():
    keep = os.environ.get("KEYBUZZ_LAB_KEEP") == "1"
    if not keep:
        lab_module.down(progress=_progress)
    try:  # `up` inside the try: a lab that fails half-way up is still taken down
        start = time.monotonic()
        rows = lab_module.up(["base_os"], progress=_progress)
        seconds = time.monotonic() - start
        os.environ.update(lab_module.env())
        if not all(r.green for r in rows):
            pytest.fail("lab up failed:\n" + lab_module.table(rows, color=False) + "\n"
                        + "\n".join("\n".join(r.detail.splitlines()[-40:]) for r in rows if not r.green))
        yield LabSession(lab_module, rows, seconds)
    finally:
        for k, v in _ENV_BEFORE.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if not keep:
            lab_module.down(progress=_progress)
            left = {kind: names for kind, names in lab_module.leftovers().items() if names}
            assert not left, f"lab down left Docker objects behind: {left}"


def _module_kind(stem: str) -> str | None:
    """`containers` for tests/test_<layer>_cluster.py and tests/test_lab_images.py, `lab` for tests/test_*_lab.py
    (where lab tests live; their pure tests are told apart per test, by the fixtures they use), else None."""
    if stem.endswith("_cluster") or stem == "test_lab_images":
        return "containers"
    return "lab" if stem.endswith("_lab") else None


def pytest_collection_modifyitems(items):
    """Markers follow from the test, never from a decorator to remember: `lab` when it uses the lab,
    `containers` when it lives in tests/test_<layer>_cluster.py (a layer's testbed) or uses Docker images
    (the `lab_image` fixture, tests/test_lab_images.py)."""
    for item in items:
        if {"lab", "lab_session"} & set(item.fixturenames):
            item.add_marker(pytest.mark.lab)
        elif _module_kind(item.path.stem) == "containers" or "lab_image" in item.fixturenames:
            item.add_marker(pytest.mark.containers)
    # `invoke all --lab` takes the lab down and replays everything from no lab at all: after every other test
    items.sort(key=lambda item: item.path.stem == "test_all_lab")


def _in_ci() -> bool:
    return os.environ.get("CI") == "true"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (CI=true) a lab or containers test that skips is a failure: a green run must have exercised them.
    Every phase counts: a skip in the test, in a fixture or from a skipif mark (those two are setup skips, shown
    as errors). A local run may still skip, with its reason. Proof: tests/test_ci_skips.py."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and _in_ci() and {m.name for m in item.iter_markers()} & {"lab", "containers"}:
        report.outcome = "failed"
        report.longrepr = (f"skipped ({report.when}) in CI, which must run every lab and containers test: "
                           f"{report.longrepr}")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same in CI for a whole module of lab or containers tests skipped before it has tests
    (`pytest.skip(..., allow_module_level=True)` at import): an error, never a silent skip."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and _in_ci() and isinstance(collector, pytest.Module) and _module_kind(collector.path.stem):
        report.outcome = "failed"
        report.longrepr = (f"{collector.path.name} skipped at collection in CI, which must run every lab and "
                           f"containers test: {report.longrepr}")


@pytest.fixture(scope="session")
def lab_image():
    """Build (or find cached) a lab image by name: `lab_image("haproxy")` -> its local tag."""
    from keybuzz.lab import images

    return lambda name: images.build(name, progress=lambda m: None)


@pytest.fixture(scope="session")
def lab(lab_session):
    """The keybuzz.lab.lab module, with the lab up and the base OS layer deployed."""
    return lab_session.module


@pytest.fixture(autouse=True)
def _lab_env_only_in_lab_tests(request, monkeypatch):
    """Tests that do not use the lab see the environment they started with, even mid-session."""
    if {"lab", "lab_session"} & set(request.fixturenames):
        return  # the session fixture has put lab.env() in os.environ
    for k, v in _ENV_BEFORE.items():
        if v is None:
            monkeypatch.delenv(k, raising=False)
        else:
            monkeypatch.setenv(k, v)
