"""Checks of the RabbitMQ quorum cluster (design §D, §G): `invoke check --name rabbitmq [--failover] [--perf]`.

    diag      members (3 running, one cluster, no partition), alarms, vhost default queue type,
              quorum queues with their leader and online members, a round trip through the LB
    failover  stops the node holding a check queue's leader (systemctl stop over SSH), measures the
              publish gap seen through the LB, checks that no confirmed message is lost, starts
              the node again and waits for 3 members
    perf      bounded confirmed publish then consume through the LB (messages/s)

Nodes are read through their management HTTP API on the private network (port 15672) with the
application user (tag `monitoring`); AMQP goes through the LB address (`Target.lb`: 10.0.0.10 in
production, the lab's stand-in in the lab). No secret is ever printed.

Example::

    print(diag(Target.from_env()))
"""

from __future__ import annotations

import statistics
import threading
import time

from keybuzz import ssh
from keybuzz.checks import Report, Target
from keybuzz.rabbitmq.client import (
    RETRYABLE,
    ConfirmedPublisher,
    Consumer,
    Endpoint,
    Management,
    delete_queue,
    leader_of,
    place_on_node,
    wait_members,
)
from keybuzz.rabbitmq.settings import AMQP_PORT, VHOSTS

GAP_TARGET_S = 10.0  # issue 5: publish gap through the LB when the leader's node dies
CHECK_QUEUE = "keybuzz.check"


def _nodes(target: Target) -> list[tuple[str, str]]:
    return [(s.name, s.ip) for s in target.plan.group("rabbitmq")]


def _creds(target: Target):
    creds = target.secrets("rabbitmq")
    return creds["RABBITMQ_USER"].unmask(), creds["RABBITMQ_PASSWORD"]


def _apis(target: Target) -> list[Management]:
    user, password = _creds(target)
    return [Management(ip, user, password, timeout=5) for _, ip in _nodes(target)]


def _lb(target: Target) -> Endpoint:
    user, password = _creds(target)
    return Endpoint(target.lb, AMQP_PORT, user, password)


def _members(report: Report, target: Target) -> list[str]:
    """Adds the membership lines; returns the running members seen by the first node that answers."""
    expected = sorted(f"rabbit@{name}" for name, _ in _nodes(target))
    seen_by: dict[str, list[str]] = {}
    for (name, ip), api in zip(_nodes(target), _apis(target), strict=True):
        try:
            nodes = api.nodes()
        except RETRYABLE + (ValueError,) as e:
            report.add(f"{name} ({ip}): management API unreachable ({type(e).__name__})", ok=False)
            continue
        running = sorted(n["name"] for n in nodes if n.get("running"))
        seen_by[name] = running
        for n in nodes:
            if n["name"] != f"rabbit@{name}":
                continue
            alarms = [a for a, on in (("memory", n.get("mem_alarm")), ("disk", n.get("disk_free_alarm"))) if on]
            parts = n.get("partitions") or []
            report.add(f"{n['name']}: running, alarms: {', '.join(alarms) or 'none'}, partitions: "
                       f"{', '.join(parts) or 'none'}", ok=not alarms and not parts)
    if not seen_by:
        return []
    views = {tuple(v) for v in seen_by.values()}
    first = next(iter(seen_by.values()))
    report.add(f"members running: {', '.join(first)} ({len(first)}/{len(expected)})",
               ok=len(views) == 1 and first == expected)
    if len(views) > 1:
        report.add(f"nodes disagree on the cluster: {seen_by}", ok=False)
    return first


def _queues(report: Report, apis: list[Management]) -> None:
    """Vhost default queue type, then every quorum queue with its leader and online members."""
    for api in apis:
        try:
            vhosts = {v["name"]: v for v in api.vhosts()}
            queues = api.queues()
            break
        except RETRYABLE + (ValueError,):
            continue
    else:
        report.add("no node answered for vhosts/queues", ok=False)
        return
    for name in VHOSTS:
        v = vhosts.get(name, {})
        dqt = v.get("default_queue_type") or (v.get("metadata") or {}).get("default_queue_type")
        report.add(f"vhost {name}: default queue type {dqt}", ok=dqt == "quorum")
    quorum = [q for q in queues if q.get("type") == "quorum"]
    others = [q for q in queues if q.get("type") != "quorum"]
    report.add(f"quorum queues: {len(quorum)}; other queues: {len(others)}")
    for q in quorum[:50]:
        members, online = q.get("members") or [], q.get("online") or []
        leader = q.get("leader") or "none"
        report.add(f"  {q['vhost']} {q['name']}: leader {leader}, online {len(online)}/{len(members)} "
                   f"({', '.join(sorted(online))})", ok=leader != "none" and len(online) * 2 > len(members))
    if len(quorum) > 50:
        report.add(f"  ... {len(quorum) - 50} more")


def diag(target: Target) -> Report:
    """Members, alarms, partitions, default queue type, quorum queues, AMQP round trip through the LB."""
    report = Report("rabbitmq diag")
    _members(report, target)
    _queues(report, _apis(target))
    queue = f"{CHECK_QUEUE}.diag"
    try:
        start = time.monotonic()
        result = ConfirmedPublisher(_lb(target), queue).run(count=1, seconds=15)
        consumer = Consumer(_lb(target), queue).start()
        missing = consumer.wait_for(result.confirmed, seconds=15)
        consumer.stop()
        delete_queue(_lb(target), queue)
        report.add(f"AMQP through {target.lb}:{AMQP_PORT}: publish (confirmed) + consume in "
                   f"{time.monotonic() - start:.2f}s", ok=len(result.confirmed) == 1 and not missing)
    except RETRYABLE as e:
        report.add(f"AMQP through {target.lb}:{AMQP_PORT} failed: {type(e).__name__}", ok=False)
    return report


