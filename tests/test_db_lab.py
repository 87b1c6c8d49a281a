"""The DB layer in the lab (over SSH, as in production): deploy from nothing, second run 0 changes, no secret
at -vvv, diag green through the load-balancer stand-in, the primary's whole host killed while a client commits
through the LB: 0 acknowledged commits lost, the old primary returns as a replica."""

from __future__ import annotations

import time

import pytest

from keybuzz import credentials, runner
from keybuzz.db import client
from keybuzz.db.settings import DEFAULT
from keybuzz.lab import lab as lab_module
from keybuzz.layers import LAYERS
from keybuzz.waiting import wait_for

DB_HOSTS = {h.name: h.ip for h in lab_module.TOPOLOGY if h.role == "db"}
S = DEFAULT


def _creds() -> dict:
    return {k: v.unmask() for k, v in credentials.load("postgres").items()}


def _app(port: int) -> client.Endpoint:
    c = _creds()
    return client.Endpoint(lab_module.LB_IP, port, c["POSTGRES_APP_USER"], c["POSTGRES_APP_PASS"],
                           c["POSTGRES_APP_USER"])


def _view() -> dict:
    return client.cluster_any(list(DB_HOSTS.values()))


def _whole() -> bool:
    view = _view()
    running = [m for m in view["members"] if m.get("state") in ("running", "streaming")]
    return bool(client.primary_name(view)) and len(running) == len(DB_HOSTS) and bool(client.sync_standbys(view))


def _primary_through(port: int) -> bool:
    return client.in_recovery(_app(port), timeout=2) is False


@pytest.fixture(scope="module")
def deployed(lab):
    """The DB layer deployed once at -vvv, then the HAProxy layer (which fronts it)."""
    results = {name: lab.deploy(name, verbose=3 if name == "db" else 0) for name in ("db", "haproxy")}
    for name, r in results.items():
        assert r.ok, f"layer {name} failed:\n{r.output[-4000:]}"
    for port in (S.pg_port, S.pgbouncer_port):
        wait_for(lambda p=port: _primary_through(p), 60, 1, f"the primary through the LB on {port}")
    return results


def test_first_deploy_prints_no_secret_at_vvv(lab, deployed):
    secrets = [v for k, v in _creds().items() if "PASS" in k]
    for name, r in deployed.items():
        for secret in secrets:
            assert secret not in r.output, f"a postgres.env password printed by layer {name}"


def test_diag_is_green(lab, deployed):
    with lab.lab_environ():
        [report] = runner.run_checks(LAYERS["db"], ("diag",))
    assert report.ok, str(report)


def test_second_run_changes_nothing_and_prints_no_secret(lab, deployed):
    again = lab.deploy("db", verbose=2)
    assert again.ok and again.changes == 0, again.output[-4000:]
    for k, secret in _creds().items():
        if "PASS" in k:
            assert secret not in again.output, k


def test_secret_files_are_owner_only_on_the_db_hosts(lab, deployed):
    for host in DB_HOSTS:
        out = lab.exec(host, f"stat -c '%n %u %a' {S.config_dir}/patroni.yml {S.pgbouncer_dir}/userlist.txt").stdout
        assert out.split() == [f"{S.config_dir}/patroni.yml", str(S.postgres_uid), "600",
                               f"{S.pgbouncer_dir}/userlist.txt", str(S.pgbouncer_uid), "600"], out
        inspect = lab.exec(host, "docker inspect patroni pgbouncer etcd").stdout
        for k, secret in _creds().items():
            if "PASS" in k:
                assert secret not in inspect, f"{k} in docker inspect on {host}"


def test_primary_host_killed_while_writing_loses_no_commit_and_returns_as_replica(lab, deployed):
    wait_for(_whole, 120, 1, "3 members, a leader and a sync standby")
    leader = client.primary_name(_view())
    with client.ProbeWriter(_app(S.pg_port), interval=0.05, seconds=240) as probe:
        wait_for(lambda: probe.acked_count() >= 20, 30, 0.1, "commits through the LB before the kill")
        t_kill = time.monotonic()
        lab.kill_host(leader)
        wait_for(lambda: probe.acked_since(t_kill) >= 20, 120, 0.2, "commits through the LB after the kill")
    acked_before = probe.acked_before(t_kill)
    gap = probe.gap_after(t_kill)
    lost = probe.lost(_app(S.pg_port))
    print(f"primary {leader} host killed: write gap {gap:.2f} s, {probe.acked_count()} acknowledged, {lost} lost")
    assert acked_before > 0 and probe.acked_since(t_kill) > 0
    assert lost == 0
    assert gap <= 120
    lab.start_host(leader)
    try:
        wait_for(_whole, 240, 2, "the old primary back in the cluster")
        members = {m["name"]: m for m in _view()["members"]}
        assert members[leader]["role"] in ("replica", "sync_standby"), members[leader]
        old = client.Endpoint(DB_HOSTS[leader], S.pg_port, _creds()["POSTGRES_APP_USER"],
                              _creds()["POSTGRES_APP_PASS"], _creds()["POSTGRES_APP_USER"])
        assert client.in_recovery(old) is True
    finally:
        again = lab.deploy("db")
    assert again.ok, again.output[-3000:]


def test_failover_check_switches_over_without_losing_a_commit(lab, deployed):
    wait_for(_whole, 240, 2, "3 members, a leader and a sync standby")
    with lab.lab_environ():
        [report] = runner.run_checks(LAYERS["db"], ("failover",))
    assert report.ok, str(report)
    assert report.metrics["lost"] == 0 and report.metrics["acked"] > 0


def test_db_ports_answer_on_the_private_side_only(lab, deployed):
    ports = (S.pg_port, S.pgbouncer_port, S.api_port, S.etcd_client_port)
    wanted = {(ip, p) for ip in DB_HOSTS.values() for p in ports}
    # a host killed by an earlier test may still be bringing its services back: wait (bounded) for them
    wait_for(lambda: wanted <= set(lab.answering(sorted(wanted), timeout=2)), 120, 2, "db ports on the private side")
    public = lab.exposure()[1]
    assert public == [], f"answering on the public side: {public}"
