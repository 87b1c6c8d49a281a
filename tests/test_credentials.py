"""Credentials (design §H): created strong and root-only, refused when exposed, never printed."""

from __future__ import annotations

import os
import stat

import pytest

from helpers import ROOT, run
from keybuzz import credentials
from keybuzz.errors import InputError

CANARY = "CANARY-s3cr3t-9f8e7d6c5b4a"


@pytest.fixture
def creds_dir(tmp_path, monkeypatch):
    d = tmp_path / "credentials"
    monkeypatch.setenv("KEYBUZZ_CREDENTIALS_DIR", str(d))
    return d


def test_init_creates_every_brick_root_only_and_never_overwrites(creds_dir):
    changes = credentials.init()
    assert len(changes) == len(credentials.BRICKS)
    assert stat.S_IMODE(creds_dir.stat().st_mode) == 0o700
    for brick in credentials.BRICKS:
        path = creds_dir / f"{brick}.env"
        st = path.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 0, 0), brick
    redis = credentials.load("redis")["REDIS_PASSWORD"].unmask()
    assert len(redis) >= 40 and redis != credentials.load("rabbitmq")["RABBITMQ_PASSWORD"].unmask()
    before = {p.name: p.read_text() for p in creds_dir.iterdir()}
    assert credentials.init() == []
    assert before == {p.name: p.read_text() for p in creds_dir.iterdir()}


def test_init_fills_only_missing_variables(creds_dir):
    creds_dir.mkdir(mode=0o700)
    (creds_dir / "rabbitmq.env").write_text(f"RABBITMQ_PASSWORD={CANARY}\n")
    changes = credentials.init(bricks=["rabbitmq"])
    assert changes and CANARY not in " ".join(changes)
    loaded = credentials.load("rabbitmq")
    assert loaded["RABBITMQ_PASSWORD"].unmask() == CANARY  # kept
    assert loaded["RABBITMQ_USER"].unmask() == "keybuzz" and loaded["RABBITMQ_ERLANG_COOKIE"].unmask()


def test_world_readable_file_is_refused_with_the_fix(creds_dir):
    credentials.init(bricks=["redis"])
    path = creds_dir / "redis.env"
    os.chmod(path, 0o644)
    with pytest.raises(InputError) as err:
        credentials.load("redis")
    assert str(err.value) == (f"{path}: must be root:root mode 0600 (is 0:0 mode 0644); "
                              f"fix: chown root:root {path} && chmod 600 {path}")


def test_missing_variable_and_missing_file_are_named(creds_dir):
    credentials.init(bricks=["minio"])
    path = creds_dir / "minio.env"
    path.write_text("MINIO_ROOT_USER=admin\n")
    with pytest.raises(InputError, match=rf"^{path}: MINIO_ROOT_PASSWORD is missing or empty"):
        credentials.load("minio")
    missing = rf"{creds_dir}/redis.env: missing credentials file; run `invoke credentials.init`"
    with pytest.raises(InputError, match=missing):
        credentials.load("redis")


def test_values_are_masked_and_only_the_load_is_logged(creds_dir, capsys):
    creds_dir.mkdir(mode=0o700)
    (creds_dir / "redis.env").write_text(f"REDIS_PASSWORD={CANARY}\n")
    os.chmod(creds_dir / "redis.env", 0o600)
    credentials._announced.discard("redis")
    loaded = credentials.load("redis")
    print(loaded, str(loaded["REDIS_PASSWORD"]), f"{loaded['REDIS_PASSWORD']}")
    out = capsys.readouterr()
    assert CANARY not in out.out + out.err
    assert "credentials redis loaded" in out.err


def test_invoke_init_prints_names_never_values(tmp_path):
    d = tmp_path / "c"
    result = run(["invoke", "credentials.init", "--dir", str(d)])
    assert result.returncode == 0, result.stderr
    values = [line.split("=", 1)[1] for f in d.iterdir() for line in f.read_text().splitlines()
              if "=" in line and not line.startswith("#") and line.split("=", 1)[1]]
    assert len(values) > 10
    for v in values:
        if len(v) > 12:  # generated secrets (usernames are short fixed defaults)
            assert v not in result.stdout + result.stderr
    assert "redis.env: added REDIS_PASSWORD" in result.stdout


@pytest.mark.parametrize("flags", [[], ["-v"], ["-vv"], ["-vvv"], ["--debug", "-vvv"], ["--diff", "-vvv"]])
def test_secret_file_never_prints_the_secret_at_any_verbosity(tmp_path, flags):
    cdir = tmp_path / "c"
    cdir.mkdir(mode=0o700)
    (cdir / "redis.env").write_text(f"REDIS_PASSWORD={CANARY}\n")
    os.chmod(cdir / "redis.env", 0o600)
    dest = tmp_path / "out" / "secret.conf"
    dest.parent.mkdir()
    env = {"KEYBUZZ_CREDENTIALS_DIR": str(cdir), "SECRET_DEST": str(dest), "PYTHONPATH": str(ROOT)}
    first = run(["pyinfra", "-y", *flags, "@local", "tests/fixtures/secret_deploy.py"], env=env)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert CANARY not in first.stdout + first.stderr
    assert dest.read_text() == CANARY
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    second = run(["pyinfra", "-y", *flags, "@local", "tests/fixtures/secret_deploy.py"], env=env)
    assert CANARY not in second.stdout + second.stderr
    assert "[@local] No changes" in second.stderr
