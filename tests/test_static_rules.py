"""Static guarantees of the design over every tracked file (new files included):
HAProxy never binds 10.0.0.10 and ProxySQL never listens on 10.0.0.20 (§A); no secret in git (§H.4).
Each rule is first shown to catch a planted offence, so none of these tests can pass vacuously."""

from __future__ import annotations

import re

import pytest

from helpers import ROOT, tracked_files

LB_BIND = re.compile(r"^\s*(bind|listen)\b[^#\n]*\b10\.0\.0\.(10|20)\b", re.MULTILINE | re.IGNORECASE)
PROXYSQL_IFACE = re.compile(r"(mysql_ifaces|interfaces|listen_address)\s*[=:][^\n]*10\.0\.0\.20", re.IGNORECASE)
SECRET_ASSIGN = re.compile(
    r"\b[A-Z0-9_]*(PASSWORD|PASSWD|SECRET|TOKEN|_KEY|_PASS|COOKIE)[A-Z0-9_]*\s*[=:]\s*[\"']?([A-Za-z0-9+/=_.-]{12,})"
)
PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
PLACEHOLDER = re.compile(r"example|placeholder|changeme|masked|canary|dummy|xxxx", re.IGNORECASE)

SCANNED_SUFFIXES = {".py", ".j2", ".cfg", ".conf", ".sh", ".yaml", ".yml", ".tsv", ".env", ".toml", ".service",
                    ".timer", ".txt", ""}


def _files():
    for path in tracked_files():
        if path.suffix not in SCANNED_SUFFIXES and not path.name.startswith("Dockerfile"):
            continue
        try:
            yield path.relative_to(ROOT), path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue


def _secret_hits(text):
    return [m.group(0) for m in SECRET_ASSIGN.finditer(text)
            if not PLACEHOLDER.search(m.group(0)) and not m.group(2).startswith("/")  # a path, not a value
            and not re.search(r"\$|\{\{|\(|environ|getenv", m.group(0))]


@pytest.mark.parametrize("sample, rule", [
    ("frontend f\n    bind 10.0.0.10:6379\n", LB_BIND),
    ("listen mysql\n  bind 10.0.0.20:3306\n", LB_BIND),
    ('mysql_ifaces="10.0.0.20:3306"\n', PROXYSQL_IFACE),
])
def test_rules_catch_planted_offences(sample, rule):
    assert rule.search(sample)


def test_secret_rule_catches_planted_secret_and_spares_references():
    assert _secret_hits("REDIS_PASSWORD=Zq8vN2rT5wLk9PmX\n")
    assert _secret_hits('MINIO_ROOT_PASSWORD: "Zq8vN2rT5wLk9PmX"\n')
    assert not _secret_hits('REDIS_PASSWORD="${REDIS_PASSWORD}"\nK3S_TOKEN={{ k3s_token }}\n')


def test_haproxy_and_proxysql_never_bind_load_balancer_addresses():
    hits = [f"{p}: {m.group(0).strip()}" for p, text in _files() if p.suffix != ".md"
            for rule in (LB_BIND, PROXYSQL_IFACE) for m in rule.finditer(text)
            if "tests/" not in str(p)]
    assert hits == []


def test_no_secret_in_any_tracked_file():
    hits = [f"{p}: {h}" for p, text in _files() if not str(p).startswith("tests/") for h in _secret_hits(text)]
    hits += [f"{p}: private key" for p, text in _files() if PRIVATE_KEY.search(text)]
    hits += [f"{p}: .env file tracked" for p, _ in _files() if p.suffix == ".env"]
    assert hits == []


def test_credentials_and_lab_state_are_ignored_by_git():
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "/.lab/" in ignored and ".venv/" in ignored
    assert "*.env" in ignored and "/credentials/" in ignored  # the repo lives in /opt/keybuzz-installer
