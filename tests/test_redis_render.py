"""Redis/Sentinel files as the deploy renders them, the settings it applies at runtime, and the majority rule
(Python side; the shell side is exercised on containers in test_redis_cluster.py)."""

from __future__ import annotations

import pytest

from keybuzz.haproxy.settings import render_update_conf
from keybuzz.redis.settings import (
    MASTER_NAME,
    ROLES,
    Login,
    RedisSettings,
    env_file,
    logins,
    majority,
    render_redis_acl,
    render_redis_conf,
    render_sentinel_acl,
    render_sentinel_conf,
    render_settings_file,
    valid_addr,
)

CANARY = "canary-Zq8vN2rT5wLk9PmX"
# one distinct canary password per role, as credentials/redis.env has
USERS = {role: Login(None if role == "app" else f"kb-{role}", f"{CANARY}-{role}") for role in ROLES}
REPLICATION, SENTINEL = USERS["replication"], USERS["sentinel"]


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_first_master_has_no_replicaof_and_replicas_follow_it():
    master = render_redis_conf("redis-01", "10.0.0.221 127.0.0.1", REPLICATION, RedisSettings(), None)
    replica = render_redis_conf("redis-02", "10.0.0.222 127.0.0.1", REPLICATION, RedisSettings(), "10.0.0.221")
    assert not [line for line in _lines(master) if line.startswith("replicaof")]
    assert "replicaof 10.0.0.221 6379" in _lines(replica)


def test_each_config_file_holds_only_the_password_of_its_own_job():
    """Replicas log in as the replication user, Sentinel as the Sentinel user; users come from users.acl
    (hashes); no requirepass (the `default` user is the applications', defined in users.acl)."""
    redis_conf = _lines(render_redis_conf("redis-01", "10.0.0.221", REPLICATION, RedisSettings(), None))
    sentinel_conf = _lines(render_sentinel_conf("redis-01", "10.0.0.221", SENTINEL, RedisSettings(), "10.0.0.221"))
    assert {"aclfile /conf/users.acl", f"masteruser {REPLICATION.user}", f"masterauth {REPLICATION.password}"} \
        <= set(redis_conf)
    assert {"aclfile /sentinel/users.acl", f"sentinel sentinel-user {SENTINEL.user}",
            f"sentinel sentinel-pass {SENTINEL.password}", f"sentinel auth-user {MASTER_NAME} {SENTINEL.user}",
            f"sentinel auth-pass {MASTER_NAME} {SENTINEL.password}"} <= set(sentinel_conf)
    for text in (redis_conf, sentinel_conf):
        assert not [line for line in text if line.startswith("requirepass")]
    others = [u.password for role, u in USERS.items() if role not in ("replication",)]
    assert not [p for p in others if p in "\n".join(redis_conf)]
    others = [u.password for role, u in USERS.items() if role not in ("sentinel",)]
    assert not [p for p in others if p in "\n".join(sentinel_conf)]


def _acl(text: str) -> dict[str, list[str]]:
    """users.acl parsed: user -> its rule words (the `on` flag and the hash included)."""
    users = {}
    for line in _lines(text):
        word, user, *rules = line.split()
        assert word == "user"
        users[user] = rules
    return users


def test_acl_files_hold_hashes_never_a_password():
    for text in (render_redis_acl(USERS), render_sentinel_acl(USERS)):
        assert CANARY not in text
        assert all(rule.startswith("#") and len(rule) == 65 for rules in _acl(text).values()
                   for rule in rules if rule.startswith(("#", ">")))
        assert not [r for rules in _acl(text).values() for r in rules if r.startswith(">")]


def test_applications_get_data_commands_only_and_haproxy_hosts_two_queries():
    redis_users = _acl(render_redis_acl(USERS))
    assert set(redis_users) == {"default", "kb-admin", "kb-replication", "kb-sentinel", "kb-haproxy"}
    assert redis_users["default"][2:] == ["~*", "&*", "+@all", "-@dangerous", "+info"]
    assert redis_users["kb-haproxy"][2:] == ["resetchannels", "-@all", "+role", "+ping"]
    assert redis_users["kb-replication"][2:] == ["resetchannels", "-@all", "+psync", "+replconf", "+ping"]
    sentinel_users = _acl(render_sentinel_acl(USERS))
    assert sentinel_users["default"] == ["off"]  # REDIS_PASSWORD opens nothing on a Sentinel
    assert sentinel_users["kb-haproxy"][2:] == ["resetchannels", "&+switch-master", "-@all", "+ping", "+subscribe",
                                                "+sentinel|get-master-addr-by-name"]
    assert "kb-replication" not in sentinel_users


def test_logins_come_from_the_redis_brick_variables():
    secrets = {"REDIS_PASSWORD": "a", "REDIS_ADMIN_USER": "adm", "REDIS_ADMIN_PASSWORD": "b",
               "REDIS_REPLICATION_USER": "rep", "REDIS_REPLICATION_PASSWORD": "c", "REDIS_SENTINEL_USER": "sen",
               "REDIS_SENTINEL_PASSWORD": "d", "REDIS_HAPROXY_USER": "hap", "REDIS_HAPROXY_PASSWORD": "e"}
    got = logins(secrets)
    assert (got["app"].user, got["app"].password) == (None, "a")
    assert (got["haproxy"].user, got["haproxy"].password) == ("hap", "e")
    assert repr(got["haproxy"]) == "Login(user='hap', password=***)"  # never printed by a repr


