"""The lab and the base OS layer.

Fast tests (no marker): the lab's generated plan, LB config and the base OS templates.
End-to-end (marker `lab`, `pytest -m lab`): the lab comes up from nothing with the base OS layer
deployed, a second base OS run changes nothing, every host answers over SSH with what the layer
promises, hosts pull from the lab registry, the LB stand-in is valid, dockerd can be killed and a
host stopped/started; the session fixture then takes the lab down and fails on any leftover.
"""

from __future__ import annotations

import ipaddress
import json
import socket

import pytest

from keybuzz.base_os.settings import NO_DOCKER_ROLES
from keybuzz.lab import lab as lab_module
from keybuzz.layers import data_dirs
from keybuzz.render import render
from keybuzz.servers import DEFAULT_PRIVATE_NETWORK, load_servers
from keybuzz.versions import image, load_versions
from keybuzz.waiting import wait_for

LAB_NET = ipaddress.ip_network(lab_module.SUBNET)


# --- fast tests ------------------------------------------------------------------------------------


def test_lab_plan_is_valid_and_stays_on_the_lab_network(tmp_path):
    path = tmp_path / "servers.tsv"
    path.write_text(lab_module.servers_tsv())
    # the production validation: header, roles, group sizes, LB addresses
    plan = load_servers(path, network=lab_module.SUBNET)
    production = load_servers(network=DEFAULT_PRIVATE_NETWORK)
    for s in plan.servers:
        address = ipaddress.ip_address(s.ip)
        assert address in LAB_NET and address not in ipaddress.ip_network("10.0.0.0/8"), s
        assert production.get(s.name).role == s.role, f"{s.name} has its production role"
        prod_ip = production.get(s.name).ip
        if prod_ip:  # same last octet as production where production has an address
            assert s.ip.rsplit(".", 1)[1] == prod_ip.rsplit(".", 1)[1], s
    assert {s.name for s in plan.servers} >= {"haproxy-01", "haproxy-02", "redis-01", "redis-02", "redis-03",
                                               "queue-01", "queue-02", "queue-03"}
    reserved = {lab_module.GATEWAY, lab_module.REGISTRY_IP, lab_module.LB_IP}
    assert not reserved & {s.ip for s in plan.servers}


def test_lab_env_points_at_lab_files_and_lb():
    env = lab_module.env()
    assert env["KEYBUZZ_LB_ADDRESS"] == lab_module.LB_IP
    assert env["KEYBUZZ_SERVERS"].endswith(".lab/servers.tsv")
    assert env["KEYBUZZ_VERSIONS"].endswith("lab/versions.lab.yaml")
    load_versions(override=env["KEYBUZZ_VERSIONS"])  # the lab's pins pass the production validation


def test_lb_standin_balances_every_lb_port_to_both_haproxy_hosts():
    cfg = lab_module.lb_config()
    haproxy = [h for h in lab_module.TOPOLOGY if h.role == "haproxy"]
    for port in (5432, 6432, 6379, 5672):
        assert f"bind :{port}\n" in cfg
        for h in haproxy:
            assert f"server {h.name} {h.ip}:{port} check" in cfg
    config_lines = [line for line in cfg.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in config_lines if "10." in line], "the lab never targets a 10.x address"


def test_hosts_block_names_every_host_and_the_minio_names_of_design_b():
    plan = load_servers(network=DEFAULT_PRIVATE_NETWORK)  # production plan
    block = render("base_os/hosts.j2", servers=[(s.name, s.ip) for s in plan.servers if s.ip],
                   minio=[s.name for s in plan.group("minio")])
    lines = block.strip().splitlines()
    assert lines[0].startswith("# BEGIN KEYBUZZ HOSTS") and lines[-1].startswith("# END KEYBUZZ HOSTS")
    names = {}
    for line in lines[1:-1]:
        ip, *aliases = line.split()
        for alias in aliases:
            names[alias] = ip
    assert names["minio-01.keybuzz.io"] == "10.0.0.134"
    assert names["minio-02.keybuzz.io"] == "10.0.0.131"
    assert names["minio-03.keybuzz.io"] == "10.0.0.132"
    assert names["s3.keybuzz.io"] == "10.0.0.134"  # §B: s3.keybuzz.io points to minio-01
    assert names["haproxy-01"] == "10.0.0.11" and names["queue-03"] == "10.0.0.128"
    assert "install-01" not in names  # no address yet: not named


