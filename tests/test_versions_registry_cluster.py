"""`invoke versions.check` against a real registry (issue 9 §2): the lab's registry image (Debian's docker-registry,
distribution 2.8) published on 127.0.0.1 only, one small image pushed into it. A `containers` test (file name
ending in _cluster.py): it needs Docker and the lab images; all traffic goes to 127.0.0.1.

Checks: the pushed tag is found with the digest `docker push` reported; a missing tag and a missing repository are
"not found"; `--lock FILE` writes that digest and load_versions applies it (name:tag@sha256:...); the locked
reference resolves to the same digest; Docker itself resolves a `name:tag@sha256:...` reference (what deploys pull
once a lock is in use).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
import uuid

import pytest
import yaml

from helpers import ROOT, run
from keybuzz.versions import check_images, load_versions

TAG = "7.0.15-versions-check"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=300, check=check)


@pytest.fixture(scope="module")
def registry(lab_image):
    """(address, pushed image ref, its digest): a throwaway registry on 127.0.0.1:<free port>."""
    image = lab_image("registry")
    redis = lab_image("redis")  # any small local image does; this one is already built for the lab
    port = _free_port()
    name = f"keybuzz-test-registry-{uuid.uuid4().hex[:8]}"
    _docker("run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:5000", image)
    address = f"127.0.0.1:{port}"
    pushed = f"{address}/keybuzz-test/redis:{TAG}"
    local_refs = [pushed]  # removed at the end, with the digest reference a pull leaves
    try:
        deadline = time.monotonic() + 30
        while True:  # bounded: the registry answers /v2/ within a second or two
            try:
                with urllib.request.urlopen(f"http://{address}/v2/", timeout=2) as response:  # noqa: S310
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"registry {name} did not answer on {address} within 30 s: "
                            + _docker("logs", name, check=False).stderr[-2000:])
            time.sleep(0.5)
        _docker("tag", redis, pushed)
        _docker("push", pushed)
        digests = json.loads(_docker("image", "inspect", "--format", "{{json .RepoDigests}}", pushed).stdout)
        digest = next(d.split("@", 1)[1] for d in digests if d.startswith(f"{address}/keybuzz-test/redis@"))
        local_refs.append(f"{address}/keybuzz-test/redis@{digest}")
        yield address, pushed, digest
    finally:
        _docker("rm", "-f", "-v", name, check=False)
        for ref in local_refs:
            _docker("rmi", ref, check=False)


def _override(tmp_path, address: str) -> tuple:
    """An override pointing every image pin at the test registry (nothing else is ever asked): redis at the pushed
    tag, haproxy at a missing tag of the same repository, every other image at a repository that does not exist."""
    keys = [k for k in yaml.safe_load((ROOT / "versions.yaml").read_text()) if k.endswith("_image")]
    pins = {k: f"{address}/keybuzz-test/absent-{k.replace('_', '-')}:1.2.3" for k in keys}
    pins["redis_image"] = f"{address}/keybuzz-test/redis:{TAG}"
    pins["haproxy_image"] = f"{address}/keybuzz-test/redis:7.0.99-missing"
    path = tmp_path / "site.yaml"
    path.write_text("".join(f'{k}: "{v}"\n' for k, v in pins.items()))
    return path, keys


def test_check_finds_the_pushed_digest_and_reports_missing_tags(registry, tmp_path):
    address, pushed, digest = registry
    override, keys = _override(tmp_path, address)
    pins = load_versions(override=override, lock="")
    results = {r.key: r for r in check_images(pins)}
    assert set(results) == set(keys)
    assert (results["redis_image"].status, results["redis_image"].digest) == ("found", digest)
    assert results["redis_image"].line() == f"redis_image  {pushed}  -> {digest}"
    assert results["haproxy_image"].status == "not found"  # missing tag of an existing repository
    assert results["etcd_image"].status == "not found"  # repository that does not exist
    assert all(r.status == "not found" for k, r in results.items() if k != "redis_image")


def test_invoke_versions_check_writes_a_lock_that_deploys_then_use(registry, tmp_path):
    address, pushed, digest = registry
    override, keys = _override(tmp_path, address)
    lock = tmp_path / "versions.lock.yaml"
    result = run(["invoke", "versions.check", "--lock", str(lock)],
                 env={"KEYBUZZ_VERSIONS": str(override), "KEYBUZZ_VERSIONS_LOCK": ""}, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr  # the other images are not in this registry
    assert f"redis_image  {pushed}  -> {digest}" in result.stdout.splitlines()
    assert f"haproxy_image  {address}/keybuzz-test/redis:7.0.99-missing  -> not found" in result.stdout.splitlines()
    assert f"lock written: {lock} (1 of {len(keys)} images" in result.stdout
    locked = load_versions(override=override, lock=lock)
    assert locked["redis_image"] == f"{pushed}@{digest}"
    again = check_images(locked, ["redis_image"])[0]  # the locked reference: asked by digest, same answer
    assert (again.status, again.digest) == ("found", digest)
    # what a deploy does with a locked pin (keybuzz.ops.image_present): pull and inspect name:tag@sha256:...
    assert _docker("pull", "-q", f"{pushed}@{digest}", check=False).returncode == 0
    assert _docker("image", "inspect", f"{pushed}@{digest}", check=False).returncode == 0
