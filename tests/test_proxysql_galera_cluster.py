"""The writer choice ProxySQL's Galera rules make (keybuzz.proxysql.admin.expected_writer), read from a real
Galera node (marker `containers`): MariaDB 10.11 + galera-4 from the lab's MariaDB stand-in image (the MariaDB
layer's lab/images/mariadb-galera), one node bootstrapped alone on this test's bridge. The state is read with
ProxySQL 2.6.4's own health-check query as a monitor user holding only USAGE + REPLICATION CLIENT (the grants the
MariaDB layer gives it), and each wsrep condition ProxySQL acts on is set for real on the node.

ProxySQL itself is not here (no registry ships it): this proves the query runs on MariaDB 10.11 with those
grants and that the decision encoded from ProxySQL's source matches what the node reports. The three-node kill
scenario runs against keybuzz.mariadb.testbed once both halves are merged (NOTES.proxysql.md).
"""

from __future__ import annotations

import secrets
import subprocess

import pytest

from keybuzz.lab import images
from keybuzz.proxysql.admin import expected_writer, read_node_state
from keybuzz.waiting import wait_for

pytestmark = pytest.mark.containers

PREFIX = "keybuzz-proxysql-test-"
NETWORK = f"{PREFIX}galera-net"
SUBNET = "192.168.241.0/24"  # not the dry-run test's bridge (192.168.240.0/24): both may exist at once
NODE_IP = "192.168.241.11"
NAME = f"{PREFIX}galera-01"
SOCKET = "/opt/bitnami/mariadb/tmp/mysqld.sock"
MONITOR = "proxysql_monitor"


def _docker(*args: str, check: bool = True, timeout: float = 120, stdin: str | None = None):
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check,
                          input=stdin)


def _root_sql(sql: str) -> subprocess.CompletedProcess:
    """SQL as root over the node's socket (unix_socket auth: the OS user root), through stdin."""
    return _docker("exec", "-u", "0", "-i", NAME, "mariadb", "-uroot", f"--socket={SOCKET}", stdin=sql, check=False)


@pytest.fixture(scope="module")
def node():
    image = images.build("mariadb-galera", progress=lambda m: None)
    password = "tb-" + secrets.token_urlsafe(16)
    _docker("rm", "-f", "-v", NAME, check=False)
    _docker("network", "rm", NETWORK, check=False)
    _docker("network", "create", "--subnet", SUBNET, NETWORK)
    server = ("mysql_install_db --datadir=/bitnami/mariadb/data --auth-root-authentication-method=socket "
              "--skip-test-db >/dev/null && exec mysqld --no-defaults --datadir=/bitnami/mariadb/data "
              f"--socket={SOCKET} --port=3306 --bind-address=0.0.0.0 --skip-name-resolve "
              "--binlog-format=ROW --default-storage-engine=InnoDB --innodb-autoinc-lock-mode=2 "
              "--innodb-buffer-pool-size=64M --wsrep-on=ON --wsrep-provider=/usr/lib/galera/libgalera_smm.so "
              "--wsrep-provider-options=gcache.size=32M --wsrep-cluster-name=proxysql-test "
              f"--wsrep-cluster-address=gcomm:// --wsrep-node-address={NODE_IP}")
    try:
        _docker("run", "-d", "--name", NAME, "--network", NETWORK, "--ip", NODE_IP, "--entrypoint", "sh",
                image, "-c", server)
        try:  # install + first start take a few seconds
            wait_for(lambda: _root_sql("SELECT 1").returncode == 0, 180, 1, "MariaDB answers on its socket")
        except TimeoutError as e:
            raise RuntimeError(f"{e}: " + _docker("logs", "--tail", "40", NAME, check=False).stderr[-2000:]) from e
        created = _root_sql(f"CREATE USER '{MONITOR}'@'%' IDENTIFIED BY '{password}';\n"
                            f"GRANT USAGE, REPLICATION CLIENT ON *.* TO '{MONITOR}'@'%';\n")
        assert created.returncode == 0, created.stderr
        yield password
    finally:
        _docker("rm", "-f", "-v", NAME, check=False)
        _docker("network", "rm", NETWORK, check=False)


def _writer(password: str) -> list[str]:
    return expected_writer([read_node_state(NODE_IP, 3306, 1000, MONITOR, password)])


def test_a_synced_primary_node_is_the_writer(node):
    state = read_node_state(NODE_IP, 3306, 1000, MONITOR, node)
    assert state.row is not None, "the monitor user could not run ProxySQL's health-check query"
    local_state, read_only, _queue, desync, reject, _donor, cluster_status, maint = state.row
    assert (int(local_state), str(cluster_status), str(reject), maint) == (4, "Primary", "NONE", "DISABLED")
    assert _writer(node) == [NODE_IP]


@pytest.mark.parametrize("setting, restore", [
    ("SET GLOBAL wsrep_desync=ON", "SET GLOBAL wsrep_desync=OFF"),
    ("SET GLOBAL read_only=ON", "SET GLOBAL read_only=OFF"),
    ("SET GLOBAL wsrep_reject_queries=ALL", "SET GLOBAL wsrep_reject_queries=NONE"),
])
def test_each_condition_proxysql_acts_on_removes_the_writer(node, setting, restore):
    assert _root_sql(setting).returncode == 0
    try:
        assert _writer(node) == []
    finally:
        assert _root_sql(restore).returncode == 0
    assert _writer(node) == [NODE_IP]


def test_a_node_that_does_not_answer_is_not_the_writer(node):
    _docker("pause", NAME)
    try:
        assert _writer(node) == []
    finally:
        _docker("unpause", NAME)
    assert _writer(node) == [NODE_IP]
