"""Credentials (design §H): created strong and root-only, refused when exposed, never printed."""

from __future__ import annotations

import os
import stat

import pytest

from helpers import ROOT, run
from keybuzz import credentials
from keybuzz.errors import InputError

CANARY = "CANARY-s3cr3t-9f8e7d6c5b4a"
# the redis brick's other variables (valid values), appended after the lines a test is about
REDIS_REST = "".join(f"{var}=kb-{var.lower().replace('_', '-')}\n" for var in credentials.BRICKS["redis"]
                     if var != "REDIS_PASSWORD")


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


@pytest.mark.parametrize("uid, gid", [(1000, 0), (0, 1000)])
def test_a_file_not_owned_by_root_is_refused_even_mode_0600(creds_dir, uid, gid):
    """README/§H.1: root:root 0600. Mode 0600 alone is not enough: whoever owns the file can read and rewrite it."""
    credentials.init(bricks=["redis"])
    path = creds_dir / "redis.env"
    os.chown(path, uid, gid)  # the tests run as root (init makes root:root files)
    with pytest.raises(InputError) as err:
        credentials.load("redis")
    assert str(err.value) == (f"{path}: must be root:root mode 0600 (is {uid}:{gid} mode 0600); "
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
    (creds_dir / "redis.env").write_text(f"REDIS_PASSWORD={CANARY}\n{REDIS_REST}")
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
    (cdir / "redis.env").write_text(f"REDIS_PASSWORD={CANARY}\n{REDIS_REST}")
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


# --- issue 9 §2: the .env files mean exactly what they say, for us and for `source` (§H.1) ---


def _env(creds_dir, brick, text):
    creds_dir.mkdir(mode=0o700, exist_ok=True)
    path = creds_dir / f"{brick}.env"
    path.write_text(text + (REDIS_REST if brick == "redis" else ""))
    os.chmod(path, 0o600)
    credentials._announced.discard(brick)
    return path


def _refused(brick, path, line, variable, reason, secret=None):
    with pytest.raises(InputError) as err:
        credentials.load(brick)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: {variable}: "), message
    assert reason in message, message
    assert "fix" in message and "\n" not in message
    if secret:
        assert secret not in message
    return message


def test_no_variable_interpolation(creds_dir, monkeypatch):
    """`${HOME}` used to be expanded by python-dotenv; `source` would expand it too. Unquoted it is refused;
    single-quoted it is the literal text, for us and for bash."""
    monkeypatch.setenv("HOME", "/root")
    path = _env(creds_dir, "redis", "REDIS_PASSWORD=abc${HOME}def\n")
    _refused("redis", path, 1, "REDIS_PASSWORD", "`source` would expand", secret="abc${HOME}def")
    _env(creds_dir, "redis", "# the Redis password\nREDIS_PASSWORD='abc${HOME}def'\n")
    assert credentials.load("redis")["REDIS_PASSWORD"].unmask() == "abc${HOME}def"
    path = _env(creds_dir, "redis", 'REDIS_PASSWORD="abc${HOME}def"\n')
    _refused("redis", path, 1, "REDIS_PASSWORD", "use single quotes")


def test_hash_in_a_value_is_kept_or_refused_never_cut(creds_dir):
    """` #` after an unquoted value starts a comment for dotenv and for `source`: the value used to be cut there
    silently. Now any text after an unquoted value is refused; `#` inside a value (no space before it) is kept."""
    path = _env(creds_dir, "redis", f"REDIS_PASSWORD={CANARY} #tail\n")
    _refused("redis", path, 1, "REDIS_PASSWORD", "would be cut there", secret=CANARY)
    path = _env(creds_dir, "redis", f"\nREDIS_PASSWORD={CANARY}   # rotated in May\n")
    _refused("redis", path, 2, "REDIS_PASSWORD", "own line", secret=CANARY)
    _env(creds_dir, "redis", f"REDIS_PASSWORD={CANARY}#x1\n")
    assert credentials.load("redis")["REDIS_PASSWORD"].unmask() == f"{CANARY}#x1"
    _env(creds_dir, "mail", "MAIL_SMTP_USER=ops@keybuzz.io\nMAIL_SMTP_PASSWORD='pa ss #word'  # from the provider\n")
    assert credentials.load("mail")["MAIL_SMTP_PASSWORD"].unmask() == "pa ss #word"


@pytest.mark.parametrize("text, line, variable, reason", [
    ("REDIS_PASSWORD = abc\n", 1, "REDIS_PASSWORD", "no space around `=`"),
    ("REDIS_PASSWORD='abc\n", 1, "REDIS_PASSWORD", "unterminated quote"),
    ("REDIS_PASSWORD=abc def\n", 1, "REDIS_PASSWORD", "text after the value"),
    ("REDIS_PASSWORD=abc;reboot\n", 1, "REDIS_PASSWORD", "the shell would interpret"),
    ("REDIS_PASSWORD=`id`\n", 1, "REDIS_PASSWORD", "the shell would interpret"),
    ("REDIS_PASSWORD=~/x\n", 1, "REDIS_PASSWORD", "the shell would interpret"),
    ("REDIS_PASSWORD='abc'def\n", 1, "REDIS_PASSWORD", "text after the value"),
    ("REDIS_PASSWORD=abc\r\n", 1, "REDIS_PASSWORD", "carriage return"),
])
def test_lines_source_would_read_differently_are_refused(creds_dir, text, line, variable, reason):
    path = _env(creds_dir, "redis", text)
    _refused("redis", path, line, variable, reason)


def test_a_line_that_is_not_an_assignment_is_refused(creds_dir):
    path = _env(creds_dir, "redis", "REDIS_PASSWORD=abcdefgh\nthis is not an assignment\n")
    with pytest.raises(InputError, match=rf"^{path}:2: not a `VARIABLE=value` line"):
        credentials.load("redis")
    _env(creds_dir, "redis", "export REDIS_PASSWORD=abcdefgh\n")  # `export` is what bash scripts often write
    assert credentials.load("redis")["REDIS_PASSWORD"].unmask() == "abcdefgh"


# the minio brick's application users (templates/minio/buckets.yaml), valid: the cases below break another variable
_MINIO_APPS = ("MINIO_APP_ACCESS_KEY=keybuzz-app\nMINIO_APP_SECRET_KEY=abcdefgh\n"
               "MINIO_BACKUP_ACCESS_KEY=keybuzz-backup\nMINIO_BACKUP_SECRET_KEY=abcdefgh\n")


@pytest.mark.parametrize("brick, text, line, variable, reason", [
    ("redis", "REDIS_PASSWORD='a b c d e f'\n", 1, "REDIS_PASSWORD", "redis.conf"),
    ("redis", "REDIS_PASSWORD='ab\"cdefg'\n", 1, "REDIS_PASSWORD", "a quote"),
    ("redis", "REDIS_PASSWORD='ab\\cdefg'\n", 1, "REDIS_PASSWORD", "a backslash"),
    ("rabbitmq", "RABBITMQ_USER='key buzz'\nRABBITMQ_PASSWORD=abcdefgh\nRABBITMQ_ERLANG_COOKIE=abcdefgh\n", 1,
     "RABBITMQ_USER", "letters, digits"),
    ("rabbitmq", "RABBITMQ_USER=keybuzz\nRABBITMQ_PASSWORD=abc#defgh\nRABBITMQ_ERLANG_COOKIE=abcdefgh\n", 2,
     "RABBITMQ_PASSWORD", "`#`"),
    ("rabbitmq", f"RABBITMQ_USER=keybuzz\nRABBITMQ_PASSWORD=abcdefgh\nRABBITMQ_ERLANG_COOKIE={'c' * 256}\n", 3,
     "RABBITMQ_ERLANG_COOKIE", "at most 255"),
    ("postgres", "POSTGRES_SUPERUSER=postgres\nPOSTGRES_SUPERPASS=abcdefgh\nPOSTGRES_APP_USER=Key-Buzz\n"
     "POSTGRES_APP_PASS=abcdefgh\nPOSTGRES_REPLICATION_USER=replicator\nPOSTGRES_REPLICATION_PASS=abcdefgh\n"
     "PATRONI_API_USER=patroni\nPATRONI_API_PASS=abcdefgh\n", 3, "POSTGRES_APP_USER", "lower-case"),
    ("postgres", "POSTGRES_SUPERUSER=postgres\nPOSTGRES_SUPERPASS='with space'\nPOSTGRES_APP_USER=keybuzz\n"
     "POSTGRES_APP_PASS=abcdefgh\nPOSTGRES_REPLICATION_USER=replicator\nPOSTGRES_REPLICATION_PASS=abcdefgh\n"
     "PATRONI_API_USER=patroni\nPATRONI_API_PASS=abcdefgh\n", 2, "POSTGRES_SUPERPASS", "whitespace"),
    ("minio", "MINIO_ROOT_USER=ab\nMINIO_ROOT_PASSWORD=abcdefgh\n" + _MINIO_APPS, 1, "MINIO_ROOT_USER", "at least 3"),
    ("minio", "MINIO_ROOT_USER=admin\nMINIO_ROOT_PASSWORD=abcdefg\n" + _MINIO_APPS, 2, "MINIO_ROOT_PASSWORD",
     "at least 8"),
    ("minio", "MINIO_ROOT_USER=admin\nMINIO_ROOT_PASSWORD=abcdefgh\nMINIO_APP_ACCESS_KEY=ap\n"
     "MINIO_APP_SECRET_KEY=abcdefgh\nMINIO_BACKUP_ACCESS_KEY=keybuzz-backup\nMINIO_BACKUP_SECRET_KEY=abcdefgh\n", 3,
     "MINIO_APP_ACCESS_KEY", "at least 3"),
    ("proxysql", "PROXYSQL_ADMIN_USER=admin\nPROXYSQL_ADMIN_PASSWORD=abc:defgh\n", 2, "PROXYSQL_ADMIN_PASSWORD",
     "`:`"),
])
def test_values_a_config_file_cannot_hold_are_refused_per_brick(creds_dir, brick, text, line, variable, reason):
    path = _env(creds_dir, brick, text)
    _refused(brick, path, line, variable, reason)


def test_generated_credentials_pass_every_rule(creds_dir):
    credentials.init()
    for brick in credentials.BRICKS:
        if brick in ("mail", "stripe"):
            continue  # provider secrets are left empty to fill in
        credentials.load(brick)


def test_a_redis_role_may_not_take_over_the_applications_default_user(creds_dir):
    path = _env(creds_dir, "redis", "REDIS_PASSWORD=abcdefgh\n")
    path.write_text(path.read_text().replace("REDIS_HAPROXY_USER=kb-redis-haproxy-user", "REDIS_HAPROXY_USER=default"))
    line = path.read_text().splitlines().index("REDIS_HAPROXY_USER=default") + 1
    _refused("redis", path, line, "REDIS_HAPROXY_USER", "must not be `default`")
