"""Settings and pure render functions of the DB layer (PostgreSQL + Patroni + etcd + PgBouncer, design §A/§F/§G).

Every path, port, uid and timing is in ONE table, `DbSettings` (`DEFAULT`); the deploy, the testbed, the
checks and the benchmark render the same templates (templates/db/) through the functions below.

Decisions (measured on the container testbed, keybuzz/db/testbed.py; figures in bench/db_failover.py's output):

* Patroni timings: ttl 20 s, loop_wait 2 s, retry_timeout 8 s. Patroni 3.3.0 refuses a ttl below 20 s
  (config.py raises it to 20 with a warning: a ttl of 12 was measured as a 20 s etcd lease), so 20 is the
  fastest leader-key expiry it allows; loop_wait 2 s (default 10) makes replicas act within 2 s of the
  expiry and the primary renew its key every 2 s; retry_timeout 8 s keeps loop_wait + 2 x retry_timeout
  (18) <= ttl with 2 s to spare and tolerates an 8 s etcd or PostgreSQL stall before demoting a healthy
  primary. Measured (bench/db_failover.py): write gap on the primary's death ~ttl, against ~30-40 s with
  Patroni's defaults (ttl 30, loop_wait 10, retry_timeout 10). When the dead host also held the etcd
  leader, etcd renews every lease on its new leader and the gap can grow by up to one more ttl.
* synchronous_mode: true, synchronous_node_count 1: every commit waits for one replica's flush, so an
  acknowledged commit survives the primary's death (0 lost, asserted by tests and bench). Patroni only
  promotes the node named in the /sync key, i.e. one that has every acknowledged commit.
* synchronous_mode_strict: false. When BOTH replicas are gone, Patroni empties synchronous_standby_names
  and the primary keeps accepting writes alone (availability for KeyBuzz's apps). No acknowledged commit can
  be lost by an automatic failover in that state: the /sync key is empty, so no replica is eligible until it
  has caught up and been made synchronous again; only the loss of the primary's disk during that window
  loses data. (strict: true would block every write until a replica returns.)
* failsafe_mode: true. When the etcd majority is lost, the primary cannot renew its leader key; with failsafe
  mode it keeps running as primary as long as it can reach EVERY member over the REST API (POST /failsafe),
  instead of demoting itself and taking the whole database down for an etcd problem. If any member is
  unreachable as well it demotes (no split brain: a replica never promotes without the DCS).
* PgBouncer pool_mode = session. KeyBuzz's apps are Rails (ActiveRecord: advisory locks for migrations,
  SET/session variables, prepared statements), Node (node-postgres / Prisma: named prepared statements,
  LISTEN) and Python (psycopg 3 server-side prepares after 5 executions, SQLAlchemy sessions). Transaction
  pooling silently breaks session state (SET, advisory locks, LISTEN/NOTIFY, temp tables, WITH HOLD
  cursors) for some of them; session pooling is always correct, still caps server connections
  (max_db_connections) and absorbs reconnect storms after a failover. A database whose clients are all
  transaction-safe can get `pool_mode=transaction` in its own [databases] line later.
* PgBouncer authentication: auth_type scram-sha-256 with an auth file holding only SCRAM verifiers (0600, owned by
  PgBouncer's uid), computed on the install host with `scram_verifier` and set in PostgreSQL with the SAME verifier
  (ALTER ROLE ... PASSWORD '<verifier>': render_app_sql, keybuzz.db.client.ensure_app). PgBouncer then logs in to
  PostgreSQL with the client's own SCRAM keys (pass-through): no plaintext password anywhere on the db hosts for app
  users, no privileged auth_query user/function, no `trust` rule. Cost: a new database user needs its line in the
  file (the deploy renders it from the credentials).
* HAProxy: httpchk HEAD /primary on Patroni's port 8008 (`linger`: Patroni logs no reset per check), inter 1 s,
  fastinter 500 ms, downinter 1 s, fall 2, rise 2: a dead or demoted primary is out within ~1-2 s, the new one in
  within ~1-2 s of its promotion (rise 2 ignores a single stray 200); on-marked-down shutdown-sessions cuts sessions
  to a demoted primary. 6432 additionally requires a TCP connect to the node's PgBouncer.

Example:
    >>> s = DEFAULT
    >>> (s.ttl, s.loop_wait, s.retry_timeout, s.pool_mode)
    (20, 2, 8, 'session')
    >>> s.loop_wait + 2 * s.retry_timeout <= s.ttl
    True
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field, replace

from keybuzz.errors import PinRefused
from keybuzz.render import render

PATRONI_VERSION = "3.3.0"
# to the private network (base OS firewall): PostgreSQL, PgBouncer, Patroni REST, etcd client and peer
OPEN_PORTS = ("tcp/5432", "tcp/6432", "tcp/8008", "tcp/2379", "tcp/2380")


@dataclass(frozen=True)
class DbSettings:
    # --- host paths (production: on each db node) ---
    base_dir: str = "/opt/keybuzz/postgres"
    # --- container paths (the images' interface, lab/images/{patroni,etcd,pgbouncer}) ---
    pgdata: str = "/var/lib/postgresql/data"
    patroni_config: str = "/etc/patroni/patroni.yml"
    bin_dir: str = ""  # empty: the image's PATH (Debian's /usr/lib/postgresql/15/bin in the lab, /usr/local/bin)
    pgpass: str = "/var/lib/postgresql/.pgpass"  # written by Patroni, 0600, inside the container
    pgbouncer_conf_dir: str = "/opt/bitnami/pgbouncer/conf"
    etcd_data: str = "/etcd-data"
    # --- ports ---
    pg_port: int = 5432
    pgbouncer_port: int = 6432
    api_port: int = 8008
    etcd_client_port: int = 2379
    etcd_peer_port: int = 2380
    # --- uids (as the official images) ---
    postgres_uid: int = 70  # postgres:16.4-alpine
    pgbouncer_uid: int = 1001  # bitnami/pgbouncer
    # --- cluster ---
    scope: str = "keybuzz-pg"
    namespace: str = "/keybuzz/"
    etcd_token: str = "keybuzz-etcd"
    # --- Patroni timings (see the module docstring) ---
    ttl: int = 20  # Patroni 3.3.0's minimum
    loop_wait: int = 2
    retry_timeout: int = 8
    maximum_lag_on_failover: int = 1048576
    synchronous_mode: bool = True
    synchronous_mode_strict: bool = False
    failsafe_mode: bool = True
    max_connections: int = 300
    # --- etcd ---
    etcd_heartbeat_ms: int = 100
    etcd_election_ms: int = 1000
    # --- PgBouncer ---
    pool_mode: str = "session"
    max_client_conn: int = 2000
    default_pool_size: int = 50
    max_db_connections: int = 200
    # --- HAProxy checks ---
    check_inter: str = "1s"
    check_fastinter: str = "500ms"
    check_downinter: str = "1s"
    check_fall: int = 2
    check_rise: int = 2
    check_timeout: str = "2s"
    # networks allowed in pg_hba (production: the private network)
    client_networks: tuple[str, ...] = field(default=("10.0.0.0/16",))

    # host-side layout
    @property
    def data_dir(self) -> str:
        return f"{self.base_dir}/data"

    @property
    def config_dir(self) -> str:
        return f"{self.base_dir}/config"  # patroni.yml (0600, postgres uid)

    @property
    def pgbouncer_dir(self) -> str:
        return f"{self.base_dir}/pgbouncer"  # pgbouncer.ini (0644) + userlist.txt (0600, pgbouncer uid)

    @property
    def etcd_dir(self) -> str:
        return f"{self.base_dir}/etcd"

    def with_patroni_defaults(self) -> DbSettings:
        """Patroni's own defaults (ttl 30, loop_wait 10, retry_timeout 10), for the benchmark's comparison."""
        return replace(self, ttl=30, loop_wait=10, retry_timeout=10)


DEFAULT = DbSettings()


@dataclass(frozen=True)
class PatroniSecrets:
    """The passwords patroni.yml carries (from postgres.env; REST API ones from its PATRONI_API_* names)."""

    superuser: str
    superpass: str
    repl_user: str
    repl_pass: str
    rest_user: str
    rest_pass: str

    def __repr__(self) -> str:  # never printed by accident
        return f"PatroniSecrets(superuser={self.superuser!r}, repl_user={self.repl_user!r}, ...)"


def etcd_hosts(nodes: list[tuple[str, str]], s: DbSettings = DEFAULT) -> list[str]:
    """The etcd client endpoints Patroni uses: one per db node.

    >>> etcd_hosts([("db-01", "10.0.0.51"), ("db-02", "10.0.0.52")])
    ['10.0.0.51:2379', '10.0.0.52:2379']
    """
    return [f"{ip}:{s.etcd_client_port}" for _, ip in nodes]


def render_patroni_yml(name: str, ip: str, nodes: list[tuple[str, str]], secrets: PatroniSecrets,
                       s: DbSettings = DEFAULT) -> str:
    """patroni.yml of node `name` (SECRET: write it 0600, owned by s.postgres_uid)."""
    return render("db/patroni.yml.j2", patroni_version=PATRONI_VERSION, name=name, ip=ip, scope=s.scope,
                  namespace=s.namespace, uid=s.postgres_uid, api_port=s.api_port, pg_port=s.pg_port,
                  etcd_hosts=etcd_hosts(nodes, s), ttl=s.ttl, loop_wait=s.loop_wait,
                  retry_timeout=s.retry_timeout, maximum_lag_on_failover=s.maximum_lag_on_failover,
                  synchronous_mode=s.synchronous_mode, synchronous_mode_strict=s.synchronous_mode_strict,
                  failsafe_mode=s.failsafe_mode, max_connections=s.max_connections, pgdata=s.pgdata,
                  bin_dir=s.bin_dir, pgpass=s.pgpass, client_networks=list(s.client_networks),
                  superuser=secrets.superuser, superpass=secrets.superpass, repl_user=secrets.repl_user,
                  repl_pass=secrets.repl_pass, rest_user=secrets.rest_user, rest_pass=secrets.rest_pass)


def dcs_config(s: DbSettings = DEFAULT) -> dict:
    """The dynamic (DCS) settings as PATCH /config takes them: bootstrap.dcs is applied once only.

    >>> dcs_config()["synchronous_mode"], dcs_config()["ttl"]
    (True, 20)
    """
    return {"ttl": s.ttl, "loop_wait": s.loop_wait, "retry_timeout": s.retry_timeout,
            "maximum_lag_on_failover": s.maximum_lag_on_failover, "synchronous_mode": s.synchronous_mode,
            "synchronous_mode_strict": s.synchronous_mode_strict, "failsafe_mode": s.failsafe_mode}


def render_pgbouncer_ini(name: str, ip: str, s: DbSettings = DEFAULT) -> str:
    """pgbouncer.ini of node `name` (no secret)."""
    return render("db/pgbouncer.ini.j2", name=name, ip=ip, port=s.pgbouncer_port, pg_port=s.pg_port,
                  auth_file=f"{s.pgbouncer_conf_dir}/userlist.txt", pool_mode=s.pool_mode,
                  max_client_conn=s.max_client_conn, default_pool_size=s.default_pool_size,
                  max_db_connections=s.max_db_connections)


def render_pgbouncer_userlist(users: list[tuple[str, str]]) -> str:
    """PgBouncer's auth file from (user, SCRAM verifier) pairs (write 0600, owned by s.pgbouncer_uid).

    >>> render_pgbouncer_userlist([("keybuzz", "SCRAM-SHA-256$4096:c2FsdA==$a:b")])
    '"keybuzz" "SCRAM-SHA-256$4096:c2FsdA==$a:b"\\n'
    """
    for user, verifier in users:
        if '"' in user or not verifier.startswith("SCRAM-SHA-256$"):
            raise ValueError(f"userlist: user {user!r} needs a SCRAM-SHA-256 verifier, never a password")
    return render("db/pgbouncer-userlist.txt.j2", users=users)


def render_etcd_env(name: str, ip: str, nodes: list[tuple[str, str]], s: DbSettings = DEFAULT,
                    cluster_state: str = "new") -> str:
    """etcd's --env-file for member `name` (no secret)."""
    return render("db/etcd.env.j2", name=name, ip=ip, nodes=nodes, data_dir=s.etcd_data,
                  client_port=s.etcd_client_port, peer_port=s.etcd_peer_port, cluster_state=cluster_state,
                  token=s.etcd_token, heartbeat_ms=s.etcd_heartbeat_ms, election_ms=s.etcd_election_ms)


