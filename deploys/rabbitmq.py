"""RabbitMQ quorum cluster on queue-01..03 (design §D): `pyinfra inventory.py deploys/rabbitmq.py`.

What it installs on each rabbitmq host, from the pinned image (versions.yaml `rabbitmq_image`):
  /opt/keybuzz/rabbitmq/conf/rabbitmq.conf        peers from the inventory (classic_config), pause_minority,
                                                  AMQP and management on the private address only
  /opt/keybuzz/rabbitmq/conf/enabled_plugins      management (the checks read its HTTP API)
  /opt/keybuzz/rabbitmq/conf/conf.d/20-keybuzz-user.conf   SECRET 0400: the application user
                                                  (RABBITMQ_USER/RABBITMQ_PASSWORD) created at first boot
                                                  instead of `guest`
  /opt/keybuzz/rabbitmq/data/.erlang.cookie       SECRET 0400: RABBITMQ_ERLANG_COOKIE
  /opt/keybuzz/rabbitmq/bin/keybuzz-rabbitmq      start / rolling restart / idempotent setup (no secret)
  rabbitmq.service                                docker run --network host, node rabbit@<inventory name>,
                                                  --add-host for every peer (names resolve without DNS)

Activation: a host whose config or image changed is restarted one at a time (`_serial`), only when
stopping it keeps every quorum queue's majority, and the next host waits until it is back in the
cluster. Stopped nodes are started together (a first install: peer discovery wants its peers up)
and each waits until it runs in a cluster with every peer that answers; a node that lost its data
and booted alone (empty) is taken back into the cluster by the node script (forget, reset, join,
quorum queues regrown). A node that was only down rejoins by itself when its host/service comes back.
Then, once for the cluster: users, vhosts (default queue type quorum), permissions, `guest` deleted.
A second run changes nothing.
"""

import shlex

from pyinfra import host
from pyinfra.api import FactBase, HiddenValue, operation
from pyinfra.operations import files, server, systemd
from pyinfra.operations.util import any_changed

from keybuzz.context import layer_context
from keybuzz.facts import ServiceActive, UserOfUid
from keybuzz.ops import container_unit, secret_file, template
from keybuzz.rabbitmq.settings import (
    BASE,
    CONF,
    DATA,
    RABBITMQ_UID,
    SCRIPT,
    USER_CONF,
    VHOSTS,
    WAIT_SECONDS,
    erl_dist_args,
)
from keybuzz.render import render


class RabbitmqSetupNeeded(FactBase):
    """What `keybuzz-rabbitmq setup` would change (one line per action); [] when all is in place.

    The script reads the password itself (from the 0400 user file): nothing secret passes here.
    Example: ["delete-guest", "vhost-queue-type /"]
    """

    def command(self, script):
        # a failing script must read as "something to do" (then `setup` fails loudly), never as "nothing"
        return f"if [ -x {script} ]; then {script} setup-needed || echo failed; else echo not-installed; fi"

    def process(self, output):
        return [line.strip() for line in output if line.strip()]


@operation()
def node_restarted(script: str):
    """Rolling restart of a running node (the script waits for quorum safety and the rejoin).

    Called with `_if=<something changed>` and `_serial=True`; a node that is not running is left
    to `node_started` (starting it is enough to pick up the new definition).
    """
    if not host.get_fact(ServiceActive, service="rabbitmq"):
        host.noop("rabbitmq is not running: started by the next operation")
        return
    yield f"{script} restart"


@operation()
def node_started(script: str):
    """Start a stopped node and wait until it runs and has joined the nodes that answer."""
    if host.get_fact(ServiceActive, service="rabbitmq"):
        host.noop("rabbitmq is running")
        return
    yield f"{script} start"


@operation()
def cluster_setup(script: str):
    """Application user, vhosts with quorum as default queue type, permissions, no `guest`."""
    needed = host.get_fact(RabbitmqSetupNeeded, script=script)
    if not needed:
        host.noop("users, vhosts and permissions are in place")
        return
    yield f"{script} setup"