@pytest.mark.parametrize("versions_file", [None, "lab"])
def test_daemon_json_is_valid_json_with_the_registry_settings(versions_file):
    override = lab_module.env()["KEYBUZZ_VERSIONS"] if versions_file == "lab" else ""
    v = load_versions(override=override)
    text = render("base_os/daemon.json.j2", insecure_registries=v["insecure_registries"],
                  registry_mirror=v["registry_mirror"] or "")
    conf = json.loads(text)
    assert conf["insecure-registries"] == v["insecure_registries"]
    if versions_file == "lab":
        assert lab_module.REGISTRY in conf["insecure-registries"]
    mirrored = json.loads(render("base_os/daemon.json.j2", insecure_registries=["m:5000"], registry_mirror="m:5000"))
    assert mirrored["registry-mirrors"] == ["http://m:5000"]


def test_lab_comes_up_from_nothing_with_base_os_green(lab_session):
    row = {r.layer: r for r in lab_session.rows}["base_os"]
    assert row.deploy_ok and row.green
    assert row.changes > 0, "a lab from nothing needs the base OS layer to change things"
    states = {r["name"]: r["state"] for r in lab_session.module.status()}
    assert set(states.values()) == {"running"}, states
    print(f"lab up (base_os included) took {lab_session.up_seconds:.0f} s")


def test_base_os_second_run_changes_nothing(lab):
    result = lab.deploy("base_os")
    assert result.ok, result.output[-3000:]
    assert result.changes == 0, result.output[-3000:]


HOST_CHECK = r"""
echo "hostname=$(hostname)"
echo "docker_active=$(systemctl is-active docker.service)"
echo "docker_version=$(docker version --format '{{.Server.Version}}')"
echo "docker_hold=$(apt-mark showhold | grep -cx docker.io)"
echo "docker_pinned=$(grep -c '^Pin-Priority: 990$' /etc/apt/preferences.d/keybuzz-docker.io)"
echo "nft_table=$(nft list tables | grep -c 'inet keybuzz')"
echo "timesyncd_enabled=$(systemctl is-enabled systemd-timesyncd.service)"
echo "insecure=$(docker info --format '{{json .RegistryConfig.IndexConfigs}}' | grep -c "$REGISTRY")"
echo "sysctl_file=$(grep -c '^vm.overcommit_memory = 1$' /etc/sysctl.d/60-keybuzz.conf)"
echo "datadir=$(stat -c '%U:%G:%a' /opt/keybuzz/$DATADIR)"
echo "hosts_block=$(sed -n '/^# BEGIN KEYBUZZ HOSTS/,/^# END KEYBUZZ HOSTS/p' /etc/hosts | grep -c "^$NETWORK_PREFIX")"
echo "resolves=$(for n in haproxy-02 redis-03 queue-01; do getent hosts $n | awk 'NR==1{printf "%s ", $1}'; done)"
"""


def test_every_host_answers_over_ssh_with_the_base_os_in_place(lab):
    versions = load_versions(override=lab.env()["KEYBUZZ_VERSIONS"])
    # docker.io=20.10.24+dfsg1-1+deb12u1+b6 -> dockerd reports 20.10.24+dfsg1
    engine = versions["docker_engine_package"].split("=", 1)[1].split("-", 1)[0]
    prefix = lab.SUBNET.rsplit(".", 1)[0] + "."
    for h in lab.TOPOLOGY:
        result = lab.ssh(h.name, f"DATADIR={data_dirs(h.role)[0]} REGISTRY={lab.REGISTRY} NETWORK_PREFIX={prefix}\n"
                                 f"{HOST_CHECK}")
        assert result.returncode == 0, f"{h.name}: ssh failed: {result.stderr}"
        facts = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
        docker = h.role not in NO_DOCKER_ROLES  # K3s nodes: no Docker (K3s brings containerd)
        assert facts == {
            "hostname": h.name,
            "docker_active": "active" if docker else "inactive",
            "docker_version": engine if docker else "",
            "docker_hold": "0",  # the apt preferences pin, not a hold (security rebuilds stay possible)
            "docker_pinned": "1" if docker else "",
            "nft_table": "1",
            "timesyncd_enabled": "enabled",
            "insecure": "1" if docker else "0",
            "sysctl_file": "1",
            "datadir": "root:root:755",
            "hosts_block": str(len(lab.TOPOLOGY)),
            "resolves": " ".join(lab.host(n).ip for n in ("haproxy-02", "redis-03", "queue-01")) + " ",
        }, h.name


