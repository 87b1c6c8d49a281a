"""HAProxy layer (design §A, §C, §D) on haproxy-01/02.

    pyinfra -y inventory.py deploys/haproxy.py        # or: invoke layer --name haproxy [--lab]

  * haproxy.service: the pinned `haproxy_image` in master-worker mode, listening on 0.0.0.0:5432, 6432, 6379
    and 5672 (never on the LB address 10.0.0.10, §A); stats page on 127.0.0.1 and the private address :8404;
    master CLI + admin socket in /opt/keybuzz/haproxy/run (root only).
    `systemctl reload haproxy` = validate (haproxy -c) + SIGUSR2 to the master: new workers take the new
    config, old workers keep their established connections until they end.
  * haproxy.cfg: be_redis_master exactly as §C, be_rabbitmq exactly as §D, be_postgres / be_pgbouncer from
    the db group. Every version is validated with `haproxy -c` before it replaces the old one.
  * §C follow-up: /usr/local/bin/redis-update-master.sh (boot + every 15 s: redis-update-master.timer) and
    redis-master-watch.service (immediately on each Sentinel's +switch-master). They log in as the Redis
    user REDIS_HAPROXY_USER (ROLE; SENTINEL get-master-addr-by-name; +switch-master: nothing else), from
    /etc/keybuzz/redis.env (root 0600, that login only); redis-cli and socat come from Debian (redis-tools, socat).

The master written into haproxy.cfg is the one a majority of Sentinels names now; without a majority the
address already in the host's haproxy.cfg is kept (never fight redis-update-master.sh), and only on a
first install redis-01. A second run reports no change.
"""

from io import StringIO

from pyinfra import host
from pyinfra.api import HiddenValue
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import FileContents
from pyinfra.operations import files, server, systemd
from pyinfra.operations.util import any_changed

from keybuzz.context import layer_context
from keybuzz.haproxy.settings import (
    CFG,
    CHECK_TOOL,
    CONF_DIR,
    CONTAINER_CFG_DIR,
    HAPROXY_UID,
    READY_COMMAND,
    RUN_DIR,
    UPDATE_CONF_FILE,
    UPDATE_LOCK,
    cfg_master,
    render_haproxy_cfg,
    render_update_conf,
)
from keybuzz.ops import apt_packages, container_unit, owned_directory, restart_if, secret_file, template, validated_file
from keybuzz.redis.client import cluster_view
from keybuzz.redis.settings import REDIS_ENV_FILE, REDIS_PORT, env_file, logins

ctx = layer_context("haproxy")
LOGINS = logins(ctx.secrets("redis"))  # install-01 asks as admin; this host only ever gets the haproxy login
REDIS_IPS = [ip for _, ip in ctx.addresses("redis")]
ME = host.data.private_ip
IMAGE = ctx.image("haproxy_image")


def redis_master_for_cfg() -> str:
    """The Sentinels' majority (asked once per run); else what this host's haproxy.cfg says; else redis-01
    (first install)."""
    view = ctx.ask_once("the Sentinels who the master is", lambda: cluster_view(REDIS_IPS, LOGINS["admin"]))
    if view.refused_login:  # before anything is written: the scripts would fail every query afterwards
        raise DeployError(f"a Sentinel refuses the {LOGINS['admin'].user} login of redis.env ({view.summary()}); "
                          "fix redis.env (or deploy the redis layer first) before the haproxy layer")
    if view.master:
        return f"{view.master}:{REDIS_PORT}"
    return cfg_master(host.get_fact(FileContents, path=CFG)) or f"{REDIS_IPS[0]}:{REDIS_PORT}"


# --- packages, directories, scripts --------------------------------------------------------------------

apt_packages(["redis-tools", "socat"], "redis-cli (redis-tools) and socat for redis-update-master.sh")

files.directory(name="Create /etc/keybuzz", path="/etc/keybuzz", user="root", group="root", mode="755")
files.directory(name=f"Create {CONF_DIR}", path=CONF_DIR, user="root", group="root", mode="755")
owned_directory(name=f"Create {RUN_DIR} (sockets, haproxy user only)", path=RUN_DIR,
                uid=HAPROXY_UID, gid=HAPROXY_UID, mode="750")

env_op = secret_file(name=f"Install {REDIS_ENV_FILE} (the haproxy login for the Sentinel queries, root 0600)",
                     dest=REDIS_ENV_FILE, content=HiddenValue(env_file(LOGINS["haproxy"], "haproxy")))
conf_op = files.put(name=f"Install {UPDATE_CONF_FILE}", src=StringIO(render_update_conf(REDIS_IPS, REDIS_IPS)),
                    dest=UPDATE_CONF_FILE, user="root", group="root", mode="644")
check_op = template("haproxy/keybuzz-haproxy-check.j2", CHECK_TOOL, mode="755", image=IMAGE)
script_ops = [template(f"haproxy/{script}", f"/usr/local/bin/{script}", mode="755")
              for script in ("redis-update-master.sh", "redis-master-watch.sh")]

# --- HAProxy -------------------------------------------------------------------------------------------

unit = container_unit(
    "haproxy", IMAGE,
    command=f"haproxy -S {RUN_DIR}/master.sock,mode,600 -f {CONTAINER_CFG_DIR}/haproxy.cfg",
    run_args=["-v", f"{CONF_DIR}:{CONTAINER_CFG_DIR}:ro", "-v", f"{RUN_DIR}:{RUN_DIR}"],
    reload=f"/bin/sh -c '{CHECK_TOOL} {CFG} && /usr/bin/docker kill -s USR2 haproxy'",
    description="KeyBuzz HAProxy (5432, 6432, 6379, 5672)",
)
cfg_op = validated_file(
    name="Install haproxy.cfg (validated with haproxy -c first, under redis-update-master.sh's lock)",
    dest=CFG, check=CHECK_TOOL, lock=UPDATE_LOCK,
    content=render_haproxy_cfg(host.name, ME, {layer: ctx.addresses(layer) for layer in ctx.layer.renders},
                               redis_master=redis_master_for_cfg()),
)
restart_if("haproxy", *unit, serial=True, ready=READY_COMMAND)  # one host at a time, each serving before the next
server.shell(name="Reload haproxy (config changed; established connections stay)",
             commands=["systemctl reload haproxy"], _if=lambda: cfg_op.did_change() and not any_changed(*unit)())
# The master in haproxy.cfg was read from Sentinel when this file was evaluated: a failover since then
# would be undone by the reload. Ask Sentinel again now, under the script's own lock.
server.shell(name="Follow the current Redis master again after the reload (redis-update-master.sh)",
             commands=["/usr/local/bin/redis-update-master.sh"
                       " || echo 'redis-update-master.sh failed: the 15 s timer retries'"],
             _if=any_changed(cfg_op, *unit))

# --- §C follow-up: timer (boot + 15 s) and +switch-master watcher ----------------------------------------

units = [template(f"haproxy/{name}", f"/etc/systemd/system/{name}")
         for name in ("redis-update-master.service", "redis-update-master.timer", "redis-master-watch.service")]
systemd.daemon_reload(name="systemd daemon-reload (follow-up units)", _if=any_changed(*units))
systemd.service(name="Enable and start redis-update-master.timer", service="redis-update-master.timer",
                running=True, enabled=True)
systemd.service(name="Enable and start redis-master-watch", service="redis-master-watch", running=True, enabled=True)
server.shell(name="Restart redis-master-watch (its script, unit or settings changed)",
             commands=["systemctl restart redis-master-watch"],
             _if=any_changed(env_op, conf_op, *script_ops, *units))