def test_sentinel_monitors_keybuzz_master_with_quorum_2_and_the_production_timings():
    conf = _lines(render_sentinel_conf("redis-02", "10.0.0.222", SENTINEL, RedisSettings(), "10.0.0.221"))
    assert "sentinel monitor keybuzz-master 10.0.0.221 6379 2" in conf
    assert "sentinel down-after-milliseconds keybuzz-master 5000" in conf
    assert "sentinel failover-timeout keybuzz-master 60000" in conf
    assert "sentinel parallel-syncs keybuzz-master 1" in conf
    assert "port 26379" in conf


def test_redis_persists_and_never_refuses_writes_for_lack_of_replicas():
    conf = _lines(render_redis_conf("redis-01", "10.0.0.221", REPLICATION, RedisSettings(), None))
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


def test_each_host_env_file_holds_its_one_login_and_never_the_applications_password():
    assert env_file(USERS["haproxy"], "haproxy") == (f"REDIS_HAPROXY_USER='kb-haproxy'\n"
                                                     f"REDIS_HAPROXY_PASSWORD='{CANARY}-haproxy'\n")
    assert env_file(USERS["admin"], "admin").startswith("REDIS_ADMIN_USER='kb-admin'\n")
    with pytest.raises(ValueError):
        env_file(USERS["app"], "app")
    with pytest.raises(ValueError):
        env_file(Login("kb-haproxy", "a'b"), "haproxy")


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


# ---------------------------------------------------------------- issue 10 §2 and §4 (shell side: cluster tests)

def test_redis_unit_runs_the_start_gate_before_the_container_and_includes_its_answer():
    from keybuzz.redis.settings import REDIS_COMMAND, START_GATE
    from keybuzz.render import render

    unit = render("common/container.service.j2", name="redis", image="redis:7.2.5-alpine", command=REDIS_COMMAND,
                  run_args=["-v", "/opt/keybuzz/redis/conf:/conf"], reload=None, description="d", stop_timeout=30,
                  pre_start=[START_GATE])
    lines = unit.splitlines()
    pre = [i for i, line in enumerate(lines) if line.startswith("ExecStartPre=")]
    start = next(i for i, line in enumerate(lines) if line.startswith("ExecStart="))
    assert [lines[i] for i in pre] == ["ExecStartPre=-/usr/bin/docker rm -f redis", f"ExecStartPre={START_GATE}"]
    assert pre[-1] < start  # a failing gate (no "-" prefix) fails the start: Redis never starts on a guess
    assert lines[start].endswith("redis-server /conf/redis.conf --include /conf/replication.conf")
    # without pre_start the unit of every other layer is unchanged
    assert "ExecStartPre=" + START_GATE not in render(
        "common/container.service.j2", name="x", image="i", command="", run_args=[], reload=None, description="d",
        stop_timeout=30)


def test_start_gate_settings_refuse_values_that_would_run_as_shell():
    from keybuzz.redis.settings import render_start_gate_conf

    text = render_start_gate_conf(["10.0.0.21", "10.0.0.22"], "10.0.0.22", "redis:7.2.5-alpine")
    assert 'SENTINELS="10.0.0.21 10.0.0.22"' in text and 'ME="10.0.0.22"' in text and CANARY not in text
    with pytest.raises(ValueError):
        render_start_gate_conf(["10.0.0.21"], "10.0.0.21", "redis:$(reboot)")


def test_the_update_script_documents_distinct_exit_codes_and_its_unit_hides_none():
    from keybuzz import ROOT

    script = (ROOT / "templates/haproxy/redis-update-master.sh").read_text()
    header = script.split("\nset -u")[0]
    for code, meaning in (("3", "no majority"), ("5", "lock busy"), ("6", "not a master"), ("7", "reload failed")):
        assert f"#   {code} {meaning}" in header
        assert f"return {code}" in script or f"finish {code}" in script
    unit = (ROOT / "templates/haproxy/redis-update-master.service").read_text()
    assert "SuccessExitStatus" not in unit and "Environment=FAIL_AFTER=60" in unit
    code = [line for line in script.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in code if "/tmp" in line]  # temporary files live in the root-only /run dir
    assert all('-p "$RUN_DIR"' in line or '"$HAPROXY_CFG.' in line for line in code if "mktemp" in line)


def test_the_deploy_installs_haproxy_cfg_under_the_scripts_lock():
    from keybuzz import ROOT
    from keybuzz.haproxy.settings import UPDATE_LOCK, UPDATE_RUN_DIR

    script = (ROOT / "templates/haproxy/redis-update-master.sh").read_text()
    assert f"RUN_DIR=${{RUN_DIR:-{UPDATE_RUN_DIR}}}" in script and "LOCK_FILE=${LOCK_FILE:-$RUN_DIR/lock}" in script
    assert UPDATE_LOCK == f"{UPDATE_RUN_DIR}/lock"
    assert "lock=UPDATE_LOCK" in (ROOT / "deploys/haproxy.py").read_text()
