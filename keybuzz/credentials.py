"""Credentials (design §H): one `.env` per brick on install-01, read through one small interface.

Values come back as pyinfra `HiddenValue`s: printing one shows `*MASKED*`; code that writes a
secret into a file or a container calls `.unmask()` at the last moment. Only "credentials <brick>
loaded" is ever logged, never a value.

Example::

    creds = load("redis")                 # /opt/keybuzz-installer/credentials/redis.env
    # -> credentials redis loaded
    creds["REDIS_PASSWORD"]
    # -> '*MASKED*'

The backend is chosen by $KEYBUZZ_SECRETS_BACKEND: `file` (default) or `vault` (the seam for the
future Vault, §H.3: `secret/keybuzz/global/<brick>`, `secret/keybuzz/tenant_<ID>/<kind>`).

A `.env` file must mean the same to this reader and to `source` (design §H.1 sources them in bash), so only
lines both read alike are accepted (`parse_env`): `VAR=value` (optionally `export VAR=value`), the value unquoted
(letters, digits and `_@%+=:,./#!^*?[]{}-`, no space), single-quoted (taken literally, no interpolation), or
double-quoted without `$`, backquote or backslash; comments on their own line. Anything else (`${HOME}`
unquoted, text after an unquoted value such as ` #comment` that would cut it, a CR line ending, a space around
`=`) is refused with the file, the line, the variable and the fix. Then each value must fit where its layer
writes it (`VALUE_RULES`: no whitespace or quote in redis.conf, no `#` in rabbitmq.conf, PostgreSQL user names
are lower-case identifiers...). A refusal never shows the value.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import sys
from collections.abc import Callable
from pathlib import Path

from pyinfra.api import HiddenValue

from keybuzz.errors import InputError

DEFAULT_DIR = "/opt/keybuzz-installer/credentials"

_EXTERNAL = object()  # a value only its provider can give (SMTP, Stripe...): left empty by init


def _random() -> str:
    return secrets.token_urlsafe(32)


# brick -> {variable: default}; callables generate a strong random value; names from §H.3.
BRICKS: dict[str, dict[str, object]] = {
    "postgres": {
        "POSTGRES_SUPERUSER": "postgres", "POSTGRES_SUPERPASS": _random,
        "POSTGRES_APP_USER": "keybuzz", "POSTGRES_APP_PASS": _random,
        "POSTGRES_REPLICATION_USER": "replicator", "POSTGRES_REPLICATION_PASS": _random,
        # Patroni's REST API: its unsafe endpoints (switchover, restart, config) need them
        "PATRONI_API_USER": "patroni", "PATRONI_API_PASS": _random,
    },
    "redis": {
        # REDIS_PASSWORD: the applications' (Redis's `default` user, no admin or dangerous command); the
        # other users each do one job (keybuzz/redis/settings.py: ACL_USERS)
        "REDIS_PASSWORD": _random,
        "REDIS_ADMIN_USER": "keybuzz-admin", "REDIS_ADMIN_PASSWORD": _random,
        "REDIS_REPLICATION_USER": "keybuzz-replica", "REDIS_REPLICATION_PASSWORD": _random,
        "REDIS_SENTINEL_USER": "keybuzz-sentinel", "REDIS_SENTINEL_PASSWORD": _random,
        "REDIS_HAPROXY_USER": "keybuzz-haproxy", "REDIS_HAPROXY_PASSWORD": _random,
    },
    "rabbitmq": {"RABBITMQ_USER": "keybuzz", "RABBITMQ_PASSWORD": _random, "RABBITMQ_ERLANG_COOKIE": _random},
    "minio": {
        "MINIO_ROOT_USER": "keybuzz-admin", "MINIO_ROOT_PASSWORD": _random,
        # the apps' MinIO users (templates/minio/buckets.yaml names them by these variables); used from install-01
        # only, through MinIO's admin API: never sent to the MinIO nodes
        "MINIO_APP_ACCESS_KEY": "keybuzz-app", "MINIO_APP_SECRET_KEY": _random,
        "MINIO_BACKUP_ACCESS_KEY": "keybuzz-backup", "MINIO_BACKUP_SECRET_KEY": _random,
    },
    "mariadb": {
        "MARIADB_ROOT_PASSWORD": _random, "MARIADB_APP_USER": "erpnext", "MARIADB_APP_PASSWORD": _random,
        # Galera state transfer (mariabackup SST needs a database user) and ProxySQL's health monitor
        "MARIADB_SST_USER": "mariabackup", "MARIADB_SST_PASSWORD": _random,
        "MARIADB_MONITOR_USER": "proxysql_monitor", "MARIADB_MONITOR_PASSWORD": _random,
    },
    "proxysql": {"PROXYSQL_ADMIN_USER": "proxysql-admin", "PROXYSQL_ADMIN_PASSWORD": _random},
    "k3s": {"K3S_TOKEN": _random},
    "mail": {"MAIL_SMTP_USER": _EXTERNAL, "MAIL_SMTP_PASSWORD": _EXTERNAL},
    "marketplaces": {},  # global marketplace keys (not tenants'): added by their owners
    "stripe": {"STRIPE_SECRET_KEY": _EXTERNAL},
}

_announced: set[str] = set()

# --- the .env syntax: what bash's `source` and this reader read alike --------------------------------------------

_ASSIGN = re.compile(r"^(?:export\s+)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<rest>.*)$")
_SPACED_ASSIGN = re.compile(r"^(?:export\s+)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s+=")
# characters an unquoted value may hold: bash takes each of them literally in an assignment
_UNQUOTED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_@%+=:,./#!^*?[]{}-")
_QUOTE_IT = "wrap the whole value in single quotes (VAR='...'; a single quote itself cannot be in it)"


def _syntax(path, lineno, name, reason, fix):
    where = f"{name}: " if name else ""
    return InputError(path, lineno, f"{where}{reason}; fix: {fix}")


def parse_env(path: Path, text: str | None = None) -> dict[str, tuple[str, int]]:
    r"""{variable: (value, line)} of a `.env` file, refusing (InputError, never showing a value) any line that bash's
    `source` would read differently. A variable set twice keeps its last value, as in bash.

    >>> parse_env(Path("x.env"), "# comment\nA=abc#1\nexport B='x ${HOME} y'\n")
    {'A': ('abc#1', 2), 'B': ('x ${HOME} y', 3)}
    >>> parse_env(Path("x.env"), "A=abc #1\n")
    Traceback (most recent call last):
    keybuzz.errors.InputError: x.env:1: A: text after the value: ...
    """
    if text is None:
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(path, 0, "not UTF-8 text; fix: save the file as UTF-8") from None
    values: dict[str, tuple[str, int]] = {}
    for lineno, raw in enumerate(text.split("\n"), start=1):
        stripped = raw.strip(" \t")
        if not stripped.strip() or stripped.startswith("#"):
            continue
        m = _ASSIGN.match(stripped)
        name = m.group("name") if m else None
        if "\r" in raw:
            raise _syntax(path, lineno, name, "carriage return (a Windows line ending): `source` keeps it in the "
                          "value", f"convert the file to Unix line endings (sed -i 's/\\r$//' {path})")
        if not m:
            spaced = _SPACED_ASSIGN.match(stripped)
            if spaced:
                raise _syntax(path, lineno, spaced.group("name"), "no space around `=`: "
                              "`source` reads `VAR = value` as a command", "write VAR=value")
            raise _syntax(path, lineno, None, "not a `VARIABLE=value` line", "write VARIABLE=value, or start "
                          "a comment line with #")
        rest = m.group("rest")
        if rest[:1] in ("'", '"'):
            quote = rest[0]
            end = rest.find(quote, 1)
            if end < 0:
                raise _syntax(path, lineno, name, "unterminated quote (a value cannot span lines)",
                              "close the quote on the same line")
            value, tail = rest[1:end], rest[end + 1:]
            if quote == '"' and set(value) & set("$`\\"):
                raise _syntax(path, lineno, name, "in double quotes `$`, backquote and backslash are expanded by "
                              "`source` (no interpolation here)", "use single quotes: VAR='...'")
            if tail.strip() and not (tail[0] in " \t" and tail.strip().startswith("#")):
                raise _syntax(path, lineno, name, "text after the value", _QUOTE_IT)
        else:
            value = re.match(r"^[^ \t]*", rest).group(0)
            tail = rest[len(value):]
            if set(value) - _UNQUOTED:
                if "$" in value:
                    raise _syntax(path, lineno, name, "unquoted `$`: `source` would expand it (no interpolation "
                                  "here)", _QUOTE_IT)
                raise _syntax(path, lineno, name, "unquoted value holds a character the shell would interpret "
                              "(space, quote, $ ` \\ ; & | < > ( ) ~)", _QUOTE_IT)
            if tail.strip():
                if tail.strip().startswith("#"):
                    raise _syntax(path, lineno, name, "text after the value: ` #` starts a comment for `source` "
                                  "and for dotenv readers, so the value would be cut there",
                                  f"if `#...` is part of the value, {_QUOTE_IT}; else put the comment on its own line")
                raise _syntax(path, lineno, name, "text after the value (a space ends an unquoted value)", _QUOTE_IT)
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise _syntax(path, lineno, name, "control character (tab...) in the value", "remove it")
        values[name] = (value, lineno)
    return values


# --- what each value must be, because of where its layer writes it ----------------------------------------------

_WHITESPACE_QUOTES = re.compile(r"[\s'\"`\\]")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_PG_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")  # as keybuzz.db.settings.IDENTIFIER (unquoted PostgreSQL name)
_REGENERATE = "delete the line and run `invoke credentials.init` for a new random value, or choose one without them"


def _token(where: str) -> Callable[[str], tuple[str, str] | None]:
    def rule(value: str):
        bad = _WHITESPACE_QUOTES.search(value)
        if bad:
            kind = ("whitespace" if bad.group(0).isspace() else "a backslash" if bad.group(0) == "\\" else "a quote")
            return f"holds {kind}, which {where} cannot hold as written", _REGENERATE
        return None
    return rule


def _without(chars: str, where: str) -> Callable[[str], tuple[str, str] | None]:
    def rule(value: str):
        if set(value) & set(chars):
            listed = " ".join(f"`{c}`" for c in chars)
            return f"holds {listed}, which {where}", _REGENERATE
        return None
    return rule


def _name(where: str, pattern=_NAME, what="letters, digits, `_`, `.` and `-` (starting with a letter or `_`, at "
          "most 64)") -> Callable[[str], tuple[str, str] | None]:
    def rule(value: str):
        if not pattern.match(value):
            return f"must be a user name of {what}: it goes into {where}", "choose such a name, e.g. keybuzz"
        return None
    return rule


def _length(low: int = 0, high: int = 0, who: str = "") -> Callable[[str], tuple[str, str] | None]:
    def rule(value: str):
        if low and len(value) < low:
            return f"must be at least {low} characters ({who})", _REGENERATE
        if high and len(value) > high:
            return f"must be at most {high} characters ({who})", _REGENERATE
        return None
    return rule


_PG = "patroni.yml, the pgpass file and PgBouncer's auth file"
_REDIS = ("redis.conf / sentinel.conf (`masterauth`, `sentinel auth-pass`: split at spaces, quotes parsed) and the "
          "hosts' single-quoted redis.env")
_REDIS_ACL = "Redis's ACL files (users.acl)"


def _without_default(value: str) -> tuple[str, str] | None:
    """Redis's `default` user is the applications' (REDIS_PASSWORD): another role must not take it over."""
    if value == "default":
        return "must not be `default`, the applications' Redis user (REDIS_PASSWORD)", "choose another name"
    return None
_PROXYSQL_SEPARATORS = "proxysql.cnf `admin_credentials=\"user:password;...\"` uses as separators"
VALUE_RULES: dict[str, tuple[Callable[[str], tuple[str, str] | None], ...]] = {
    "REDIS_PASSWORD": (_token(_REDIS),),
    "REDIS_ADMIN_USER": (_name(_REDIS_ACL), _without_default),
    "REDIS_ADMIN_PASSWORD": (_token(_REDIS),),
    "REDIS_REPLICATION_USER": (_name(_REDIS_ACL), _without_default),
    "REDIS_REPLICATION_PASSWORD": (_token(_REDIS),),
    "REDIS_SENTINEL_USER": (_name(_REDIS_ACL), _without_default),
    "REDIS_SENTINEL_PASSWORD": (_token(_REDIS),),
    "REDIS_HAPROXY_USER": (_name(_REDIS_ACL), _without_default),
    "REDIS_HAPROXY_PASSWORD": (_token(_REDIS),),
    "RABBITMQ_USER": (_name("RabbitMQ's conf.d file (`default_user = ...`)"),),
    "RABBITMQ_PASSWORD": (_token("RabbitMQ's conf.d file (`default_pass = ...`)"),
                          _without("#", "rabbitmq.conf syntax (cuttlefish) reads as the start of a comment")),
    "RABBITMQ_ERLANG_COOKIE": (_token("the Erlang cookie file"), _length(high=255, who="Erlang's cookie limit")),
    "POSTGRES_SUPERUSER": (_name(_PG, _PG_NAME, "lower-case letters, digits and `_` (a PostgreSQL name)"),),
    "POSTGRES_APP_USER": (_name(_PG, _PG_NAME, "lower-case letters, digits and `_` (a PostgreSQL name)"),),
    "POSTGRES_REPLICATION_USER": (_name(_PG, _PG_NAME, "lower-case letters, digits and `_` (a PostgreSQL name)"),),
    "POSTGRES_SUPERPASS": (_token(_PG),),
    "POSTGRES_APP_PASS": (_token(_PG),),
    "POSTGRES_REPLICATION_PASS": (_token(_PG),),
    "PATRONI_API_USER": (_name("Patroni's REST API basic auth (patroni.yml)"),),
    "PATRONI_API_PASS": (_token("Patroni's REST API basic auth (patroni.yml, the HAProxy checks)"),),
    "MINIO_ROOT_USER": (_name("MinIO's env file"), _length(low=3, who="MinIO's minimum")),
    "MINIO_ROOT_PASSWORD": (_token("MinIO's env file"), _length(low=8, who="MinIO's minimum")),
    "MINIO_APP_ACCESS_KEY": (_name("MinIO's IAM user name"), _length(low=3, who="MinIO's minimum")),
    "MINIO_APP_SECRET_KEY": (_token("MinIO's IAM secret key"), _length(low=8, who="MinIO's minimum")),
    "MINIO_BACKUP_ACCESS_KEY": (_name("MinIO's IAM user name"), _length(low=3, who="MinIO's minimum")),
    "MINIO_BACKUP_SECRET_KEY": (_token("MinIO's IAM secret key"), _length(low=8, who="MinIO's minimum")),
    "MARIADB_ROOT_PASSWORD": (_token("MariaDB's option files"),),
    "MARIADB_APP_USER": (_name("MariaDB's grants"),),
    "MARIADB_APP_PASSWORD": (_token("MariaDB's option files"),),
    "MARIADB_SST_USER": (_name("MariaDB's grants and wsrep_sst_auth"),),
    "MARIADB_SST_PASSWORD": (_token("MariaDB's option files"),
                             _without(":", "wsrep_sst_auth `user:password` uses as separator")),
    "MARIADB_MONITOR_USER": (_name("MariaDB's grants and ProxySQL's mysql-monitor_username"),),
    "MARIADB_MONITOR_PASSWORD": (_token("MariaDB's option files and ProxySQL's admin SQL"),),
    "PROXYSQL_ADMIN_USER": (_name("proxysql.cnf `admin_credentials`"),),
    "PROXYSQL_ADMIN_PASSWORD": (_token("proxysql.cnf"), _without(":;", _PROXYSQL_SEPARATORS)),
    "K3S_TOKEN": (_token("K3s' config.yaml and join command"),),
}


def check_values(path, values: dict[str, str], lines: dict[str, int] | None = None) -> None:
    """Refuse (InputError: file, line, variable, reason, fix; never the value) a value its layer cannot write."""
    for var, value in values.items():
        if not value:
            continue  # an empty value is refused by load() for the variables a brick needs
        for rule in VALUE_RULES.get(var, ()):
            problem = rule(value)
            if problem:
                reason, fix = problem
                raise InputError(path, (lines or {}).get(var, 0), f"{var}: {reason}; fix: {fix}")


def credentials_dir() -> Path:
    return Path(os.environ.get("KEYBUZZ_CREDENTIALS_DIR") or DEFAULT_DIR)


class FileBackend:
    """`<dir>/<brick>.env` files, root:root 0600 (§H.1)."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.dir = Path(directory) if directory else credentials_dir()
        self._lines: dict[str, dict[str, int]] = {}

    def path(self, brick: str) -> Path:
        return self.dir / f"{brick}.env"

    def lines(self, brick: str) -> dict[str, int]:
        """{variable: line} of the last read of `brick` (for the messages of check_values)."""
        return self._lines.get(brick, {})

    def read(self, brick: str) -> dict[str, str]:
        path = self.path(brick)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise InputError(path, 0, "missing credentials file; run `invoke credentials.init` "
                             "(or set KEYBUZZ_CREDENTIALS_DIR)") from None
        if stat.S_IMODE(st.st_mode) != 0o600 or st.st_uid != 0 or st.st_gid != 0:
            raise InputError(path, 0, f"must be root:root mode 0600 (is {st.st_uid}:{st.st_gid} mode "
                             f"{stat.S_IMODE(st.st_mode):04o}); fix: chown root:root {path} && chmod 600 {path}")
        parsed = parse_env(path)
        self._lines[brick] = {k: line for k, (_, line) in parsed.items()}
        return {k: v for k, (v, _) in parsed.items()}


