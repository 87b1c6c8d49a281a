"""keybuzz.ops.secret_file against a hostile container (issue 9 §5): the secret is written as root into a directory
the container's uid owns (/opt/keybuzz/<layer>/conf). Run for real with `pyinfra @local` (no Docker).

The temporary file is staged in a root-only directory (`.keybuzz-staging`, root 0700, at the root of the mount that
holds the destination, so the final `mv -T` is one rename), `chown -h` never follows a symlink, and `mv -T` replaces
a symlink planted at the destination instead of following it. The tests plant symlinks where the temporary file
used to go (beside the destination) and at the destination, from a process running as the container's uid, and
show that nothing outside is touched."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from helpers import ROOT, run

CANARY = "CANARY-ops-s3cr3t-1b2c3d4e5f"
UID = 999  # the containers' uid (redis, rabbitmq)
# the container's processes run a system interpreter (the venv lives under /root, out of uid 999's reach)
PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"

# The hostile container: every regular file that appears in its directory (other than the destination) is replaced
# by a symlink to the victim as soon as it is seen, the classic race against `write tmp; chown tmp; mv tmp dest`.
ATTACKER = r"""
import os, sys, time
directory, victim, dest, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
open(os.path.join(directory, ".attacker-ready"), "w").close()
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    for entry in os.scandir(directory):
        if entry.path == dest or entry.name.startswith(".attacker") or entry.is_symlink():
            continue
        if entry.is_file(follow_symlinks=False):
            swap = os.path.join(directory, ".attacker-swap")
            try:
                os.symlink(victim, swap)
                os.replace(swap, entry.path)
            except OSError:
                pass
"""


@pytest.fixture
def site():
    """A world-traversable directory tree: data/ owned by the container uid, outside/ root's with a victim file."""
    base = Path(tempfile.mkdtemp(prefix="keybuzz-ops-"))
    base.chmod(0o755)
    data, outside = base / "data", base / "outside"
    data.mkdir()
    os.chown(data, UID, UID)
    outside.mkdir()
    victim = outside / "victim"
    victim.write_text("VICTIM\n")
    victim.chmod(0o644)
    yield base, data, outside, victim
    shutil.rmtree(base)


def _run_secret_file(dest: Path, **env) -> subprocess.CompletedProcess:
    full = {"SECRET_DEST": str(dest), "SECRET_CONTENT": CANARY, "SECRET_USER": str(UID), "SECRET_GROUP": str(UID),
            "PYTHONPATH": str(ROOT), **env}
    return run(["pyinfra", "-y", "@local", "tests/fixtures/secret_file_deploy.py"], env=full)


def _untouched(outside: Path, victim: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["victim"], "a file was written outside"
    st = victim.lstat()
    assert victim.read_text() == "VICTIM\n", "the victim's content changed"
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o644), "the victim's owner or mode changed"


def _staging_for(path: Path) -> Path:
    mount = subprocess.run(["stat", "-c", "%m", "--", str(path)], capture_output=True, text=True, check=True)
    return Path(mount.stdout.strip()) / ".keybuzz-staging"


def _written(dest: Path) -> None:
    st = dest.lstat()
    assert stat.S_ISREG(st.st_mode), "the destination is not a regular file"
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (UID, UID, 0o600)
    assert dest.read_text() == CANARY
    staging = _staging_for(dest.parent)
    sst = staging.lstat()
    assert stat.S_ISDIR(sst.st_mode) and (sst.st_uid, sst.st_gid, stat.S_IMODE(sst.st_mode)) == (0, 0, 0o700)
    assert not [p for p in staging.iterdir() if p.name.startswith(dest.name)], "a temporary file was left behind"


def test_symlink_planted_at_the_destination_is_replaced_not_followed(site):
    """The container replaced its config file by a symlink to a directory outside: `mv` without -T used to move the
    secret INTO that directory."""
    base, data, outside, victim = site
    dest = data / "secret.conf"
    subprocess.run([PYTHON, "-c", f"import os; os.symlink({str(outside)!r}, {str(dest)!r})"], user=UID,
                   group=UID, check=True)
    result = _run_secret_file(dest)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    _untouched(outside, victim)
    _written(dest)
    assert CANARY not in result.stdout + result.stderr
    second = _run_secret_file(dest)
    assert second.returncode == 0 and "[@local] No changes" in second.stderr


