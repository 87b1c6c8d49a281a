"""Settings and pure render functions of the MariaDB Galera layer (design §A, §F): maria-01..03.

One table, `MariadbSettings` (`DEFAULT`), holds every path, port, uid and timing; the deploy
(deploys/mariadb.py), the testbed (keybuzz/mariadb/testbed.py) and the checks render the same templates
(templates/mariadb/) through the functions below.

Decisions:

* The image's entrypoint is bypassed (`--entrypoint` = the server binary, `--defaults-file` = the project's
  my.cnf), on the pinned bitnami/mariadb-galera:10.11.6 and on the lab stand-in alike. Bitnami's entrypoint
  bootstraps a new cluster when MARIADB_GALERA_CLUSTER_BOOTSTRAP=yes is set on a node; left set, that node
  refuses to start later (grastate.dat says safe_to_bootstrap: 0), and with MARIADB_GALERA_FORCE_SAFETOBOOTSTRAP
  it would start a second cluster. Here the layer decides (keybuzz.mariadb.galera.decide) and bootstraps through
  a transient include file (bootstrap.d/new-cluster.cnf, removed as soon as the node is Primary).
  What the image must provide is only its binaries and paths: Bitnami keeps them under /opt/bitnami/mariadb
  (sbin/mysqld, bin/mysql, bin/mysql_install_db, lib/libgalera_smm.so, lib/plugin, tmp/ for socket and pid),
  data in /bitnami/mariadb/data, uid 1001; lab/images/mariadb-galera reproduces that layout from Debian 12's
  packages. An image with other paths changes the fields of this table, nothing else.
* Users come from 0600 files over the server's socket (`docker exec -u 0 ... mysql` with unix_socket
  authentication of root@localhost), never from `-e` variables: the image's `*_FILE` variables belong to
  the bypassed entrypoint.
* wsrep_sync_wait 1: reads wait until the node applied everything committed before them (ERPNext reads its
  own writes through any node ProxySQL picks). innodb_flush_log_at_trx_commit 1: a committed write survives
  the power loss of every node (the full-outage recovery relies on it).
* pc.recovery=TRUE (Galera's default, spelled out): after an outage where every node saw the same last
  primary view, the nodes re-form it by themselves when restarted; otherwise the layer's recovery decides.

    >>> s = DEFAULT
    >>> (s.port, s.gcomm_port, s.ist_port, s.sst_port, s.uid)
    (3306, 4567, 4568, 4444, 1001)
    >>> host_pattern("10.0.0.0/16")
    '10.0.0.0/255.255.0.0'
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass

from keybuzz.render import render

# to the private network (base OS firewall): clients (ProxySQL), Galera group communication, IST, SST
OPEN_PORTS = ("tcp/3306", "tcp/4567", "tcp/4568", "tcp/4444")
SERVICE = "mariadb"  # the systemd unit and container name on each maria node


@dataclass(frozen=True)
class MariadbSettings:
    # --- host paths (production: on each maria node) ---
    base_dir: str = "/opt/keybuzz/mariadb"
    node_script: str = "/usr/local/sbin/keybuzz-mariadb"
    # --- container paths: the pinned image's (Bitnami's) layout, reproduced by the lab stand-in ---
    basedir: str = "/opt/bitnami/mariadb"
    mysqld: str = "/opt/bitnami/mariadb/sbin/mysqld"
    mysql: str = "/opt/bitnami/mariadb/bin/mysql"
    install_db: str = "/opt/bitnami/mariadb/bin/mysql_install_db"
    provider: str = "/opt/bitnami/mariadb/lib/libgalera_smm.so"
    plugin_dir: str = "/opt/bitnami/mariadb/lib/plugin"
    container_conf_dir: str = "/opt/bitnami/mariadb/conf"
    container_tmp: str = "/opt/bitnami/mariadb/tmp"
    container_data: str = "/bitnami/mariadb/data"
    uid: int = 1001  # Bitnami's non-root user (gid 0)
    # --- ports ---
    port: int = 3306
    gcomm_port: int = 4567
    ist_port: int = 4568
    sst_port: int = 4444
    # --- cluster ---
    cluster_name: str = "keybuzz-galera"
    gcache_size: str = "1G"
    suspect_timeout: str = "PT5S"  # Galera's default: a silent node is suspected after 5 s
    inactive_timeout: str = "PT15S"  # ... and dropped from the view after 15 s (default)
    slave_threads: int = 2
    sync_wait: int = 1
    max_connections: int = 500
    innodb_flush_log_at_trx_commit: int = 1
    innodb_buffer_pool_size: str = "1G"
    # --- waits of the node script (every wait bounded) ---
    wait_seconds: int = 300

    @property
    def data_dir(self) -> str:
        return f"{self.base_dir}/data"  # -> container_data, uid 1001, 0700

    @property
    def conf_dir(self) -> str:
        return f"{self.base_dir}/conf"  # -> container_conf_dir (read-only): my.cnf, sst-auth.cnf, bootstrap.d/

    @property
    def secrets_dir(self) -> str:
        return f"{self.base_dir}/secrets"  # root 0700, never mounted: users.sql (applied over the socket)

    @property
    def socket(self) -> str:
        return f"{self.container_tmp}/mysql.sock"

    @property
    def grastate(self) -> str:
        return f"{self.data_dir}/grastate.dat"


DEFAULT = MariadbSettings()
# what the base OS layer waits for after restarting dockerd here (keybuzz.layers.host_ready_commands)
HOST_READY = f"[ ! -x {DEFAULT.node_script} ] || {DEFAULT.node_script} wait-synced"


def host_pattern(network: str) -> str:
    """The MariaDB account host for every address of `network` (MariaDB takes address/netmask).

    >>> host_pattern("192.168.230.0/24")
    '192.168.230.0/255.255.255.0'
    """
    net = ipaddress.ip_network(network, strict=True)
    return f"{net.network_address}/{net.netmask}"


def render_my_cnf(name: str, ip: str, peers: list[str], s: MariadbSettings = DEFAULT) -> str:
    """my.cnf of node `name` (no secret: the SST password is in sst-auth.cnf).

    >>> cnf = render_my_cnf("maria-01", "10.0.0.31", ["10.0.0.31", "10.0.0.32", "10.0.0.33"])
    >>> "bind_address = 10.0.0.31,127.0.0.1" in cnf and "gmcast.listen_addr=tcp://10.0.0.31:4567" in cnf
    True
    >>> "wsrep_cluster_address = gcomm://10.0.0.31,10.0.0.32,10.0.0.33" in cnf
    True
    """
    return render("mariadb/my.cnf.j2", name=name, ip=ip, peers=peers, uid=s.uid, basedir=s.basedir,
                  datadir=s.container_data, plugin_dir=s.plugin_dir, socket=s.socket,
                  pid_file=f"{s.container_tmp}/mysqld.pid", tmpdir=s.container_tmp, port=s.port,
                  max_connections=s.max_connections, innodb_flush_log_at_trx_commit=s.innodb_flush_log_at_trx_commit,
                  innodb_buffer_pool_size=s.innodb_buffer_pool_size, provider=s.provider,
                  cluster_name=s.cluster_name, gcomm_port=s.gcomm_port, ist_port=s.ist_port, sst_port=s.sst_port,
                  gcache_size=s.gcache_size, suspect_timeout=s.suspect_timeout,
                  inactive_timeout=s.inactive_timeout, slave_threads=s.slave_threads, sync_wait=s.sync_wait,
                  conf_dir=s.container_conf_dir)


def render_sst_auth(sst_user: str, sst_password: str) -> str:
    """sst-auth.cnf (SECRET: 0600, owned by the mysqld uid)."""
    return render("mariadb/sst-auth.cnf.j2", sst_user=sst_user, sst_password=sst_password)


def sql_string(value: str) -> str:
    """A SQL string literal (the credentials rules already refuse quotes and backslashes; escaped anyway).

    >>> sql_string("it's")
    "'it''s'"
    """
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


@dataclass(frozen=True)
class Accounts:
    """The accounts the layer creates (from mariadb.env). Never printed whole."""

    root_password: str
    app_user: str
    app_password: str
    sst_user: str
    sst_password: str
    monitor_user: str
    monitor_password: str

    def __repr__(self) -> str:
        return f"Accounts(app_user={self.app_user!r}, sst_user={self.sst_user!r}, monitor_user={self.monitor_user!r})"


def render_users_sql(accounts: Accounts, network: str) -> str:
    """The idempotent SQL creating the ERPNext database and every account (SECRET: 0600, root only).

    The application database carries the application user's name.

    >>> sql = render_users_sql(Accounts("r", "erpnext", "a", "sst", "s", "mon", "m"), "10.0.0.0/16")
    >>> "CREATE DATABASE IF NOT EXISTS `erpnext`" in sql
    True
    >>> "GRANT USAGE, REPLICATION CLIENT ON *.* TO 'mon'@'10.0.0.0/255.255.0.0';" in sql
    True
    """
    return render("mariadb/users.sql.j2", a=accounts, db=accounts.app_user, net=host_pattern(network), q=sql_string)


def mysqld_run_args(s: MariadbSettings = DEFAULT) -> list[str]:
    """`docker run` arguments (before the image) shared by the service, the recovery probe and the testbed's
    nodes: the server binary as entrypoint, the data and config mounts, the mysqld uid.

    >>> mysqld_run_args()[:4]
    ['--user', '1001:0', '--entrypoint', '/opt/bitnami/mariadb/sbin/mysqld']
    """
    return ["--user", f"{s.uid}:0", "--entrypoint", s.mysqld,
            "-v", f"{s.data_dir}:{s.container_data}", "-v", f"{s.conf_dir}:{s.container_conf_dir}:ro"]


def mysqld_command(s: MariadbSettings = DEFAULT) -> str:
    """The server's arguments (after the image): the project's my.cnf only."""
    return f"--defaults-file={s.container_conf_dir}/my.cnf"


def install_db_args(s: MariadbSettings = DEFAULT) -> tuple[list[str], list[str]]:
    """(`docker run` arguments, command) that initialise an empty data directory (first bootstrap only):
    root@localhost authenticated by unix_socket (root over the socket, inside the container), no test database.

    >>> install_db_args()[1][-2:]
    ['--auth-root-authentication-method=socket', '--skip-test-db']
    """
    return (["--user", f"{s.uid}:0", "--entrypoint", s.install_db, "-v", f"{s.data_dir}:{s.container_data}"],
            [f"--basedir={s.basedir}", f"--datadir={s.container_data}", "--auth-root-authentication-method=socket",
             "--skip-test-db"])


def render_node_script(image: str, app_user: str, size: int, s: MariadbSettings = DEFAULT) -> str:
    """/usr/local/sbin/keybuzz-mariadb (no secret): state, bootstrap, start, rolling restart, users.

    >>> script = render_node_script("bitnami/mariadb-galera:10.11.6", "erpnext", 3)
    >>> "IMAGE=bitnami/mariadb-galera:10.11.6" in script and "SIZE=3" in script
    True
    """
    q = shlex.quote
    install_args, install_cmd = install_db_args(s)
    return render("mariadb/keybuzz-mariadb.sh.j2", service=SERVICE, image=q(image), s=s, size=size,
                  app_user=q(app_user), run_args=[q(a) for a in mysqld_run_args(s)],
                  install_args=[q(a) for a in install_args], install_cmd=[q(a) for a in install_cmd],
                  mysqld_command=q(mysqld_command(s)))