class VaultBackend:
    """SEAM for the future Vault (§H.3), via hvac: KV v2 at `secret/keybuzz/global/<brick>`.

    Configured by $VAULT_ADDR and $VAULT_TOKEN. Not exercised against a real Vault yet.
    """

    def __init__(self, mount: str = "secret"):
        try:
            import hvac  # optional dependency: pip install '.[vault]'
        except ImportError:
            raise InputError("KEYBUZZ_SECRETS_BACKEND", 0, "vault backend needs hvac: pip install '.[vault]'") from None
        self.client = hvac.Client(url=os.environ.get("VAULT_ADDR"), token=os.environ.get("VAULT_TOKEN"))
        self.mount = mount

    def path(self, brick: str) -> str:
        return f"{self.mount}/keybuzz/global/{brick}"

    def read(self, brick: str, tenant: str | None = None) -> dict[str, str]:
        sub = f"keybuzz/tenant_{tenant}/{brick}" if tenant else f"keybuzz/global/{brick}"
        answer = self.client.secrets.kv.v2.read_secret_version(path=sub, mount_point=self.mount)
        return dict(answer["data"]["data"])


def backend():
    """The configured secrets backend (file by default)."""
    kind = os.environ.get("KEYBUZZ_SECRETS_BACKEND", "file")
    if kind == "file":
        return FileBackend()
    if kind == "vault":
        return VaultBackend()
    raise InputError("KEYBUZZ_SECRETS_BACKEND", 0, f"unknown backend {kind!r}; use 'file' or 'vault'")