def test_hosts_pull_service_images_from_the_lab_registry(lab):
    versions = load_versions(override=lab.env()["KEYBUZZ_VERSIONS"])
    ref = image(versions, "redis_image")
    assert ref.startswith(lab.REGISTRY + "/"), ref
    result = lab.ssh("redis-01", f"docker pull -q {ref} && docker image inspect -f ok {ref}", timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr


def test_lb_standin_config_is_valid_and_listens(lab):
    check = lab._run(["docker", "exec", lab.LB_CONTAINER, "haproxy", "-c", "-f",
                      "/usr/local/etc/haproxy/haproxy.cfg"], check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    for port in lab.LB_PORTS:
        with socket.create_connection((lab.LB_IP, port), timeout=5):
            pass


def test_dockerd_can_be_killed_and_a_host_stopped_and_started(lab):
    def docker_pid(host: str) -> int:
        out = lab.exec(host, "systemctl show -p MainPID --value docker.service").stdout.strip()
        return int(out or 0)

    killed = lab.kill_dockerd("redis-03")
    # systemd restarts it (Restart=always)
    wait_for(lambda: docker_pid("redis-03") not in (0, killed), 60, 0.5, what="dockerd back on redis-03")

    lab.stop_host("queue-03")
    assert {r["name"]: r["state"] for r in lab.status()}["queue-03"] == "exited"
    assert lab.ssh("queue-03", "true", timeout=30).returncode != 0
    lab.start_host("queue-03")  # waits for sshd
    after = lab.ssh("queue-03", "hostname && systemctl is-active docker.service")
    assert after.returncode == 0 and after.stdout.split() == ["queue-03", "active"], after.stderr


def test_a_restarted_lab_host_gets_its_hosts_block_back_from_the_next_base_os_run(lab):
    """README (the lab's differences): Docker gives a restarted host container a fresh /etc/hosts; the next base OS
    run writes the block again, and that block is the only thing the run changes."""
    block = "sed -n '/^# BEGIN KEYBUZZ HOSTS/,/^# END KEYBUZZ HOSTS/p' /etc/hosts | grep -c keybuzz.io"
    assert int(lab.exec("queue-02", block).stdout.strip() or 0) > 0  # the block is there before
    lab.stop_host("queue-02")
    lab.start_host("queue-02")
    assert lab.exec("queue-02", block).stdout.strip() == "0", "Docker kept /etc/hosts across a restart"
    result = lab.deploy("base_os", extra=("--limit", "queue-02"))
    assert result.ok, result.output[-3000:]
    assert int(lab.exec("queue-02", block).stdout.strip() or 0) > 0, "no hosts block after the base OS run"
    changed = [line for line in result.output.split("--> Results:")[-1].splitlines()
               if line.strip() and not line.split()[0].startswith(("Operation", "Grand"))]
    assert result.changes == 1, changed


def test_the_public_side_is_closed_and_ssh_answers_on_the_private_side(lab):
    """Issue 9: every host has a second interface standing for its public address; the base OS firewall
    drops everything there (SSH included) while the private network keeps SSH."""
    private, public = lab.exposure()
    assert public == [], f"answering on the public side: {public}"
    assert {(h.ip, 22) for h in lab.TOPOLOGY} <= set(private), private
    rules = lab.exec("redis-01", "nft list table inet keybuzz").stdout
    assert "policy drop" in rules and lab.SUBNET in rules, rules