def deploy() -> None:
    """The whole layer for the current host (see the module docstring)."""
    ctx = layer_context("rabbitmq")
    creds = ctx.secrets("rabbitmq")
    peers = ctx.addresses("rabbitmq")
    image = ctx.image("rabbitmq_image")
    private_ip = host.data.private_ip

    # Files the container reads belong to uid 999 (owner-only modes: the group does not matter).
    # pyinfra compares owners by NAME, so use the host's name for that uid, creating one if none.
    owner = host.get_fact(UserOfUid, uid=RABBITMQ_UID)
    if owner is None:
        owner = "keybuzz-rabbitmq"
        server.user(name="Host account for the rabbitmq container's uid", user=owner, uid=int(RABBITMQ_UID),
                    system=True, shell="/usr/sbin/nologin", home="/nonexistent", create_home=False)

    for path, mode in ((BASE, "755"), (f"{BASE}/bin", "755"), (CONF, "755"), (f"{CONF}/conf.d", "755")):
        files.directory(name=f"Directory {path}", path=path, user="root", group="root", mode=mode)
    files.directory(name=f"Directory {DATA}", path=DATA, user=owner, group="root", mode="750")

    conf = template("rabbitmq/rabbitmq.conf.j2", f"{CONF}/rabbitmq.conf", peers=[name for name, _ in peers],
                    private_ip=private_ip)
    plugins = template("rabbitmq/enabled_plugins", f"{CONF}/enabled_plugins")
    # The user file only matters at the cluster's first boot (later changes go through `setup`),
    # so a changed password never restarts a node.
    secret_file(
        name="Application user (conf.d/20-keybuzz-user.conf)",
        dest=USER_CONF,
        content=HiddenValue(render("rabbitmq/keybuzz-user.conf.j2", user=creds["RABBITMQ_USER"].unmask(),
                                   password=creds["RABBITMQ_PASSWORD"].unmask())),
        user=owner, group="root", mode="400",
    )
    cookie = secret_file(
        name="Erlang cookie", dest=f"{DATA}/.erlang.cookie", content=creds["RABBITMQ_ERLANG_COOKIE"],
        user=owner, group="root", mode="400",
    )
    template("rabbitmq/keybuzz-rabbitmq.sh.j2", SCRIPT, mode="700", peers=[name for name, _ in peers],
             vhosts=VHOSTS, user_conf=USER_CONF, wait_seconds=WAIT_SECONDS, uid=RABBITMQ_UID)

    run_args = [
        "--user", RABBITMQ_UID,
        "-e", f"RABBITMQ_NODENAME=rabbit@{host.name}",
        # epmd and the Erlang distribution on the private address only (with host networking they would
        # listen on every interface, the public one included), distribution on one fixed port
        "-e", f"ERL_EPMD_ADDRESS={private_ip}",
        "-e", shlex.quote(f"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS={erl_dist_args(private_ip)}"),
        # peers resolve by the names of the inventory, whatever the hosts' DNS or /etc/hosts say
        *[arg for name, ip in peers for arg in ("--add-host", f"{name}:{ip}")],
        "-v", f"{CONF}:/etc/rabbitmq:ro",
        "-v", f"{DATA}:/var/lib/rabbitmq",
    ]
    unit = container_unit("rabbitmq", image, command="rabbitmq-server", run_args=run_args,
                          description="KeyBuzz RabbitMQ quorum node", stop_timeout=60)

    changed = (conf, plugins, cookie, *unit)
    systemd.daemon_reload(name="systemd daemon-reload", _if=any_changed(*unit))
    node_restarted(name="Rolling restart of rabbitmq (its definition changed)", script=SCRIPT,
                   _if=any_changed(*changed), _serial=True)
    # NOT serial: a virgin node waits (peer discovery retries) for the other listed nodes before it
    # forms or joins the cluster, so the first start must bring the three up together.
    node_started(name="Start rabbitmq and wait until it joined", script=SCRIPT)
    systemd.service(name="rabbitmq enabled at boot", service="rabbitmq", enabled=True)
    cluster_setup(name="Users, vhosts (quorum by default), permissions, no guest", script=SCRIPT, _run_once=True)


deploy()