def load(brick: str, store=None) -> dict[str, HiddenValue]:
    """Every variable of `brick`, masked; refuses a missing or empty one, naming file and variable."""
    if brick not in BRICKS:
        raise InputError("credentials", 0, f"unknown brick {brick!r}; known: {', '.join(BRICKS)}")
    store = store or backend()
    values = store.read(brick)
    lines = store.lines(brick) if hasattr(store, "lines") else {}
    for var in BRICKS[brick]:
        if not values.get(var):
            raise InputError(store.path(brick), lines.get(var, 0), f"{var} is missing or empty; add `{var}=...` "
                             "(or run `invoke credentials.init` for generated ones)")
    check_values(store.path(brick), values, lines)
    if brick not in _announced:
        _announced.add(brick)
        print(f"credentials {brick} loaded", file=sys.stderr)
    return {k: HiddenValue(v) for k, v in values.items()}


def init(directory: str | os.PathLike | None = None, bricks=None) -> list[str]:
    """Create missing `.env` files / variables with strong random values; never overwrite a value.

    Returns one line per change (names only). Files are root:root 0600, the directory 0700.
    """
    store = FileBackend(directory)
    store.dir.mkdir(parents=True, exist_ok=True)
    os.chmod(store.dir, 0o700)
    changes = []
    for brick in bricks or BRICKS:
        path = store.path(brick)
        existing = {k: v for k, (v, _) in parse_env(path).items()} if path.exists() else {}
        added = []
        lines = []
        for var, default in BRICKS[brick].items():
            if existing.get(var):
                continue
            if default is _EXTERNAL:
                if var not in existing:
                    lines.append(f"# {var}: from the provider, fill in before the layer that needs it\n{var}=\n")
                    added.append(f"{var} (empty: fill in)")
                continue
            value = default() if callable(default) else default
            lines.append(f"{var}={value}\n")
            added.append(var)
        if not path.exists() or lines:
            # open with O_CREAT|0600 so the file is never world-readable, even for an instant
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a") as f:
                if existing and not path.read_text().endswith("\n"):
                    f.write("\n")
                f.writelines(lines)
            changes.append(f"{path}: added {', '.join(added) or '(empty file)'}")
        os.chmod(path, 0o600)
        os.chown(path, 0, 0)
    return changes
