"""Settings of the HAProxy layer (design §A): paths, ports, and haproxy.cfg = this layer's global, defaults
and stats sections + the frontend/backend block of every layer it fronts (each layer renders its own:
`keybuzz.<layer>.settings.render_haproxy_block(nodes, **runtime)`, from templates/<layer>/haproxy.cfg.j2).

    >>> cfg_master(["backend be_redis_master", "    server redis-master 10.0.0.21:6379 check"])
    '10.0.0.21:6379'
"""

from __future__ import annotations

import importlib
import inspect
import ipaddress

from keybuzz.redis.settings import MASTER_NAME, REDIS_ENV_FILE, SENTINEL_PORT, valid_addr
from keybuzz.render import render

STATS_PORT = 8404
# to the private network (base OS firewall): the LB's ports (§A) and the stats page
OPEN_PORTS = ("tcp/5432", "tcp/6432", "tcp/6379", "tcp/5672", "tcp/8404")
HAPROXY_UID = "99"  # user haproxy of the official image (and of the lab image)
HAPROXY_ROOT = "/opt/keybuzz/haproxy"
CONF_DIR = f"{HAPROXY_ROOT}/conf"  # mounted at /usr/local/etc/haproxy (a directory: atomic renames work)
RUN_DIR = f"{HAPROXY_ROOT}/run"  # master CLI + admin socket, mounted at the same path
CONTAINER_CFG_DIR = "/usr/local/etc/haproxy"
CFG = f"{CONF_DIR}/haproxy.cfg"
CHECK_TOOL = "/usr/local/sbin/keybuzz-haproxy-check"
UPDATE_CONF_FILE = "/etc/keybuzz/redis-update-master.conf"
# after a restart, the next HAProxy host restarts only once this one serves again (its stats listener is bound
# with the others, from the new configuration); bounded
READY_COMMAND = (f"timeout 60 bash -c 'until (exec 3<>/dev/tcp/127.0.0.1/{STATS_PORT}) 2>/dev/null; "
                 "do sleep 0.2; done'")
# what the base OS layer waits for after restarting dockerd here (keybuzz.layers.host_ready_commands)
HOST_READY = f"! systemctl is-enabled -q haproxy 2>/dev/null || {READY_COMMAND}"
# redis-update-master.sh's root-only runtime directory (lock, state, temporary files): the deploy installs
# haproxy.cfg under the same lock, so the two never race on it (issue 10 §4)
UPDATE_RUN_DIR = "/run/keybuzz-redis-update"
UPDATE_LOCK = f"{UPDATE_RUN_DIR}/lock"
# the layers whose frontends HAProxy carries, in the order of haproxy.cfg (design §A: 5432, 6432, 6379, 5672)
FRONTED = ("db", "redis", "rabbitmq")


# The name of haproxy.cfg's common `defaults` section (templates/haproxy/haproxy.cfg.j2).
DEFAULTS = "keybuzz"


def render_haproxy_block(layer: str, nodes: list[tuple[str, str]], **runtime) -> str:
    """The frontend/backend block of `layer` (its own settings module renders it), behind a `defaults` section
    of its own that inherits the common one and adds the layer's `HAPROXY_DEFAULT_SERVER` (server options of
    every backend of that layer). That is how a layer adds settings without touching the design's verbatim
    §C/§D blocks, and why they never leak into the next layer's block (a proxy takes the last `defaults`
    above it).

    >>> render_haproxy_block("rabbitmq", [("queue-01", "10.0.0.126")]).splitlines()[:2]
    ['defaults rabbitmq from keybuzz', '    default-server observe layer4 error-limit 1 on-error mark-down']
    """
    settings = importlib.import_module(f"keybuzz.{layer}.settings")
    block = settings.render_haproxy_block
    params = inspect.signature(block).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    server_options = getattr(settings, "HAPROXY_DEFAULT_SERVER", "")
    head = f"defaults {layer} from {DEFAULTS}\n" + (f"    default-server {server_options}\n" if server_options else "")
    return head + "\n" + block(nodes, **{k: v for k, v in runtime.items() if takes_all or k in params})


def render_haproxy_cfg(hostname: str, private_ip: str, fronted: dict[str, list[tuple[str, str]]],
                       private_network: str | None = None, run_dir: str = RUN_DIR, **runtime) -> str:
    """haproxy.cfg of one HAProxy node. `fronted`: layer -> its nodes [(name, ip)], in FRONTED order;
    `runtime`: what a block needs from the running cluster (redis_master='ip:6379').

    `private_network` (who may open the stats page) defaults to the /24 of `private_ip`.
    """
    network = private_network or str(ipaddress.ip_network(f"{private_ip}/24", strict=False))
    blocks = [render_haproxy_block(layer, fronted[layer], **runtime) for layer in FRONTED if layer in fronted]
    return render("haproxy/haproxy.cfg.j2", hostname=hostname, private_ip=private_ip, private_network=network,
                  stats_port=STATS_PORT, run_dir=run_dir, blocks=blocks, defaults=DEFAULTS)


def cfg_master(lines: list[str] | None) -> str | None:
    """'ip:port' of `server redis-master` in backend be_redis_master of a haproxy.cfg (lines), else None."""
    in_backend = False
    for line in lines or []:
        words = line.split()
        if words and words[0] in ("backend", "frontend", "listen", "defaults", "global"):
            in_backend = words[:2] == ["backend", "be_redis_master"]
        elif in_backend and words[:2] == ["server", "redis-master"] and len(words) > 2:
            return words[2] if valid_addr(words[2]) else None
    return None


def render_update_conf(sentinels: list[str], redis_nodes: list[str], **overrides: str) -> str:
    """/etc/keybuzz/redis-update-master.conf (no secret): what the update and watch scripts need.

    Example::

        render_update_conf(["10.0.0.21"], ["10.0.0.21"], HAPROXY_RELOAD_CMD="kill -USR2 1")
    """
    values = {
        "SENTINELS": " ".join(sentinels),
        "REDIS_NODES": " ".join(redis_nodes),
        "MASTER_NAME": MASTER_NAME,
        "SENTINEL_PORT": str(SENTINEL_PORT),
        "HAPROXY_CFG": f"{CONF_DIR}/haproxy.cfg",
        "HAPROXY_MASTER_SOCKET": f"{RUN_DIR}/master.sock",
        "REDIS_ENV_FILE": REDIS_ENV_FILE,
        **overrides,
    }
    return render("haproxy/redis-update-master.conf.j2", values=values)


