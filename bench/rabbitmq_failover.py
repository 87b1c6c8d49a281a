"""Benchmark: publish gap through the load balancer when the quorum queue leader's node dies (design §D).

On a throw-away testbed (keybuzz/rabbitmq/testbed.py: queue-01..03 from the project's templates,
HAProxy from templates/haproxy/haproxy.cfg.j2), for each kill:
  1. a confirmed publisher streams to one quorum queue through HAProxy, a consumer drains it;
  2. the node holding the queue's leader is SIGKILLed (docker kill);
  3. gap = longest time between two consecutive confirms; then the node is started again and the
     cluster waited back to 3 members before the next kill;
  4. loss = confirmed ids the consumer never received (must be 0; duplicates are allowed).

Two placements of the publisher's connection: `same` (on the leader's node: the worst case, the
client must reconnect) and `other` (on another node: only the leader election is seen).

    .venv/bin/python bench/rabbitmq_failover.py --kills 3          # prints a Markdown table
    .venv/bin/python bench/rabbitmq_failover.py --lab --kills 10 --placements same   # the lab's hosts instead
Target (issue 5): gap <= 10 s, loss 0. Traffic goes only to the testbed's own containers.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from keybuzz.haproxy.client import servers_up  # noqa: E402
from keybuzz.rabbitmq.client import (  # noqa: E402
    ConfirmedPublisher,
    Consumer,
    Endpoint,
    Management,
    delete_queue,
    place_on_node,
)
from keybuzz.rabbitmq.settings import NET_SETUPTIME  # noqa: E402
from keybuzz.rabbitmq.testbed import NAMES, Testbed, wait_for  # noqa: E402

TARGET_GAP_S = 10.0


class LabCluster:
    """The lab's queue-01..03 behind its LB stand-in, with the Testbed methods one_kill uses (`--lab`): a kill
    is the whole host's container SIGKILLed (a power cut), the deploy's settings are the lab's."""

    def __init__(self):
        from keybuzz import credentials
        from keybuzz.lab import lab

        self.lab = lab
        self.hosts = {h.name: h.ip for h in lab.TOPOLOGY if h.role == "rabbitmq"}
        self.haproxy_ips = [h.ip for h in lab.TOPOLOGY if h.role == "haproxy"]
        with lab.lab_environ():
            c = credentials.load("rabbitmq")
        self.user, self.password = c["RABBITMQ_USER"].unmask(), c["RABBITMQ_PASSWORD"]

    def lb_endpoint(self) -> Endpoint:
        return Endpoint(self.lab.LB_IP, 5672, self.user, self.password)

    def apis(self) -> list[Management]:
        return [Management(ip, self.user, self.password, timeout=3) for ip in self.hosts.values()]

    # the Testbed's own: they only ask apis()
    leader_index = Testbed.leader_index
    wait_cluster = Testbed.wait_cluster

    def kill(self, i: int) -> None:
        self.lab.kill_host(NAMES[i])

    def revive(self, i: int) -> None:
        self.lab.start_host(NAMES[i])

    def wait_healthy(self, seconds: float = 240) -> None:
        """3 running members AND both HAProxy hosts sending to all 3."""
        self.wait_cluster(3, seconds)
        wait_for(lambda: all(len(servers_up(ip, "be_rabbitmq") or []) == 3 for ip in self.haproxy_ips), 60, 0.5,
                 "both HAProxy hosts see 3 RabbitMQ servers UP")