def render_haproxy_block(db_nodes: list[tuple[str, str]], s: DbSettings = DEFAULT) -> str:
    """The HAProxy fragment (frontends + backends for 5432 and 6432; no global/defaults) of the haproxy layer.

    >>> block = render_haproxy_block([("db-01", "10.0.0.51")])
    >>> "bind 0.0.0.0:5432" in block and "server db-01 10.0.0.51:5432 check" in block
    True
    """
    return render("db/haproxy.cfg.j2", db_nodes=db_nodes, pg_port=s.pg_port, pgbouncer_port=s.pgbouncer_port,
                  api_port=s.api_port, inter=s.check_inter, fastinter=s.check_fastinter,
                  downinter=s.check_downinter, fall=s.check_fall, rise=s.check_rise,
                  check_timeout=s.check_timeout)


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = 4096) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier of `password` (what `rolpassword` stores; RFC 5802/7677).

    PostgreSQL accepts it as is in `ALTER ROLE ... PASSWORD '<verifier>'` and PgBouncer in its auth file,
    so the password itself never leaves the install host.

    >>> scram_verifier("secret", salt=b"0123456789abcdef")
    'SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$bpSY5Ze9NUH+I35LC3gVq+DpBfK46iXBxvhAKqVu9pE=:\
VpYlBuxyzeCI1KnctrefdljpB1mk3Gp7sBI/t11+NkQ='
    """
    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
ADMIN_LOGIN_FILE = "admin.pgpass"  # in config_dir (mounted at /etc/patroni): the superuser, for keybuzz-db
APP_SQL = "app.sql"  # in config_dir: the application role and database
NODE_SCRIPT = "/usr/local/sbin/keybuzz-db"
WAIT_SECONDS = 300  # bound of every wait for the cluster (first bootstrap included)
# what the base OS layer waits for after restarting dockerd here (keybuzz.layers.host_ready_commands)
HOST_READY = f"[ ! -x {NODE_SCRIPT} ] || {NODE_SCRIPT} wait-cluster {WAIT_SECONDS}"


def deterministic_salt(key: str, user: str) -> bytes:
    """A SCRAM salt that is the same on every run (so the files stay unchanged and a re-run reports nothing)
    yet reveals nothing about the password: HMAC of the user name under a secret the install host holds.

    >>> deterministic_salt("k", "keybuzz") == deterministic_salt("k", "keybuzz") != deterministic_salt("k", "x")
    True
    """
    return hmac.new(key.encode(), f"keybuzz-scram-salt:{user}".encode(), hashlib.sha256).digest()[:16]


def render_app_sql(user: str, verifier: str, db: str) -> str:
    """SQL creating the application role (SCRAM verifier) and its database, idempotent (SECRET: 0600).

    >>> "CREATE DATABASE \\"keybuzz\\"" in render_app_sql("keybuzz", "SCRAM-SHA-256$4096:a$b:c", "keybuzz")
    True
    >>> render_app_sql("Robert-x", "SCRAM-SHA-256$4096:a$b:c", "keybuzz")
    Traceback (most recent call last):
    ValueError: POSTGRES_APP_USER / database name 'Robert-x' must be a lower-case identifier ([a-z_][a-z0-9_]*)
    """
    for name in (user, db):
        if not IDENTIFIER.match(name):
            raise ValueError(f"POSTGRES_APP_USER / database name {name!r} must be a lower-case identifier "
                             "([a-z_][a-z0-9_]*)")
    if not verifier.startswith("SCRAM-SHA-256$") or "'" in verifier:
        raise ValueError("render_app_sql takes a SCRAM-SHA-256 verifier, never a password")
    return render("db/app.sql.j2", user=user, verifier=verifier, db=db)


def render_admin_passfile(superuser: str, superpass: str, s: DbSettings = DEFAULT) -> str:
    """The superuser's libpq passfile for keybuzz-db (SECRET: 0600, postgres uid).

    >>> render_admin_passfile("postgres", "p:w")
    '127.0.0.1:5432:*:postgres:p\\\\:w\\n'
    """
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace(":", "\\:")
    return f"127.0.0.1:{s.pg_port}:*:{esc(superuser)}:{esc(superpass)}\n"


def render_node_script(name: str, ip: str, nodes: int, superuser: str, app_user: str, app_db: str,
                       s: DbSettings = DEFAULT) -> str:
    """/usr/local/sbin/keybuzz-db of node `name` (no secret)."""
    return render("db/keybuzz-db.j2", name=name, ip=ip, nodes=nodes, superuser=superuser, app_user=app_user,
                  app_db=app_db, pg_port=s.pg_port, api_port=s.api_port,
                  passfile=f"{CONTAINER_CONFIG_DIR}/{ADMIN_LOGIN_FILE}", app_sql=f"{CONTAINER_CONFIG_DIR}/{APP_SQL}")


CONTAINER_CONFIG_DIR = "/etc/patroni"


def preflight(versions: dict) -> None:
    """Pins this layer cannot deploy, refused before any host is contacted (keybuzz.inventory.preflight).

    >>> preflight({"patroni_image": "zalando/patroni:3.3.0"})
    Traceback (most recent call last):
    keybuzz.errors.PinRefused: patroni_image: 'zalando/patroni:3.3.0' was never published ...
    """
    if versions.get("patroni_image", "").split("@")[0] == "zalando/patroni:3.3.0":
        raise PinRefused("patroni_image", "'zalando/patroni:3.3.0' was never published (Patroni's maintainers; "
                         "Zalando ships Spilo): build keybuzz/db/image/Dockerfile (PostgreSQL 16.4 + Patroni 3.3.0), "
                         "push it to your registry and set patroni_image to it with KEYBUZZ_VERSIONS=<file>")
