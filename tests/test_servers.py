"""servers.tsv validation: every bad input stops `pyinfra inventory.py <deploy>` with one
`<file>:<line>: <reason>` line before any host is contacted."""

from __future__ import annotations

import pytest

from helpers import ROOT, run, write_tsv
from keybuzz.errors import InputError
from keybuzz.servers import load_servers

GOOD_REDIS = [("redis-01", "10.0.2.21", "redis"), ("redis-02", "10.0.2.22", "redis"),
              ("redis-03", "10.0.2.23", "redis")]


def test_production_plan_has_every_host_of_the_design():
    plan = load_servers(ROOT / "servers.tsv")
    names = {s.name: s for s in plan.servers}
    expected_ips = {"haproxy-01": "10.0.0.11", "haproxy-02": "10.0.0.12", "proxysql-01": "10.0.0.173",
                    "proxysql-02": "10.0.0.174", "minio-01": "10.0.0.134", "minio-02": "10.0.0.131",
                    "minio-03": "10.0.0.132", "queue-01": "10.0.0.126", "queue-02": "10.0.0.127",
                    "queue-03": "10.0.0.128"}
    for name, ip in expected_ips.items():
        assert names[name].ip == ip, name
    assert "formerly connect-01" in names["minio-02"].note and "connect-02" in names["minio-03"].note
    assert names["k3s-worker-05"].role == "k3s_workers"
    for role, size in {"redis": 3, "k3s_masters": 3, "k3s_workers": 5, "db": 3, "mariadb": 3}.items():
        assert len(plan.group(role)) == size, role
    assert "install-01" in names
    # addresses the design does not give are marked, never invented
    assert names["redis-01"].ip is None and names["k3s-master-01"].ip is None


BAD_CASES = {
    "column count": ([("redis-01", "10.0.2.21")], 2, "expected 3 or 4 tab-separated columns"),
    "malformed ip": ([("redis-01", "10.0.2.300", "redis")], 2, "malformed IP '10.0.2.300'"),
    "duplicate name": (GOOD_REDIS + [("redis-01", "10.0.2.99", "rabbitmq")], 5, "duplicate host name redis-01"),
    "duplicate ip": (GOOD_REDIS[:2] + [("redis-03", "10.0.2.21", "redis")], 4, "duplicate IP 10.0.2.21"),
    "unknown role": ([("cache-01", "10.0.2.5", "memcached")], 2, "unknown role 'memcached'"),
    "lb 10.0.0.10": ([("haproxy-01", "10.0.0.10", "haproxy")], 2, "address of the private LB"),
    "lb 10.0.0.20": ([("proxysql-01", "10.0.0.20", "proxysql")], 2, "address of the private LB"),
    "lb 10.0.0.5": ([("k3s-master-01", "10.0.0.5", "k3s_masters")], 2, "public K3s LB"),
    "lb 10.0.0.6": ([("k3s-master-01", "10.0.0.6", "k3s_masters")], 2, "public K3s LB"),
    "worker in minio": ([("minio-01", "10.0.2.1", "minio"), ("minio-02", "10.0.2.2", "minio"),
                         ("k3s-worker-05", "10.0.2.3", "minio")], 4, "cannot be in the minio group"),
    "group size": (GOOD_REDIS[:2], 3, "group redis has 2 host(s), the design requires exactly 3"),
    "bad host name": ([("Redis_01", "10.0.2.21", "redis")], 2, "invalid host name"),
    # addresses that are not a server's private address (issue 9 §2): 0.0.0.0 would render `bind 0.0.0.0`
    "unspecified 0.0.0.0": ([("redis-01", "0.0.0.0", "redis")], 2,
                            "0.0.0.0 is the unspecified address (\"any interface\"), not a server's"),
    "loopback": ([("redis-01", "127.0.0.1", "redis")], 2, "127.0.0.1 is a loopback address"),
    "public address": ([("redis-01", "8.8.8.8", "redis")], 2,
                       "8.8.8.8 is outside the private network 10.0.0.0/16 (KEYBUZZ_PRIVATE_NETWORK)"),
    "other private range": ([("redis-01", "192.168.1.21", "redis")], 2, "outside the private network 10.0.0.0/16"),
    "network address": ([("redis-01", "10.0.0.0", "redis")], 2, "10.0.0.0 is the network address of 10.0.0.0/16"),
    "broadcast": ([("redis-01", "10.0.255.255", "redis")], 2, "10.0.255.255 is the broadcast address of 10.0.0.0/16"),
    "gateway": ([("redis-01", "10.0.0.1", "redis")], 2, "10.0.0.1 is the gateway of 10.0.0.0/16"),
    "subnet broadcast": ([("redis-01", "10.0.0.255", "redis")], 2, "10.0.0.255 is the broadcast address of the /24"),
    "subnet network": ([("redis-01", "10.0.3.0", "redis")], 2, "10.0.3.0 is the network address of the /24"),
}


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_servers_file_is_refused_with_file_and_line(tmp_path, case):
    rows, line, reason = BAD_CASES[case]
    tsv = write_tsv(tmp_path / "servers.tsv", rows)
    with pytest.raises(InputError) as err:
        load_servers(tsv)
    assert str(err.value).startswith(f"{tsv}:{line}: "), str(err.value)
    assert reason in str(err.value)


