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


def pytest_collection_modifyitems(items):
    """Markers follow from the test, never from a decorator to remember: `lab` when it uses the lab,
    `containers` when it lives in tests/test_<layer>_cluster.py (a layer's testbed) or uses Docker images
    (the `lab_image` fixture, tests/test_lab_images.py)."""
    for item in items:
        stem = item.path.stem
        if {"lab", "lab_session"} & set(item.fixturenames):
            item.add_marker(pytest.mark.lab)
        elif stem.endswith("_cluster") or stem == "test_lab_images" or "lab_image" in item.fixturenames:
            item.add_marker(pytest.mark.containers)
    # `invoke all --lab` takes the lab down and replays everything from no lab at all: after every other test
    items.sort(key=lambda item: item.path.stem == "test_all_lab")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (CI=true) a lab or containers test that skips is a failure: a green run must have exercised them.
    A local run may still skip, with its reason."""
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and os.environ.get("CI") == "true"
            and {m.name for m in item.iter_markers()} & {"lab", "containers"}):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must run every lab and containers test: {report.longrepr}"


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
