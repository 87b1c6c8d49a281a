"""The MariaDB Galera layer in the lab (over SSH, as in production): deploy from nothing (maria-01 bootstraps,
the others join), no secret at -vvv, a second run with 0 changes, a node's whole host killed while writing
(0 acknowledged writes lost, it rejoins by itself), then all three hosts killed at once (power cut) and
`invoke layer --name mariadb` alone recovering the cluster from the most advanced node, 0 acknowledged writes
lost, in under 2 minutes. Written by the MariaDB engineer, run by the lead (one lab per machine)."""

from __future__ import annotations

import time

import pytest

from keybuzz import credentials, runner
from keybuzz.lab import lab as lab_module
from keybuzz.layers import LAYERS
from keybuzz.mariadb.client import Writer, connect, count, ensure_table, node_status
from keybuzz.mariadb.settings import DEFAULT
from keybuzz.waiting import wait_for

MARIA_HOSTS = {h.name: h.ip for h in lab_module.TOPOLOGY if h.role == "mariadb"}
S = DEFAULT
RECOVERY_TARGET_S = 120


def _creds() -> dict:
    return {k: v.unmask() for k, v in credentials.load("mariadb").items()}


def _secrets() -> list[str]:
    return [v for k, v in _creds().items() if "PASSWORD" in k]


def _status(ip: str) -> dict | None:
    c = _creds()
    return node_status(ip, c["MARIADB_MONITOR_USER"], c["MARIADB_MONITOR_PASSWORD"])


def _whole() -> bool:
    statuses = [_status(ip) for ip in MARIA_HOSTS.values()]
    return all(s and s["wsrep_cluster_status"] == "Primary" and s["wsrep_local_state_comment"] == "Synced"
               and s["wsrep_cluster_size"] == str(len(MARIA_HOSTS)) for s in statuses)


def _app(ip: str):
    c = _creds()
    return connect(ip, c["MARIADB_APP_USER"], c["MARIADB_APP_PASSWORD"], database=c["MARIADB_APP_USER"])


def _writer(tag: str) -> Writer:
    c = _creds()
    return Writer(list(MARIA_HOSTS.values()), c["MARIADB_APP_USER"], c["MARIADB_APP_PASSWORD"],
                  c["MARIADB_APP_USER"], tag, seconds=240)


def _missing(tag: str, acked: set[int]) -> dict[str, int]:
    result = {}
    for name, ip in MARIA_HOSTS.items():
        with _app(ip) as conn:
            result[name] = len(acked - count(conn, tag))
    return result


@pytest.fixture(scope="module")
def deployed(lab):
    result = lab.deploy("mariadb", verbose=3)
    assert result.ok, result.output[-4000:]
    wait_for(_whole, 120, 1, "3 Galera nodes Synced")
    with _app(next(iter(MARIA_HOSTS.values()))) as conn:
        ensure_table(conn)
    return result


def test_first_deploy_bootstraps_maria_01_and_prints_no_secret_at_vvv(lab, deployed):
    assert "Bring every Galera node into one Primary cluster (now: bootstrap maria-01;" in deployed.output
    for secret in _secrets():
        assert secret not in deployed.output
    for host in MARIA_HOSTS:  # the bootstrap flag never outlives the bootstrap
        assert lab.exec(host, f"ls -A {S.conf_dir}/bootstrap.d").stdout.strip() == ""


def test_second_run_changes_nothing(lab, deployed):
    again = lab.deploy("mariadb", verbose=2)
    assert again.ok and again.changes == 0, again.output[-4000:]
    for secret in _secrets():
        assert secret not in again.output


def test_secret_files_are_owner_only_and_not_in_docker_inspect(lab, deployed):
    for host in MARIA_HOSTS:
        out = lab.exec(host, f"stat -c '%n %u %a' {S.conf_dir}/sst-auth.cnf {S.secrets_dir}/users.sql").stdout
        assert out.split() == [f"{S.conf_dir}/sst-auth.cnf", str(S.uid), "600", f"{S.secrets_dir}/users.sql", "0",
                               "600"], out
        inspect = lab.exec(host, "docker inspect mariadb; cat /etc/systemd/system/mariadb.service").stdout
        for secret in _secrets():
            assert secret not in inspect


def test_galera_ports_listen_on_the_private_address_only(lab, deployed):
    for host, ip in MARIA_HOSTS.items():
        listening = lab.exec(host, "ss -Hltn").stdout
        # group communication listens all the time; IST (and SST) only while a node receives a transfer
        assert f"{ip}:{S.gcomm_port}" in listening, listening
        for port in (S.gcomm_port, S.ist_port, S.sst_port):
            assert f"0.0.0.0:{port}" not in listening and f"*:{port}" not in listening, listening
        assert f"{ip}:{S.port}" in listening and f"127.0.0.1:{S.port}" in listening
        assert f"0.0.0.0:{S.port}" not in listening and f"*:{S.port}" not in listening


def test_diag_is_green(lab, deployed):
    with lab.lab_environ():
        [report] = runner.run_checks(LAYERS["mariadb"], ("diag",))
    assert report.ok, str(report)


def test_node_host_killed_while_writing_loses_nothing_and_rejoins(lab, deployed):
    wait_for(_whole, 120, 1, "3 Galera nodes Synced")
    victim = list(MARIA_HOSTS)[-1]
    writer = _writer(f"lab-kill-{int(time.time())}").start()
    try:
        wait_for(lambda: len(writer.acked) >= 50, 30, 0.2, "writes before the kill")
        lab.kill_host(victim)
        at = len(writer.acked)  # the two others keep accepting while the third is gone
        wait_for(lambda: len(writer.acked) >= at + 50, 60, 0.2, "writes acknowledged with one node down")
    finally:
        writer.stop()
    lab.start_host(victim)
    wait_for(_whole, 240, 2, f"{victim} back in the cluster (systemd restarts mariadb; IST)")
    assert _missing(writer.tag, writer.acked) == {n: 0 for n in MARIA_HOSTS}


def test_failover_check(lab, deployed):
    wait_for(_whole, 240, 2, "3 Galera nodes Synced")
    with lab.lab_environ():
        [report] = runner.run_checks(LAYERS["mariadb"], ("failover",))
    assert report.ok, str(report)


def test_full_outage_is_recovered_by_the_layer_alone(lab, deployed):
    wait_for(_whole, 240, 2, "3 Galera nodes Synced")
    writer = _writer(f"lab-outage-{int(time.time())}").start()
    try:
        wait_for(lambda: len(writer.acked) >= 50, 30, 0.2, "writes before the outage")
        for host in MARIA_HOSTS:  # power cut of the three servers, as close together as the lab allows
            lab.kill_host(host)
    finally:
        writer.stop()
    for host in MARIA_HOSTS:
        lab.start_host(host)
    started = time.monotonic()
    result = lab.deploy("mariadb", verbose=1)
    assert result.ok, result.output[-4000:]
    wait_for(_whole, max(5.0, RECOVERY_TARGET_S - (time.monotonic() - started)), 1, "the cluster recovered")
    elapsed = time.monotonic() - started
    print(f"full outage: recovered by the layer in {elapsed:.0f}s, {len(writer.acked)} acknowledged writes")
    assert elapsed < RECOVERY_TARGET_S
    assert _missing(writer.tag, writer.acked) == {n: 0 for n in MARIA_HOSTS}
    again = lab.deploy("mariadb")
    assert again.ok and again.changes == 0, again.output[-3000:]
