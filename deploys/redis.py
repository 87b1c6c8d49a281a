"""Redis layer (design §C): Redis + Sentinel on redis-01..03, master name keybuzz-master, quorum 2.

    pyinfra -y inventory.py deploys/redis.py          # or: invoke layer --name redis [--lab]

On each redis node, from the pinned `redis_image` (versions.yaml), as systemd units (keybuzz/ops.py):
  * redis.service           keybuzz-redis-start-gate (ExecStartPre), then
                            redis-server /conf/redis.conf --include /conf/replication.conf
                            (--user 999:1000, data in /opt/keybuzz/redis/data)
  * redis-sentinel.service  redis-server /sentinel/sentinel.conf --sentinel
ACL users (keybuzz/redis/settings.py): the applications are Redis's `default` user (REDIS_PASSWORD, no admin or
dangerous command); replication, Sentinel, the HAProxy hosts and the admin each have their own user, listed in
users.acl (hashes only) beside redis.conf and sentinel.conf, re-read with ACL LOAD when it changes. The node's
redis.env holds the admin login only (keybuzz-redis-settings).

What a re-run never does (it would break a running cluster):
  * rewrite redis.conf or sentinel.conf: Sentinel rewrites both (REPLICAOF + CONFIG REWRITE, known replicas,
    epochs). They are bootstrap files, written only when absent. Settings are compared at runtime from this
    machine and fixed with CONFIG SET / SENTINEL SET (keybuzz-redis-settings apply), reported as a change.
  * REPLICAOF anything: the Sentinels are asked who the master is (majority). Only the very first deploy,
    when no Sentinel knows keybuzz-master, makes redis-01 master; a node whose files are missing later
    (rebuilt) starts as a replica of the master the Sentinels name.
  * start Redis on a guess: before each start the gate (keybuzz-redis-start-gate) asks the Sentinels and
    writes conf/replication.conf (`replicaof` the majority's master, or `no one` when it names this node);
    a returning old master is a replica from its first client on. No majority: Redis does not start.
  * restart a container whose unit did not change. A changed unit (image, arguments) restarts that service
    one node at a time, replicas first, each waiting until its replica is back in sync, the master last,
    after handing it over (writes paused, SENTINEL FAILOVER: keybuzz-redis-settings handover).
A second run reports no change.
"""

from io import StringIO

from pyinfra import host
from pyinfra.api import HiddenValue
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import files, server, systemd
from pyinfra.operations.util import any_changed

from keybuzz.context import layer_context
from keybuzz.facts import ServiceActive
from keybuzz.ops import container_unit, owned_directory, secret_file, template
from keybuzz.redis.client import PasswordMismatch, cluster_view, redis_drift, sentinel_drift
from keybuzz.redis.settings import (
    ACL_FILE,
    GID,
    REDIS_COMMAND,
    REDIS_ENV_FILE,
    REDIS_ROOT,
    SETTINGS_TOOL,
    START_GATE,
    START_GATE_CONF,
    UID,
    RedisSettings,
    env_file,
    logins,
    render_redis_acl,
    render_redis_conf,
    render_sentinel_acl,
    render_sentinel_conf,
    render_settings_file,
    render_start_gate_conf,
)

ctx = layer_context("redis")
LOGINS = logins(ctx.secrets("redis"))  # plain values: only ever inside HiddenValue file contents
ADMIN = LOGINS["admin"]
NODE_IPS = [ip for _, ip in ctx.addresses("redis")]
ME = host.data.private_ip
SETTINGS = RedisSettings.from_host_data(host.data)
IMAGE = ctx.image("redis_image")


def current_master() -> str:
    """IP of the master: the Sentinels' majority; redis-01 only on a first install (no Sentinel knows
    keybuzz-master, and each was reached or has nothing listening yet).

    Asked once per run (every host acts on the same answer). Refuses (DeployError: one line, no traceback)
    anything else: Sentinels that answer without a majority, a refused login, a Sentinel it cannot reach
    (timeout) — deploying then could create a second master.
    """
    view = ctx.ask_once("the Sentinels who the master is", lambda: cluster_view(NODE_IPS, ADMIN))
    if view.master:
        return view.master
    if view.refused_login:
        raise DeployError(f"a Sentinel refuses the {ADMIN.user} login of redis.env ({view.summary()}): a changed "
                          "password, or a cluster installed before the ACL users (README, Redis: ACL users)")
    if not view.first_install:
        raise DeployError(f"the Sentinels give no majority for keybuzz-master ({view.summary()}); run "
                          "`invoke check --name redis` and repair before deploying")
    return NODE_IPS[0]


MASTER = current_master()
IS_MASTER = ME == MASTER

# --- directories and files -----------------------------------------------------------------------------

files.directory(name="Create /etc/keybuzz", path="/etc/keybuzz", user="root", group="root", mode="755")
for sub, mode in (("conf", "700"), ("data", "750"), ("sentinel", "700")):
    owned_directory(name=f"Create {REDIS_ROOT}/{sub} (redis 999:1000)", path=f"{REDIS_ROOT}/{sub}",
                    uid=UID, gid=GID, mode=mode)

env_op = secret_file(name=f"Install {REDIS_ENV_FILE} (the admin login for keybuzz-redis-settings, root 0600)",
                     dest=REDIS_ENV_FILE, content=HiddenValue(env_file(ADMIN, "admin")))