def one_kill(tb: Testbed | LabCluster, run: int, placement: str, redeclare: bool = True) -> dict:
    """One kill of the leader's node with the publisher placed `same` / `other`; returns the measures."""
    queue = f"kb.bench.failover.{placement}.{run}"
    endpoint = tb.lb_endpoint()
    tb.wait_healthy()  # the previous victim is back in the cluster AND in HAProxy's rotation
    ConfirmedPublisher(endpoint, queue).run(count=1, seconds=30, ids_from=1_000_000)  # out of the measured ids
    victim = tb.leader_index(queue)
    target = victim if placement == "same" else (victim + 1) % len(NAMES)
    consumer = Consumer(endpoint, queue).start()
    publisher = ConfirmedPublisher(endpoint, queue, name=f"kb-bench-{placement}-{run}", redeclare=redeclare)
    landed = place_on_node(publisher, f"rabbit@{NAMES[target]}", tb.apis())
    # the row is labelled by where the connection really was (rarely not where it was asked to be)
    placement = "same" if landed == f"rabbit@{NAMES[victim]}" else "other"
    stop = threading.Event()
    worker = threading.Thread(target=publisher.run, kwargs={"seconds": 150, "stop": stop}, daemon=True)
    started = time.monotonic()  # the publisher's run starts here: its errors and gaps are timed from it
    worker.start()
    try:
        wait_for(lambda: len(publisher.result.confirmed) >= 300, 30, 0.1, "300 confirms before the kill")
        at_kill = len(publisher.result.confirmed)
        killed = time.monotonic() - started
        tb.kill(victim)
        wait_for(lambda: len(publisher.result.confirmed) >= at_kill + 300, 60, 0.1, "300 confirms after the kill")
        tb.revive(victim)
        tb.wait_cluster(3, 180)
        time.sleep(1)
    finally:
        stop.set()
        worker.join(30)
    result = publisher.result
    missing = consumer.wait_for(result.confirmed, seconds=60)
    consumer.stop()
    delete_queue(endpoint, queue)
    return {"placement": placement, "victim": NAMES[victim], "gap": result.max_gap, "confirmed": len(result.confirmed),
            "lost": len(missing), "duplicates": consumer.deliveries - len(consumer.received),
            "reconnects": result.reconnects,
            # the timeline around the kill (s after it): the publisher's errors and its gaps over 1 s
            "errors": [f"{float(e.split('s', 1)[0]) - killed:+.2f}s{e.split('s', 1)[1]}" for e in result.errors],
            "gaps": [(round(start - killed, 2), round(length, 2)) for start, length in result.gaps]}


def table(rows: list[dict]) -> str:
    """Markdown summary: per placement, p50 / max gap and the confirmed-message loss."""
    lines = ["| publisher's connection | kills | gap p50 (s) | gap max (s) | confirmed | lost | duplicates |",
             "|---|---|---|---|---|---|---|"]
    for placement, label in (("same", "on the leader's node (reconnects)"), ("other", "on another node")):
        chosen = [r for r in rows if r["placement"] == placement]
        if not chosen:
            continue
        gaps = [r["gap"] for r in chosen]
        lines.append(f"| {label} | {len(chosen)} | {statistics.median(gaps):.2f} | {max(gaps):.2f} | "
                     f"{sum(r['confirmed'] for r in chosen)} | {sum(r['lost'] for r in chosen)} | "
                     f"{sum(r['duplicates'] for r in chosen)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=3, help="kills per placement (>= 3)")
    parser.add_argument("--lab", action="store_true",
                        help="the lab's cluster (rabbitmq + haproxy deployed): whole hosts SIGKILLed, no testbed")
    parser.add_argument("--placements", default="same,other", help="same,other")
    parser.add_argument("--haproxy-defaults", action="append", default=[],
                        help="experiment: extra line for HAProxy's defaults section (e.g. 'option redispatch')")
    parser.add_argument("--erl-args", default=NET_SETUPTIME,
                        help=f"each node's RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS (default: {NET_SETUPTIME!r})")
    parser.add_argument("--no-redeclare", action="store_true",
                        help="declare the queue on the first connection only (not after each reconnect)")
    args = parser.parse_args(argv)
    # SIGTERM (timeout, CI cancel) -> SystemExit, so the testbed's containers and network are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rows = []

    def kills(cluster: Testbed | LabCluster) -> None:
        for placement in args.placements.split(","):
            for run in range(args.kills):
                row = one_kill(cluster, run, placement, redeclare=not args.no_redeclare)
                rows.append(row)
                print(f"kill {placement} #{run + 1}: {row}", flush=True)

    if args.lab:
        if args.haproxy_defaults or args.erl_args != NET_SETUPTIME:
            parser.error("--lab runs what the lab deployed: --haproxy-defaults and --erl-args are testbed options")
        kills(LabCluster())
    else:
        with Testbed(haproxy_defaults_extra=tuple(args.haproxy_defaults), erl_args=args.erl_args) as tb:
            tb.wait_cluster(3, 240)
            tb.setup()
            tb.wait_healthy()
            kills(tb)
    print()
    print(table(rows))
    worst = max(r["gap"] for r in rows)
    lost = sum(r["lost"] for r in rows)
    print(f"\ntarget gap <= {TARGET_GAP_S:.0f} s: {'met' if worst <= TARGET_GAP_S else 'MISSED'} (max {worst:.2f} s); "
          f"confirmed messages lost: {lost}")
    return 0 if worst <= TARGET_GAP_S and lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
