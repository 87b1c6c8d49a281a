"""Redis/Sentinel files as the deploy renders them, the settings it applies at runtime, and the majority rule
(Python side; the shell side is exercised on containers in test_redis_cluster.py)."""

from __future__ import annotations

import pytest

from keybuzz.haproxy.settings import render_update_conf
from keybuzz.redis.settings import (
    MASTER_NAME,
    RedisSettings,
    env_file,
    majority,
    render_redis_conf,
    render_sentinel_conf,
    render_settings_file,
    valid_addr,
)

CANARY = "canary-Zq8vN2rT5wLk9PmX"


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_first_master_has_no_replicaof_and_replicas_follow_it():
    master = render_redis_conf("redis-01", "10.0.0.221 127.0.0.1", CANARY, RedisSettings(), None)
    replica = render_redis_conf("redis-02", "10.0.0.222 127.0.0.1", CANARY, RedisSettings(), "10.0.0.221")
    assert not [line for line in _lines(master) if line.startswith("replicaof")]
    assert "replicaof 10.0.0.221 6379" in _lines(replica)


def test_one_password_for_clients_replication_and_sentinel():
    redis_conf = _lines(render_redis_conf("redis-01", "10.0.0.221", CANARY, RedisSettings(), None))
    sentinel_conf = _lines(render_sentinel_conf("redis-01", "10.0.0.221", CANARY, RedisSettings(), "10.0.0.221"))
    assert f"requirepass {CANARY}" in redis_conf and f"masterauth {CANARY}" in redis_conf
    assert f"requirepass {CANARY}" in sentinel_conf
    assert f"sentinel auth-pass {MASTER_NAME} {CANARY}" in sentinel_conf


def test_sentinel_monitors_keybuzz_master_with_quorum_2_and_the_production_timings():
    conf = _lines(render_sentinel_conf("redis-02", "10.0.0.222", CANARY, RedisSettings(), "10.0.0.221"))
    assert "sentinel monitor keybuzz-master 10.0.0.221 6379 2" in conf
    assert "sentinel down-after-milliseconds keybuzz-master 5000" in conf
    assert "sentinel failover-timeout keybuzz-master 60000" in conf
    assert "sentinel parallel-syncs keybuzz-master 1" in conf
    assert "port 26379" in conf


def test_redis_persists_and_never_refuses_writes_for_lack_of_replicas():
    conf = _lines(render_redis_conf("redis-01", "10.0.0.221", CANARY, RedisSettings(), None))
    assert {"appendonly yes", "dir /data", "min-replicas-to-write 0"} <= set(conf)


def test_settings_list_holds_no_secret_and_every_runtime_setting():
    text = render_settings_file(RedisSettings(down_after_ms=4000))
    assert CANARY not in text and "pass" not in text.lower()
    assert "sentinel down-after-milliseconds 4000" in text
    assert "sentinel quorum 2" in text and "redis min-replicas-to-write 0" in text


def test_host_data_overrides_the_defaults():
    s = RedisSettings.from_host_data({"redis_down_after_ms": 3000})
    assert s.down_after_ms == 3000 and s.failover_timeout_ms == 60000


def test_update_conf_is_not_secret_and_names_every_sentinel():
    text = render_update_conf(["10.0.0.221", "10.0.0.222", "10.0.0.223"], ["10.0.0.221"])
    assert 'SENTINELS="10.0.0.221 10.0.0.222 10.0.0.223"' in text
    assert "PASSWORD" not in text.replace("REDIS_ENV_FILE", "")


def test_env_file_uses_the_standard_variable_name_and_refuses_quotes():
    assert env_file(CANARY) == f"REDIS_PASSWORD='{CANARY}'\n"
    with pytest.raises(ValueError):
        env_file("a'b")


@pytest.mark.parametrize("addr, ok", [
    ("10.0.0.21:6379", True), ("172.30.0.21:6379", True),
    ("", False), (None, False), ("10.0.0.21", False), ("10.0.0.256:6379", False), ("10.0.0:6379", False),
    ("10.0.0.21:0", False), ("10.0.0.21:70000", False), ("redis-01:6379", False), ("10.0.0.21:6379:1", False),
])
def test_valid_addr(addr, ok):
    assert valid_addr(addr) is ok


@pytest.mark.parametrize("answers, expected", [
    (["a", "a", "a"], "a"),
    (["a", "a", None], "a"),  # one Sentinel down
    (["a", None, None], None),  # one voice is not a majority of 3
    (["a", "b", None], None),
    (["a", "b", "c"], None),
    (["a", "a", "b"], "a"),
    ([None, None, None], None),
    (["bad", "bad", "a"], None),  # malformed answers never count
])
def test_majority_of_three(answers, expected):
    named = {"a": "10.0.0.21:6379", "b": "10.0.0.22:6379", "c": "10.0.0.23:6379", "bad": "10.0.0.999:6379"}
    result = majority([named.get(a) if a else None for a in answers], total=3)
    assert result == (named[expected] if expected else None)
