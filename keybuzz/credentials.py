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
"""

from __future__ import annotations

import os
import secrets
import stat
import sys
from pathlib import Path

from dotenv import dotenv_values
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
    "redis": {"REDIS_PASSWORD": _random},
    "rabbitmq": {"RABBITMQ_USER": "keybuzz", "RABBITMQ_PASSWORD": _random, "RABBITMQ_ERLANG_COOKIE": _random},
    "minio": {"MINIO_ROOT_USER": "keybuzz-admin", "MINIO_ROOT_PASSWORD": _random},
    "mariadb": {"MARIADB_ROOT_PASSWORD": _random, "MARIADB_APP_USER": "erpnext", "MARIADB_APP_PASSWORD": _random},
    "proxysql": {"PROXYSQL_ADMIN_USER": "proxysql-admin", "PROXYSQL_ADMIN_PASSWORD": _random},
    "k3s": {"K3S_TOKEN": _random},
    "mail": {"MAIL_SMTP_USER": _EXTERNAL, "MAIL_SMTP_PASSWORD": _EXTERNAL},
    "marketplaces": {},  # global marketplace keys (not tenants'): added by their owners
    "stripe": {"STRIPE_SECRET_KEY": _EXTERNAL},
}

_announced: set[str] = set()


def credentials_dir() -> Path:
    return Path(os.environ.get("KEYBUZZ_CREDENTIALS_DIR") or DEFAULT_DIR)


class FileBackend:
    """`<dir>/<brick>.env` files, root:root 0600 (§H.1)."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.dir = Path(directory) if directory else credentials_dir()

    def path(self, brick: str) -> Path:
        return self.dir / f"{brick}.env"

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
        return {k: v or "" for k, v in dotenv_values(path).items()}


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
    for var in BRICKS[brick]:
        if not values.get(var):
            raise InputError(store.path(brick), 0, f"{var} is missing or empty; add `{var}=...` "
                             "(or run `invoke credentials.init` for generated ones)")
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
        existing = dotenv_values(path) if path.exists() else {}
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