@pytest.mark.parametrize("case", ["malformed ip", "duplicate ip", "lb 10.0.0.10", "group size", "unspecified 0.0.0.0",
                                  "public address"])
def test_pyinfra_stops_before_contacting_any_host(tmp_path, case):
    rows, line, reason = BAD_CASES[case]
    tsv = write_tsv(tmp_path / "servers.tsv", rows)
    result = run(["pyinfra", "-y", "inventory.py", "deploys/redis.py"], env={"KEYBUZZ_SERVERS": str(tsv)})
    assert result.returncode != 0
    err_lines = [x for x in (result.stdout + result.stderr).splitlines() if x.startswith("keybuzz: ")]
    assert err_lines == [f"keybuzz: {tsv}:{line}: " + err_lines[0].split(f":{line}: ", 1)[1]]
    assert reason in err_lines[0]
    assert "Traceback" not in result.stderr
    assert "Connecting" not in result.stdout + result.stderr  # pyinfra never reached its connect step


def test_the_private_network_comes_from_one_place(tmp_path, monkeypatch):
    """KEYBUZZ_PRIVATE_NETWORK (the lab's 172.30.0.0/24) replaces 10.0.0.0/16 for the file check and for the
    deploys (keybuzz.context); a malformed value is itself refused."""
    from keybuzz.context import LayerContext
    from keybuzz.layers import LAYERS
    from keybuzz.servers import private_network

    tsv = write_tsv(tmp_path / "servers.tsv", [("db-01", "172.30.0.31", "db")])
    with pytest.raises(InputError, match="outside the private network 10.0.0.0/16"):
        load_servers(tsv)
    assert [s.ip for s in load_servers(tsv, network="172.30.0.0/24").servers] == ["172.30.0.31"]
    monkeypatch.setenv("KEYBUZZ_PRIVATE_NETWORK", "172.30.0.0/24")
    plan = load_servers(tsv)
    assert [s.ip for s in plan.servers] == ["172.30.0.31"]
    assert str(private_network()) == "172.30.0.0/24" == LayerContext(LAYERS["db"], plan, {}).private_network
    write_tsv(tsv, [("db-01", "172.30.0.1", "db")])
    with pytest.raises(InputError, match=rf"^{tsv}:2: .*172.30.0.1 is the gateway of 172.30.0.0/24"):
        load_servers(tsv)
    for bad in ("10.0.0.0/33", "10.0.0.1/16", "lab", "0.0.0.0/0", "fd00::/64", "127.0.0.0/8", "8.8.8.0/24",
                "10.0.0.0/31"):
        monkeypatch.setenv("KEYBUZZ_PRIVATE_NETWORK", bad)
        with pytest.raises(InputError, match="^KEYBUZZ_PRIVATE_NETWORK: "):
            private_network()
    monkeypatch.delenv("KEYBUZZ_PRIVATE_NETWORK")
    assert str(private_network()) == "10.0.0.0/16"


