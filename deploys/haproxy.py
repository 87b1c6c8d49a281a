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
    redis-master-watch.service (immediately on each Sentinel's +switch-master). They read REDIS_PASSWORD from
    /etc/keybuzz/redis.env (root 0600); redis-cli and socat come from Debian (redis-tools, socat).

The master written into haproxy.cfg is the one a majority of Sentinels names now; without a majority the
address already in the host's haproxy.cfg is kept (never fight redis-update-master.sh), and only on a
first install redis-01. A second run reports no change.
"""

from io import BytesIO, StringIO

from pyinfra import host
from pyinfra.api import FileUploadCommand, HiddenValue, StringCommand, operation
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import FileContents, Sha256File
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from keybuzz import ROOT
from keybuzz.context import layer_context
from keybuzz.ops import container_unit, restart_if, secret_file
from keybuzz.redisha import (
    CONTAINER_CFG_DIR,
    HAPROXY_CONF_DIR,
    HAPROXY_RUN_DIR,
    REDIS_ENV_FILE,
    REDIS_PORT,
    UPDATE_CONF_FILE,
    cluster_view,
    env_file,
    render_haproxy_cfg,
    render_update_conf,
    valid_addr,
)
from keybuzz.redisha_ops import owned_directory
from keybuzz.render import render

ctx = layer_context("haproxy")
PASSWORD = ctx.secrets("redis")["REDIS_PASSWORD"]
REDIS_IPS = [ip for _, ip in ctx.addresses("redis")]
ME = host.data.private_ip
IMAGE = ctx.image("haproxy_image")
CFG = f"{HAPROXY_CONF_DIR}/haproxy.cfg"
CHECK = "/usr/local/sbin/keybuzz-haproxy-check"
HAPROXY_UID = "99"  # user haproxy of the official image (and of the lab image)
PACKAGES = ["redis-tools", "socat"]
TEMPLATES = ROOT / "templates" / "haproxy"

_view_cache: dict = {}


def cfg_master(lines: list[str] | None) -> str | None:
    """'ip:port' of `server redis-master` in backend be_redis_master of a haproxy.cfg (lines), else None.

    >>> cfg_master(["backend be_redis_master", "    server redis-master 10.0.0.21:6379 check"])
    '10.0.0.21:6379'
    """
    in_backend = False
    for line in lines or []:
        words = line.split()
        if words and words[0] in ("backend", "frontend", "listen", "defaults", "global"):
            in_backend = words[:2] == ["backend", "be_redis_master"]
        elif in_backend and words[:2] == ["server", "redis-master"] and len(words) > 2:
            return words[2] if valid_addr(words[2]) else None
    return None


def redis_master_for_cfg() -> str:
    """The Sentinels' majority; else what this host's haproxy.cfg says; else redis-01 (first install)."""
    if "view" not in _view_cache:
        _view_cache["view"] = cluster_view(REDIS_IPS, PASSWORD.unmask())
    view = _view_cache["view"]
    if view.master:
        return f"{view.master}:{REDIS_PORT}"
    return cfg_master(host.get_fact(FileContents, path=CFG)) or f"{REDIS_IPS[0]}:{REDIS_PORT}"


@operation()
def validated_config(dest: str, content: str, check: str):
    """Install `content` at `dest` only after `check <candidate>` (haproxy -c) accepts it; atomic rename.

    Example:
        validated_config(name="Install haproxy.cfg", dest=CFG, content=text, check=CHECK)
    """
    import hashlib

    data = content.encode()
    if host.get_fact(Sha256File, path=dest) == hashlib.sha256(data).hexdigest():
        host.noop(f"{dest} is up to date")
        return
    tmp = f"{dest}.keybuzz-new"
    yield FileUploadCommand(BytesIO(data), tmp)
    # a refused candidate is removed and fails the operation: the old file stays in place
    yield StringCommand(f"chmod 644 {tmp} && {check} {tmp} || {{ rm -f {tmp}; exit 1; }}")
    yield StringCommand("mv", "-f", tmp, dest)


# --- packages, directories, scripts --------------------------------------------------------------------

if [p for p in PACKAGES if p not in host.get_fact(DebPackages)]:
    apt.update(name="Update the apt package lists")
apt.packages(name="Install redis-cli (redis-tools) and socat for redis-update-master.sh", packages=PACKAGES)

files.directory(name="Create /etc/keybuzz", path="/etc/keybuzz", user="root", group="root", mode="755")
files.directory(name=f"Create {HAPROXY_CONF_DIR}", path=HAPROXY_CONF_DIR, user="root", group="root", mode="755")
owned_directory(name=f"Create {HAPROXY_RUN_DIR} (sockets, haproxy user only)", path=HAPROXY_RUN_DIR,
                uid=HAPROXY_UID, gid=HAPROXY_UID, mode="750")

env_op = secret_file(name=f"Install {REDIS_ENV_FILE} (REDIS_PASSWORD for the Sentinel queries, root 0600)",
                     dest=REDIS_ENV_FILE, content=HiddenValue(env_file(PASSWORD.unmask())))
conf_op = files.put(name=f"Install {UPDATE_CONF_FILE}", src=StringIO(render_update_conf(REDIS_IPS, REDIS_IPS)),
                    dest=UPDATE_CONF_FILE, user="root", group="root", mode="644")
check_op = files.put(name=f"Install {CHECK} (haproxy -c with the pinned image)",
                     src=StringIO(render("haproxy/keybuzz-haproxy-check.j2", image=IMAGE)),
                     dest=CHECK, user="root", group="root", mode="755")
script_ops = [
    files.put(name=f"Install /usr/local/bin/{script}", src=str(TEMPLATES / script),
              dest=f"/usr/local/bin/{script}", user="root", group="root", mode="755")
    for script in ("redis-update-master.sh", "redis-master-watch.sh")
]

# --- HAProxy -------------------------------------------------------------------------------------------

unit = container_unit(
    "haproxy", IMAGE,
    command=f"haproxy -S {HAPROXY_RUN_DIR}/master.sock,mode,600 -f {CONTAINER_CFG_DIR}/haproxy.cfg",
    run_args=["-v", f"{HAPROXY_CONF_DIR}:{CONTAINER_CFG_DIR}:ro", "-v", f"{HAPROXY_RUN_DIR}:{HAPROXY_RUN_DIR}"],
    reload=f"/bin/sh -c '{CHECK} {CFG} && /usr/bin/docker kill -s USR2 haproxy'",
    description="KeyBuzz HAProxy (5432, 6432, 6379, 5672)",
)
cfg_op = validated_config(
    name="Install haproxy.cfg (validated with haproxy -c first)",
    dest=CFG, check=CHECK,
    content=render_haproxy_cfg(host.name, ME, redis_master_for_cfg(), db=ctx.addresses("db"),
                               rabbitmq=ctx.addresses("rabbitmq")),
)
restart_if("haproxy", *unit, serial=True)
server.shell(name="Reload haproxy (config changed; established connections stay)",
             commands=["systemctl reload haproxy"], _if=lambda: cfg_op.did_change() and not any_changed(*unit)())
# The master in haproxy.cfg was read from Sentinel when this file was evaluated: a failover since then
# would be undone by the reload. Ask Sentinel again now, under the script's own lock.
server.shell(name="Follow the current Redis master again after the reload (redis-update-master.sh)",
             commands=["/usr/local/bin/redis-update-master.sh"
                       " || echo 'redis-update-master.sh failed: the 15 s timer retries'"],
             _if=any_changed(cfg_op, *unit))

# --- §C follow-up: timer (boot + 15 s) and +switch-master watcher ----------------------------------------

units = [
    files.put(name=f"Install {name}", src=str(TEMPLATES / name), dest=f"/etc/systemd/system/{name}",
              user="root", group="root", mode="644")
    for name in ("redis-update-master.service", "redis-update-master.timer", "redis-master-watch.service")
]
systemd.daemon_reload(name="systemd daemon-reload (follow-up units)", _if=any_changed(*units))
systemd.service(name="Enable and start redis-update-master.timer", service="redis-update-master.timer",
                running=True, enabled=True)
systemd.service(name="Enable and start redis-master-watch", service="redis-master-watch", running=True, enabled=True)
server.shell(name="Restart redis-master-watch (its script, unit or settings changed)",
             commands=["systemctl restart redis-master-watch"],
             _if=any_changed(env_op, conf_op, *script_ops, *units))
