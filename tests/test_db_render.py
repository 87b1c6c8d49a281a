"""The DB layer's rendered files (templates/db/), pure: no Docker."""

from __future__ import annotations

import configparser
import re

import pytest
import yaml

from keybuzz.db.settings import (
    DEFAULT,
    PatroniSecrets,
    render_etcd_env,
    render_haproxy_block,
    render_patroni_yml,
    render_pgbouncer_ini,
    render_pgbouncer_userlist,
    scram_verifier,
)

NODES = [("db-01", "10.0.0.51"), ("db-02", "10.0.0.52"), ("db-03", "10.0.0.53")]
SECRETS = PatroniSecrets("postgres", "s'u\"p:er#1", "replicator", "r:e{p}2", "patroni", "a pi 3")


@pytest.fixture(scope="module")
def patroni():
    return yaml.safe_load(render_patroni_yml("db-02", "10.0.0.52", NODES, SECRETS))


def test_patroni_yml_keys(patroni):
    dcs = patroni["bootstrap"]["dcs"]
    assert patroni["name"] == "db-02" and patroni["scope"] == DEFAULT.scope
    assert dcs["synchronous_mode"] is True and dcs["synchronous_mode_strict"] is False
    assert dcs["failsafe_mode"] is True
    assert (dcs["ttl"], dcs["loop_wait"], dcs["retry_timeout"]) == (DEFAULT.ttl, DEFAULT.loop_wait,
                                                                     DEFAULT.retry_timeout)
    assert dcs["loop_wait"] + 2 * dcs["retry_timeout"] <= dcs["ttl"]
    assert dcs["postgresql"]["use_pg_rewind"] is True
    assert dcs["postgresql"]["parameters"]["wal_log_hints"] == "on"
    assert "data-checksums" in patroni["bootstrap"]["initdb"]


def test_patroni_listens_on_the_private_ip(patroni):
    assert patroni["restapi"]["listen"] == "10.0.0.52:8008"
    assert patroni["restapi"]["connect_address"] == "10.0.0.52:8008"
    assert patroni["postgresql"]["listen"] == "10.0.0.52,127.0.0.1:5432"
    assert patroni["postgresql"]["connect_address"] == "10.0.0.52:5432"
    dumped = yaml.safe_dump(patroni)
    assert "0.0.0.0:" not in dumped and "10.0.0.10:" not in dumped


def test_patroni_etcd_hosts_are_the_three_nodes(patroni):
    assert patroni["etcd3"]["hosts"] == "10.0.0.51:2379,10.0.0.52:2379,10.0.0.53:2379"


def test_patroni_passwords_survive_yaml_quoting(patroni):
    auth = patroni["postgresql"]["authentication"]
    assert auth["superuser"] == {"username": "postgres", "password": SECRETS.superpass}
    assert auth["replication"]["password"] == SECRETS.repl_pass
    assert patroni["restapi"]["authentication"]["password"] == SECRETS.rest_pass


def test_patroni_hba_is_scram_only(patroni):
    hba = patroni["postgresql"]["pg_hba"]
    assert hba and all(line.split()[-1] == "scram-sha-256" for line in hba)
    assert not any("trust" in line or " md5" in line for line in hba)


def test_pgbouncer_ini_parses():
    text = render_pgbouncer_ini("db-01", "10.0.0.51")
    cp = configparser.ConfigParser(inline_comment_prefixes=None, delimiters=("=",))
    cp.read_string(text)
    pgb = cp["pgbouncer"]
    assert pgb["pool_mode"] == DEFAULT.pool_mode == "session"
    assert pgb["auth_type"] == "scram-sha-256"
    assert pgb["listen_addr"] == "10.0.0.51,127.0.0.1" and pgb["listen_port"] == "6432"
    assert pgb["auth_file"] == "/opt/bitnami/pgbouncer/conf/userlist.txt"
    assert not re.search(r"password\s*=", text, re.I)  # no secret in the ini, only in the 0600 auth file
    assert cp["databases"]["*"] == "host=127.0.0.1 port=5432"


def test_userlist_takes_verifiers_only():
    v = scram_verifier("pw")
    assert render_pgbouncer_userlist([("keybuzz", v)]) == f'"keybuzz" "{v}"\n'
    with pytest.raises(ValueError):
        render_pgbouncer_userlist([("keybuzz", "plaintext")])


def test_scram_verifier_shape():
    v = scram_verifier("pw")
    assert re.fullmatch(r"SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]{24}\$[A-Za-z0-9+/=]{44}:[A-Za-z0-9+/=]{44}", v)
    assert v != scram_verifier("pw")  # random salt


def test_etcd_env():
    env = dict(line.split("=", 1) for line in render_etcd_env("db-01", "10.0.0.51", NODES).splitlines()
               if line and not line.startswith("#"))
    assert env["ETCD_INITIAL_CLUSTER"] == ("db-01=http://10.0.0.51:2380,db-02=http://10.0.0.52:2380,"
                                           "db-03=http://10.0.0.53:2380")
    assert env["ETCD_LISTEN_CLIENT_URLS"] == "http://10.0.0.51:2379,http://127.0.0.1:2379"


@pytest.fixture(scope="module")
def haproxy():
    return render_haproxy_block(NODES)


def test_haproxy_fragment_never_binds_the_lb(haproxy):
    binds = re.findall(r"^\s*bind\s+(\S+)", haproxy, re.M)
    assert sorted(binds) == ["0.0.0.0:5432", "0.0.0.0:6432"]
    assert "10.0.0.10" not in haproxy
    assert not re.search(r"^\s*(global|defaults)\b", haproxy, re.M)


def _backend(cfg: str, name: str) -> str:
    m = re.search(rf"^backend {name}\n(.*?)(?=^\S|\Z)", cfg, re.M | re.S)
    assert m, name
    return m.group(1)


@pytest.mark.parametrize("backend,port", [("be_postgres", 5432), ("be_pgbouncer", 6432)])
def test_haproxy_backends_check_patroni_primary(haproxy, backend, port):
    body = _backend(haproxy, backend)
    assert "option httpchk HEAD /primary" in body
    assert "http-check send meth HEAD uri /primary" in body and "http-check expect status 200" in body
    assert "on-marked-down shutdown-sessions" in body
    assert "balance roundrobin" not in body
    servers = re.findall(r"^\s*server (\S+) (\S+) (.*)$", body, re.M)
    assert [(n, a) for n, a, _ in servers] == [(n, f"{ip}:{port}") for n, ip in NODES]
    assert all(rest.strip() == "check" for _, _, rest in servers)
    assert "http-check connect port 8008 linger" in body  # Patroni's REST API, closed without RST
    if backend == "be_pgbouncer":  # /primary on 8008, then PgBouncer itself must accept
        assert "http-check connect port 6432 linger" in body
        assert body.index("connect port 8008") < body.index("expect status 200") < body.index("connect port 6432")
    else:
        assert "6432" not in body


def test_haproxy_check_timings(haproxy):
    for backend in ("be_postgres", "be_pgbouncer"):
        assert (f"inter {DEFAULT.check_inter} fastinter {DEFAULT.check_fastinter} downinter "
                f"{DEFAULT.check_downinter} fall {DEFAULT.check_fall} rise {DEFAULT.check_rise}"
                in _backend(haproxy, backend))
