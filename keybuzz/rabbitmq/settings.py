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


def render_haproxy_block(nodes: list[tuple[str, str]], **_runtime) -> str:
    """This layer's frontend and backend in haproxy.cfg: be_rabbitmq, round-robin over the three nodes (§D)."""
    return render("rabbitmq/haproxy.cfg.j2", nodes=nodes)


def erl_dist_args(private_ip: str) -> str:
    """Erlang VM arguments binding the distribution (node-to-node) listener to `private_ip` on DIST_PORT only.

    >>> erl_dist_args("10.0.0.126")
    '-kernel inet_dist_use_interface {10,0,0,126} -kernel inet_dist_listen_min 25672 -kernel inet_dist_listen_max 25672'
    """
    ip_tuple = "{" + private_ip.replace(".", ",") + "}"
    return (f"-kernel inet_dist_use_interface {ip_tuple} -kernel inet_dist_listen_min {DIST_PORT} "
            f"-kernel inet_dist_listen_max {DIST_PORT}")