def test_deploy_touching_a_tbd_host_refuses_naming_it(tmp_path):
    tsv = write_tsv(tmp_path / "servers.tsv", [("redis-01", "TBD", "redis"), *GOOD_REDIS[1:]])
    result = run(["pyinfra", "-y", "inventory.py", "deploys/redis.py"], env={"KEYBUZZ_SERVERS": str(tsv)})
    assert result.returncode != 0
    assert f"{tsv}:2: redis-01 (redis) has no private_ip (TBD)" in result.stderr


def test_tbd_hosts_of_other_roles_do_not_block_a_layer(tmp_path, monkeypatch):
    from keybuzz.inventory import build_groups

    tsv = write_tsv(tmp_path / "servers.tsv", GOOD_REDIS + [("db-01", "TBD", "db")])
    monkeypatch.setenv("KEYBUZZ_SERVERS", str(tsv))
    with pytest.raises(InputError, match="db-01 .db. has no private_ip"):
        build_groups(["pyinfra", "inventory.py", "deploys/base_os.py"])  # base_os touches every host
    known_hosts = tmp_path / "known_hosts"
    monkeypatch.setenv("KEYBUZZ_SSH_KNOWN_HOSTS", str(known_hosts))
    with pytest.raises(InputError, match=f"^{known_hosts}: does not exist"):  # no layer: every host listed
        build_groups(["pyinfra", "inventory.py"])
    key = "AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f"
    known_hosts.write_text("".join(f"{ip} ssh-ed25519 {key}\n" for _, ip, _ in GOOD_REDIS))
    groups = build_groups(["pyinfra", "inventory.py"])  # no layer: TBD hosts left out, never contacted
    assert [h for h, _ in groups["redis"]] == ["redis-01", "redis-02", "redis-03"]
    assert "db" not in groups


def test_unknown_deploy_file_is_refused(tmp_path):
    result = run(["pyinfra", "-y", "inventory.py", "deploys/nosuch.py"])
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["--> pyinfra error: No deploy file: deploys/nosuch.py"]


HAPROXY_WITHOUT_REDIS = [("haproxy-01", "10.0.0.11", "haproxy"), ("haproxy-02", "10.0.0.12", "haproxy"),
                         ("queue-01", "10.0.0.126", "rabbitmq"), ("queue-02", "10.0.0.127", "rabbitmq"),
                         ("queue-03", "10.0.0.128", "rabbitmq"), ("db-01", "10.0.0.51", "db")]


def test_a_layer_whose_rendered_group_is_empty_is_refused_at_preflight(tmp_path):
    """The haproxy layer renders the redis, rabbitmq and db addresses: without redis rows it used to pass
    validation and die later on an IndexError; now one line names the missing group."""
    from keybuzz.inventory import preflight
    from keybuzz.layers import LAYERS

    tsv = write_tsv(tmp_path / "servers.tsv", HAPROXY_WITHOUT_REDIS)
    with pytest.raises(InputError) as err:
        preflight([LAYERS["haproxy"]], load_servers(tsv))
    assert str(err.value) == (f"{tsv}: no host with role redis, and layer haproxy renders the redis hosts' "
                              "addresses into its configuration; add the redis lines (design: 3 hosts)")
    with pytest.raises(InputError, match=f"^{tsv}: no host with role redis, and layer redis deploys to them"):
        preflight([LAYERS["redis"]], load_servers(tsv))
    result = run(["pyinfra", "-y", "inventory.py", "deploys/haproxy.py"], env={"KEYBUZZ_SERVERS": str(tsv)})
    assert result.returncode != 0
    assert [x for x in result.stderr.splitlines() if x.startswith("keybuzz: ")] == [f"keybuzz: {err.value}"]
    assert "Traceback" not in result.stderr and "Connecting" not in result.stdout + result.stderr