acl_ops = [
    secret_file(name=f"Install {REDIS_ROOT}/conf/{ACL_FILE} (Redis ACL users, password hashes only)",
                dest=f"{REDIS_ROOT}/conf/{ACL_FILE}", user=UID, group=GID,
                content=HiddenValue(render_redis_acl(LOGINS))),
    secret_file(name=f"Install {REDIS_ROOT}/sentinel/{ACL_FILE} (Sentinel ACL users, password hashes only)",
                dest=f"{REDIS_ROOT}/sentinel/{ACL_FILE}", user=UID, group=GID,
                content=HiddenValue(render_sentinel_acl(LOGINS))),
]

secret_file(
    name="Bootstrap redis.conf (only if absent: Redis and Sentinel own it afterwards)",
    dest=f"{REDIS_ROOT}/conf/redis.conf", user=UID, group=GID, only_if_absent=True,
    content=HiddenValue(render_redis_conf(host.name, f"{ME} 127.0.0.1", LOGINS["replication"], SETTINGS,
                                      None if IS_MASTER else MASTER)),
)
secret_file(
    name="Bootstrap sentinel.conf (only if absent: Sentinel owns it afterwards)",
    dest=f"{REDIS_ROOT}/sentinel/sentinel.conf", user=UID, group=GID, only_if_absent=True,
    content=HiddenValue(render_sentinel_conf(host.name, f"{ME} 127.0.0.1", LOGINS["sentinel"], SETTINGS, MASTER)),
)
files.put(name="Install the runtime settings list (settings.conf, no secret)",
          src=StringIO(render_settings_file(SETTINGS)), dest=f"{REDIS_ROOT}/settings.conf",
          user="root", group="root", mode="644")
template("redis/keybuzz-redis-settings", SETTINGS_TOOL, mode="700")
# the start gate (issue 10 §2): redis.service asks the Sentinels before each start (ExecStartPre)
template("redis/keybuzz-redis-start-gate", START_GATE, mode="700")
files.put(name=f"Install {START_GATE_CONF} (start gate settings, no secret)",
          src=StringIO(render_start_gate_conf(NODE_IPS, ME, IMAGE)), dest=START_GATE_CONF,
          user="root", group="root", mode="644")

# --- units ---------------------------------------------------------------------------------------------

redis_unit = container_unit(
    "redis", IMAGE, command=REDIS_COMMAND, pre_start=[START_GATE],
    run_args=["--user", f"{UID}:{GID}", "-v", f"{REDIS_ROOT}/conf:/conf", "-v", f"{REDIS_ROOT}/data:/data"],
    description="KeyBuzz Redis (keybuzz-master)",
)
sentinel_unit = container_unit(
    "redis-sentinel", IMAGE, command="redis-server /sentinel/sentinel.conf --sentinel",
    run_args=["--user", f"{UID}:{GID}", "-v", f"{REDIS_ROOT}/sentinel:/sentinel"],
    description="KeyBuzz Redis Sentinel (keybuzz-master, quorum 2)",
)
# read before the start below: a service this run starts picks its files up by starting (a first install must
# not be "restarted", and above all its master must not be handed over to a replica)
WAS_ACTIVE = {service: host.get_fact(ServiceActive, service=service) for service in ("redis", "redis-sentinel")}
systemd.daemon_reload(name="systemd daemon-reload", _if=any_changed(*redis_unit, *sentinel_unit))
for service in ("redis", "redis-sentinel"):
    systemd.service(name=f"Enable and start {service}", service=service, running=True, enabled=True)

# A changed definition restarts: replicas first (one at a time, each back in sync before the next), master
# last. pyinfra runs operations in code order, so the replica operation finishes on every host first.
RESTART_REDIS = ["systemctl restart redis", f"{SETTINGS_TOOL} wait-synced"]
if not IS_MASTER:
    server.shell(name="Restart redis (replica, its definition changed) and wait until in sync",
                 commands=RESTART_REDIS, _if=lambda: WAS_ACTIVE["redis"] and any_changed(*redis_unit)(),
                 _serial=True)
if IS_MASTER:
    # handed over first (writes paused, SENTINEL FAILOVER), then restarted: it comes back as a replica (gate)
    server.shell(name="Hand the master over (SENTINEL FAILOVER, writes paused), then restart redis (its "
                      "definition changed) and wait until in sync",
                 commands=[f"{SETTINGS_TOOL} handover", *RESTART_REDIS],
                 _if=lambda: WAS_ACTIVE["redis"] and any_changed(*redis_unit)(), _serial=True)
server.shell(
    name="Restart redis-sentinel (its definition changed) and wait until it sees its peers",
    commands=["systemctl restart redis-sentinel", f"{SETTINGS_TOOL} wait-sentinel"],
    _if=lambda: WAS_ACTIVE["redis-sentinel"] and any_changed(*sentinel_unit)(), _serial=True,
)

# --- runtime settings (compared now, read-only; applied by an operation only if they differ) ------------

# A changed users.acl (a new rule, a rotated password) is re-read in place; a first install has just started
# with it, and a service restarted above read it at start: ACL LOAD then changes nothing, harmlessly.
server.shell(name=f"Re-read {ACL_FILE} in Redis and Sentinel (ACL LOAD; users changed)",
             commands=[f"{SETTINGS_TOOL} acl-load"], _if=any_changed(*acl_ops), _serial=True)

try:
    _drift = (redis_drift(ME, ADMIN, SETTINGS) or []) + [
        f"sentinel {n}" for n in (sentinel_drift(ME, ADMIN, SETTINGS) or [])]
except PasswordMismatch as e:
    raise DeployError(f"{e}: a password changed in redis.env (rotation is a manual procedure) or a cluster "
                      "installed before the ACL users (README, Redis: moving to ACL users)") from None
if _drift:
    server.shell(name=f"Apply changed runtime settings ({', '.join(_drift)}) with CONFIG SET / SENTINEL SET",
                 commands=[f"{SETTINGS_TOOL} apply"], _serial=True)
