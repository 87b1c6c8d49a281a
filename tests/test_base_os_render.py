"""The base OS layer's kernel settings file as deploys/base_os.py renders it (pure): it gives Redis what Redis checks
at start (without it Redis logs a WARNING, and a background save may fail under memory pressure)."""

from __future__ import annotations

from helpers import ROOT
from keybuzz.base_os.settings import SYSCTL_FILE, SYSCTLS
from keybuzz.redis.settings import Login, RedisSettings, render_redis_conf
from keybuzz.render import render

REDIS_DEFAULT_TCP_BACKLOG = 511  # redis.conf's default: Redis warns when net.core.somaxconn is lower


def _settings(text: str, sep: str) -> dict[str, str]:
    pairs = (line.split(sep, 1) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def test_the_sysctl_file_the_deploy_writes_sets_what_redis_needs():
    deploy = (ROOT / "deploys" / "base_os.py").read_text()
    assert 'template("base_os/sysctl.conf.j2", SYSCTL_FILE, sysctls=SYSCTLS)' in deploy  # what is rendered below
    sysctls = _settings(render("base_os/sysctl.conf.j2", sysctls=SYSCTLS), " = ")
    assert sysctls["vm.overcommit_memory"] == "1"  # Redis: "overcommit_memory is set to 0! Background save may fail"
    redis_conf = render_redis_conf("redis-01", "10.0.0.221", Login("kb-replication", "x"), RedisSettings(), None)
    backlog = int(_settings(redis_conf, " ").get("tcp-backlog", REDIS_DEFAULT_TCP_BACKLOG))
    assert int(sysctls["net.core.somaxconn"]) >= backlog  # Redis: "The TCP backlog setting ... cannot be enforced"
    assert SYSCTL_FILE.startswith("/etc/sysctl.d/") and SYSCTL_FILE.endswith(".conf")  # systemd-sysctl, at boot