def failover(target: Target, settle_seconds: float = 180) -> Report:
    """Stop the node holding the check queue's leader, measure the publish gap through the LB,
    check no confirmed message is lost, start the node again and wait for 3 members."""
    report = Report("rabbitmq failover")
    apis = _apis(target)
    nodes = _nodes(target)
    if len(wait_members(apis, len(nodes), 10)) < len(nodes):
        report.add("not every member is running: a controlled failover would risk quorum; not done", ok=False)
        return report
    queue = f"{CHECK_QUEUE}.failover"
    endpoint = _lb(target)
    ConfirmedPublisher(endpoint, queue).run(count=1, seconds=30)
    leader = leader_of(apis, queue)
    if leader is None:
        report.add(f"queue {queue} has no leader", ok=False)
        return report
    victim = leader.split("@", 1)[1]
    victim_ip = dict(nodes)[victim]
    publisher = ConfirmedPublisher(endpoint, queue, name="keybuzz-check-failover")
    placed = place_on_node(publisher, leader, apis) == leader
    consumer = Consumer(endpoint, queue).start()
    stop = threading.Event()
    worker = threading.Thread(target=publisher.run, kwargs={"seconds": 240, "stop": stop}, daemon=True)
    worker.start()
    stopped = False
    try:
        if not _wait(lambda: len(publisher.result.confirmed) >= 200, 30):
            # never stop a node when publishing through the LB does not even work
            report.add("publishing through the LB does not work: no node stopped", ok=False)
            stop.set()
            worker.join(30)
            consumer.stop()
            return report
        at_stop = len(publisher.result.confirmed)
        began = time.monotonic()
        answer = ssh.run(victim_ip, "systemctl stop rabbitmq")
        stopped = answer.returncode == 0
        report.add(f"stopped rabbitmq on {victim} (leader of {queue}; publisher connected to it: {placed}) "
                   f"in {time.monotonic() - began:.1f}s", ok=stopped)
        resumed = _wait(lambda: len(publisher.result.confirmed) >= at_stop + 200, 60)
        report.add("publisher resumed through the LB" if resumed else "publisher did not resume within 60s",
                   ok=resumed)
    finally:
        try:
            if stopped:
                ssh.run(victim_ip, "systemctl start rabbitmq")
            members = wait_members(apis, len(nodes), settle_seconds)
        finally:
            stop.set()
            worker.join(30)
    result = publisher.result
    try:
        missing = consumer.wait_for(result.confirmed, seconds=60)
    finally:
        consumer.stop()
    report.add(f"publish gap {result.max_gap:.2f}s (target <= {GAP_TARGET_S:.0f}s), reconnects {result.reconnects}",
               ok=result.max_gap <= GAP_TARGET_S)
    report.add(f"confirmed {len(result.confirmed)}, lost {len(missing)}, duplicates "
               f"{consumer.deliveries - len(consumer.received)}", ok=not missing)
    report.add(f"members after restart: {len(members)}/{len(nodes)}", ok=len(members) == len(nodes))
    report.metrics.update(gap_s=round(result.max_gap, 3), lost=len(missing), confirmed=len(result.confirmed))
    try:
        delete_queue(endpoint, queue)
    except RETRYABLE:
        pass
    return report


def perf(target: Target, messages: int = 5000, seconds: float = 30, publishers: int = 4) -> Report:
    """Bounded load through the LB: `publishers` confirmed publishers (one message in flight each),
    then one consumer draining the queue; messages/s for each side."""
    report = Report("rabbitmq perf")
    endpoint = _lb(target)
    queue = f"{CHECK_QUEUE}.perf"
    each = messages // publishers
    results = []

    def publish(k: int) -> None:
        results.append(ConfirmedPublisher(endpoint, queue).run(count=each, seconds=seconds, ids_from=k * each))

    began = time.monotonic()
    threads = [threading.Thread(target=publish, args=(k,), daemon=True) for k in range(publishers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    publish_s = time.monotonic() - began
    confirmed = [i for r in results for i in r.confirmed]
    latencies = [r.seconds / len(r.confirmed) for r in results if r.confirmed]
    report.add(f"publish (confirmed, {publishers} connections): {len(confirmed)} msgs in {publish_s:.1f}s = "
               f"{len(confirmed) / publish_s:.0f} msg/s, mean confirm latency "
               f"{1000 * statistics.mean(latencies) if latencies else 0:.1f} ms",
               ok=len(confirmed) == each * publishers)
    began = time.monotonic()
    consumer = Consumer(endpoint, queue, prefetch=500).start()
    missing = consumer.wait_for(confirmed, seconds=seconds + 30)
    consume_s = time.monotonic() - began
    consumer.stop()
    report.add(f"consume: {len(consumer.received)} msgs in {consume_s:.1f}s = {len(consumer.received) / consume_s:.0f}"
               f" msg/s, missing {len(missing)}", ok=not missing)
    report.metrics.update(publish_rate=len(confirmed) / publish_s, consume_rate=len(consumer.received) / consume_s)
    try:
        delete_queue(endpoint, queue)
    except RETRYABLE:
        pass
    return report


def _wait(predicate, seconds: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()