def test_symlink_swapped_in_for_the_temporary_file_touches_nothing_outside(site):
    """A process of the container's uid swaps every new file of its directory for a symlink to a root-owned file
    outside: the temporary file used to be created there (`<dest>.keybuzz-new`), then written, chowned and moved
    by root through that symlink. Staged in a root-only directory, it is out of the container's reach."""
    base, data, outside, victim = site
    dest = data / "secret.conf"
    attacker = subprocess.Popen([PYTHON, "-c", ATTACKER, str(data), str(victim), str(dest), "120"],
                                user=UID, group=UID)
    try:
        deadline = time.monotonic() + 10
        while not (data / ".attacker-ready").exists():
            assert time.monotonic() < deadline and attacker.poll() is None, "the attacker did not start"
            time.sleep(0.05)
        result = _run_secret_file(dest)
        time.sleep(0.5)  # let the attacker look at the final state once more
    finally:
        attacker.kill()
        attacker.wait(timeout=10)
    _untouched(outside, victim)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    _written(dest)
    assert CANARY not in result.stdout + result.stderr


def test_staging_directory_is_on_the_destinations_mount_and_must_be_roots():
    """On another mount (/dev/shm: tmpfs, world-writable and sticky, like /tmp on many hosts) the staging directory is
    that mount's own `.keybuzz-staging`, so the final move stays one rename. Someone else may create that name first
    there: anything but a root 0700 directory (another owner, a symlink) is refused, nothing is written."""
    shm = Path("/dev/shm")
    if subprocess.run(["stat", "-c", "%m", str(shm)], capture_output=True, text=True).stdout.strip() != str(shm):
        pytest.skip("/dev/shm is not a mount of its own here")
    staging = shm / ".keybuzz-staging"
    if staging.is_symlink() or (staging.exists() and (any(staging.iterdir()) or staging.stat().st_uid != 0)):
        pytest.skip(f"{staging} exists and is not an empty one of ours; not tampering with it")
    if staging.exists():
        staging.rmdir()
    base = Path(tempfile.mkdtemp(prefix="keybuzz-ops-", dir=shm))
    base.chmod(0o755)
    data = base / "data"
    data.mkdir()
    os.chown(data, UID, UID)
    dest = data / "secret.conf"
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    try:
        for plant in ("foreign directory", "symlink"):
            if plant == "foreign directory":
                staging.mkdir(mode=0o755)
                os.chown(staging, UID, UID)
            else:
                staging.symlink_to(elsewhere)
            result = _run_secret_file(dest)
            assert result.returncode != 0, plant
            assert f"{staging} is not a directory owned by root with mode 0700" in result.stdout + result.stderr
            assert not dest.exists() and not any(elsewhere.iterdir()), plant
            staging.rmdir() if plant == "foreign directory" else staging.unlink()
        result = _run_secret_file(dest)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        _written(dest)
        assert _staging_for(dest.parent) == staging
    finally:
        shutil.rmtree(base)
        if staging.is_symlink():
            staging.unlink()
        elif staging.is_dir() and not any(staging.iterdir()):
            staging.rmdir()


def test_validated_file_waits_for_the_other_writers_lock_and_never_touches_its_candidate(tmp_path):
    """haproxy.cfg has two writers (the haproxy deploy and redis-update-master.sh, issue 10 §4): the deploy
    installs under the script's lock (it waits while the script holds it) and its candidate has a name of its own."""
    dest, lock = tmp_path / "haproxy.cfg", tmp_path / "run" / "lock"
    dest.write_text("old\n")
    theirs = tmp_path / "haproxy.cfg.keybuzz-new"  # a candidate of the other writer (the deploy's former name)
    theirs.write_text("the other writer's candidate\n")
    lock.parent.mkdir(mode=0o700)
    holder = subprocess.Popen(["flock", str(lock), "sleep", "3"])
    try:
        time.sleep(0.3)
        start = time.monotonic()
        result = run(["pyinfra", "-y", "@local", "tests/fixtures/validated_file_deploy.py"],
                     env={"VALIDATED_DEST": str(dest), "VALIDATED_CONTENT": "new\n", "VALIDATED_CHECK": "test -s",
                          "VALIDATED_LOCK": str(lock), "PYTHONPATH": str(ROOT)}, timeout=120)
        waited = time.monotonic() - start
    finally:
        holder.wait(timeout=10)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert dest.read_text() == "new\n" and waited >= 2.5  # installed only once the lock was released
    assert theirs.read_text() == "the other writer's candidate\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["haproxy.cfg", "haproxy.cfg.keybuzz-new", "run"]
