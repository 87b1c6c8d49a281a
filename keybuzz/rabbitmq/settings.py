"""Settings of the RabbitMQ layer (design §D): where things live on the queue hosts, ports, and this layer's
block of haproxy.cfg (be_rabbitmq exactly as §D).

    >>> "balance roundrobin" in render_haproxy_block([("queue-01", "10.0.0.126")])
    True
"""

from __future__ import annotations

from keybuzz.render import render

AMQP_PORT = 5672
MANAGEMENT_PORT = 15672
DIST_PORT = 25672  # Erlang distribution between the nodes (epmd: 4369)
# to the private network (base OS firewall): AMQP, management, epmd, distribution, CLI tools' distribution
OPEN_PORTS = ("tcp/5672", "tcp/15672", "tcp/4369", "tcp/25672", "tcp/35672-35682")
BASE = "/opt/keybuzz/rabbitmq"
CONF = f"{BASE}/conf"
DATA = f"{BASE}/data"
SCRIPT = f"{BASE}/bin/keybuzz-rabbitmq"
# what the base OS layer waits for after restarting dockerd here (keybuzz.layers.host_ready_commands)
HOST_READY = f"[ ! -x {SCRIPT} ] || {SCRIPT} ready"  # this node running in the cluster of its live peers
USER_CONF = f"{CONF}/conf.d/20-keybuzz-user.conf"
# uid of the rabbitmq user in the pinned image (official rabbitmq images and the lab image alike);
# only the uid matters: every file it reads is owner-only.
RABBITMQ_UID = "999"
# The KeyBuzz vhost(s): quorum is their default queue type (a queue declared without x-queue-type
# is a quorum queue); the application user gets full permissions on them.
VHOSTS = ("/",)
# Bound of every wait of the node script (boot, join, quorum-critical): a stuck node fails the run.
WAIT_SECONDS = 300


# Server options of be_rabbitmq, added through its own `defaults` section (keybuzz.haproxy.settings): §D stays
# verbatim. Its three nodes are interchangeable (a client may use any), so a node whose connect fails is taken
# out at the first failed connection of real traffic, not after two failed checks (issue 16: a new connection
# to a SIGKILLed node failed for up to 1.07 s before). Its checks bring it back (rise 2). Not on the one-server
# backends (Redis master, Patroni primary), where one failed connect would cut every session of the service.
HAPROXY_DEFAULT_SERVER = "observe layer4 error-limit 1 on-error mark-down"


def render_haproxy_block(nodes: list[tuple[str, str]], **_runtime) -> str:
    """This layer's frontend and backend in haproxy.cfg: be_rabbitmq, round-robin over the three nodes (§D)."""
    return render("rabbitmq/haproxy.cfg.j2", nodes=nodes)


# Erlang's bound on each step of setting up a node-to-node connection (default 7 s). When a node dies, a
# channel on a live node can still send its first message to the dead queue leader: Erlang then tries to
# connect to the dead host and the publish waits this long for its confirm (issue 16: 7.2 s gaps with 7, 2.2 s
# with 2, measured by bench/rabbitmq_failover.py). A private network answers in well under a millisecond.
NET_SETUPTIME = "-kernel net_setuptime 1"


def erl_dist_args(private_ip: str) -> str:
    """Erlang VM arguments: the distribution (node-to-node) listener on `private_ip` and DIST_PORT only, and
    NET_SETUPTIME.

    >>> erl_dist_args("10.0.0.126")  # doctest: +NORMALIZE_WHITESPACE
    '-kernel inet_dist_use_interface {10,0,0,126} -kernel inet_dist_listen_min 25672
     -kernel inet_dist_listen_max 25672 -kernel net_setuptime 1'
    """
    ip_tuple = "{" + private_ip.replace(".", ",") + "}"
    return (f"-kernel inet_dist_use_interface {ip_tuple} -kernel inet_dist_listen_min {DIST_PORT} "
            f"-kernel inet_dist_listen_max {DIST_PORT} {NET_SETUPTIME}")
