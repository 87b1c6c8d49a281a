"""Talking to the ProxySQL layer from install-01: the writer each ProxySQL uses (its admin interface is on the
host's loopback, reached with `keybuzz-proxysql writer` over SSH), and writes through a ProxySQL or the LB with
PyMySQL as the application user.

    writers_of(ssh_output)          # {'10': ['10.0.0.170'], ...} from `keybuzz-proxysql writer`
    write_probe(host, 3306, secrets)  # the node that committed the write ('10.0.0.170')
"""

from __future__ import annotations

from dataclasses import dataclass

from keybuzz import ssh
from keybuzz.proxysql.settings import CLIENT_PORT, TOOL, WRITER_HG, ProxySQLSecrets

CHECK_TABLE = "keybuzz_proxysql_check"


@dataclass(frozen=True)
class HostgroupRow:
    hostgroup: int
    hostname: str
    port: int
    status: str


def parse_writer_output(text: str) -> list[HostgroupRow]:
    """Rows of `keybuzz-proxysql writer` ("<hostgroup> <hostname> <port> <status>").

    >>> rows = parse_writer_output("10 10.0.0.170 3306 ONLINE\\n10 10.0.0.171 3306 SHUNNED\\n20 10.0.0.171 3306 ONLINE")
    >>> online_writers(rows)
    ['10.0.0.170']
    """
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0].isdigit() and parts[2].isdigit():
            rows.append(HostgroupRow(int(parts[0]), parts[1], int(parts[2]), parts[3]))
    return rows


def online_writers(rows: list[HostgroupRow]) -> list[str]:
    """Backends ONLINE in the writer hostgroup: where ProxySQL sends the application's statements (a backend
    ProxySQL demoted stays in the writer hostgroup as SHUNNED: lib/MySQL_HostGroups_Manager.cpp, #2656)."""
    return [r.hostname for r in rows if r.hostgroup == WRITER_HG and r.status == "ONLINE"]


def proxysql_rows(ip: str) -> list[HostgroupRow]:
    """runtime_mysql_servers of the ProxySQL at `ip` (over SSH; no secret on the command line)."""
    result = ssh.run(ip, f"{TOOL} writer", timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"keybuzz-proxysql writer on {ip} failed: {result.stderr.strip()[-200:]}")
    return parse_writer_output(result.stdout)


def connect(host: str, secrets: ProxySQLSecrets, port: int = CLIENT_PORT, timeout: float = 5.0):
    import pymysql

    return pymysql.connect(host=host, port=port, user=secrets.app_user, password=secrets.app_password,
                           database=secrets.app_user,  # the application database carries the user's name
                           connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout, autocommit=False)


def write_probe(host: str, secrets: ProxySQLSecrets, port: int = CLIENT_PORT, timeout: float = 5.0) -> tuple[str, int]:
    """One committed write through `host` (a ProxySQL or the LB): (the node that executed it, the row id).
    The node is read inside the same transaction (transaction_persistent keeps it on one backend)."""
    conn = connect(host, secrets, port, timeout)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE TABLE IF NOT EXISTS {CHECK_TABLE} (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
                        "node VARCHAR(64) NOT NULL, at TIMESTAMP(6) DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB")
            cur.execute("BEGIN")
            cur.execute(f"INSERT INTO {CHECK_TABLE} (node) VALUES (@@wsrep_node_address)")
            row_id = cur.lastrowid
            cur.execute("SELECT @@wsrep_node_address")
            node = str(cur.fetchone()[0]).split(":")[0]
        conn.commit()
        return node, row_id
    finally:
        conn.close()


def rows_present(host: str, secrets: ProxySQLSecrets, ids: list[int], port: int = CLIENT_PORT) -> int:
    """How many of `ids` are in the check table, read through `host`."""
    if not ids:
        return 0
    conn = connect(host, secrets, port)
    try:
        with conn.cursor() as cur:
            found = 0
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                cur.execute(f"SELECT COUNT(*) FROM {CHECK_TABLE} WHERE id IN ({', '.join(['%s'] * len(chunk))})",
                            chunk)
                found += int(cur.fetchone()[0])
            return found
    finally:
        conn.close()
