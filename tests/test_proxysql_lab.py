"""The ProxySQL layer in the lab (marker `lab`), dry only: no registry this project reaches ships ProxySQL, so the
lab cannot run it (keybuzz.lab's `dry_only` notion). `pyinfra --dry` against the lab's proxysql hosts: the deploy
file loads on each, its facts run over SSH on hosts where ProxySQL has never run, and no secret is printed at
-vvv or --debug. tests/test_proxysql_cluster.py does the same against host containers of its own.
"""

from __future__ import annotations

import pytest

from keybuzz import credentials
from keybuzz.lab import lab as lab_module

pytestmark = pytest.mark.lab

PROXYSQL_HOSTS = [h.name for h in lab_module.TOPOLOGY if h.role == "proxysql"]


def _secret_values() -> list[str]:
    values = {}
    for brick in ("proxysql", "mariadb"):
        values |= {k: v.unmask() for k, v in credentials.load(brick).items()}
    return [v for k, v in values.items() if "PASSWORD" in k]


@pytest.mark.parametrize("verbosity", [{"verbose": 3}, {"extra": ("--debug",)}])
def test_dry_run_loads_on_every_proxysql_host_and_prints_no_secret(lab, verbosity):
    extra = ("--dry", *verbosity.get("extra", ()))
    result = lab.deploy("proxysql", verbose=verbosity.get("verbose", 0), extra=extra)
    assert result.ok, result.output[-4000:]
    assert len(PROXYSQL_HOSTS) == 2
    for name in PROXYSQL_HOSTS:
        assert f"[{name}] Ready: deploys/proxysql.py" in result.output
    secrets = _secret_values()
    assert len(secrets) == 5  # admin, app, monitor, and MariaDB's root and SST (which must not even be read out)
    assert not [s for s in secrets if s in result.output]


def test_dry_run_writes_nothing_on_the_hosts(lab):
    result = lab.deploy("proxysql", extra=("--dry",))
    assert result.ok, result.output[-4000:]
    for name in PROXYSQL_HOSTS:
        r = lab.ssh(name, "test -e /opt/keybuzz/proxysql/conf/proxysql.cnf || test -e /usr/local/sbin/keybuzz-proxysql"
                          " && echo present || echo absent")
        assert r.stdout.strip() == "absent", f"{name}: a --dry run left files"
