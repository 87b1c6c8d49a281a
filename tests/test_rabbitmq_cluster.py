"""RabbitMQ quorum cluster behind HAProxy (design §D) on real containers: queue-01..03 started from the
project's rendered rabbitmq templates, set up by the deploy's own node script, HAProxy from
templates/haproxy/haproxy.cfg.j2 (keybuzz/rabbitmq/testbed.py).

Tests share one testbed (module fixture) and each leaves it healthy (3 running members). About 2-3
minutes on 2 cores.
"""

from __future__ import annotations

import subprocess
import threading
import time

import pika
import pytest

from helpers import write_tsv  # noqa: E402
from keybuzz.rabbitmq.client import (  # noqa: E402
    ConfirmedPublisher,
    Consumer,
    connect,
    delete_queue,
    place_on_node,
    running_members,
)
from keybuzz.rabbitmq.testbed import NAMES, USER, Testbed, wait_for  # noqa: E402

# Issue 5 target: publish gap through the load balancer when the leader's node dies.
GAP_TARGET_S = 10.0


@pytest.fixture(scope="module")
def tb():
    with Testbed() as testbed:
        testbed.wait_cluster(3, 240)
        testbed.setup()
        testbed.wait_healthy()
        yield testbed


def _heal(tb: Testbed) -> None:
    for i in range(len(NAMES)):
        tb.revive(i)
    tb.wait_healthy()


def _queue_info(tb: Testbed, queue: str) -> dict:
    return wait_for(lambda: next(api.queue(queue) for api in tb.apis()), 30, what=f"queue {queue} visible")


def test_three_nodes_form_one_cluster_from_the_inventory_peers(tb):
    members = tb.wait_cluster(3)
    assert members == [f"rabbit@{n}" for n in NAMES]
    # every node sees the same 3 members: one cluster, not three
    for api in tb.apis():
        assert sorted(n["name"] for n in api.nodes()) == members
    status = tb.ctl(1, "rabbitmqctl", "-q", "eval", "application:get_env(rabbit, cluster_partition_handling).")
    assert "pause_minority" in status.stdout


def test_management_and_amqp_listen_on_the_private_address_only(tb):
    listeners = tb.ctl(0, "rabbitmq-diagnostics", "-q", "listeners").stdout
    amqp = [line for line in listeners.splitlines() if "amqp" in line and "5672" in line]
    http = [line for line in listeners.splitlines() if "15672" in line]
    assert amqp and http, listeners
    for line in amqp + http:
        assert tb.node_ip(0) in line, line  # not 0.0.0.0 / ::


def test_application_user_exists_and_no_guest(tb):
    users = tb.ctl(0, "rabbitmqctl", "-q", "list_users", "--no-table-headers").stdout
    names = [line.split("\t")[0] for line in users.splitlines() if line.strip()]
    assert names == [USER]
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        connect(type(tb.lb_endpoint())(tb.node_ip(0), 5672, "guest", "guest"))


def test_setup_reports_nothing_then_repairs_drift(tb):
    # healthy: nothing to do (what makes a second deploy run report no change)
    again = tb.script(0, "setup-needed")
    assert again.returncode == 0 and again.stdout.strip() == "", again.stdout + again.stderr
    # drift: a guest account, a wrong password, a vhost without the quorum default
    subprocess.run(["docker", "exec", "-i", "-u", "999", tb.container_name(1), "rabbitmqctl", "add_user", "guest"],
                   input="guest\n", text=True, capture_output=True, check=True, timeout=60)
    subprocess.run(["docker", "exec", "-i", "-u", "999", tb.container_name(1), "rabbitmqctl", "change_password",
                    USER], input="drifted-password\n", text=True, capture_output=True, check=True, timeout=60)
    tb.ctl(2, "rabbitmqctl", "-q", "update_vhost_metadata", "/", "--default-queue-type", "classic")
    needed = tb.script(0, "setup-needed").stdout.split("\n")
    assert {"delete-guest", "change-password", "vhost-queue-type /"} <= set(needed), needed
    tb.setup()
    assert tb.script(0, "setup-needed").stdout.strip() == ""
    connect(tb.lb_endpoint()).close()  # the password of rabbitmq.env works again


def test_queue_declared_without_a_type_is_a_quorum_queue_on_three_nodes(tb):
    queue = "kb.test.default-type"
    ConfirmedPublisher(tb.lb_endpoint(), queue).run(count=5, seconds=30)
    info = _queue_info(tb, queue)
    assert info["type"] == "quorum"
    assert sorted(info["members"]) == [f"rabbit@{n}" for n in NAMES]
    delete_queue(tb.lb_endpoint(), queue)


def test_no_secret_in_container_env_command_lines_or_logs(tb):
    for name in NAMES:
        wrapped = tb.docker(name)
        wrapped.reload()
        env = " ".join(wrapped.attrs["Config"]["Env"] or [])
        assert tb.password not in env and tb.cookie not in env
        ps = tb.ctl(NAMES.index(name), "ps", "-eo", "args").stdout
        assert tb.password not in ps and tb.cookie not in ps
        logs = wrapped.logs().decode(errors="replace")
        assert tb.password not in logs and tb.cookie not in logs


def test_kill_the_leader_mid_stream_no_confirmed_message_lost(tb):
    """Publisher with confirms + consumer through HAProxy; SIGKILL of the queue leader's node, which
    also holds the publisher's connection (the worst case: the client must reconnect)."""
    queue = "kb.test.failover"
    endpoint = tb.lb_endpoint()
    ConfirmedPublisher(endpoint, queue).run(count=1, seconds=30)  # the queue exists, it has a leader
    victim = tb.leader_index(queue)
    tb.wait_healthy()
    consumer = Consumer(endpoint, queue).start()
    publisher = ConfirmedPublisher(endpoint, queue, name="kb-test-publisher")
    assert place_on_node(publisher, f"rabbit@{NAMES[victim]}", tb.apis()) == f"rabbit@{NAMES[victim]}"
    stop = threading.Event()
    worker = threading.Thread(target=publisher.run, kwargs={"seconds": 120, "stop": stop}, daemon=True)
    try:
        worker.start()
        wait_for(lambda: len(publisher.result.confirmed) >= 300, 30, 0.1, "300 confirms before the kill")
        assert tb.leader_index(queue) == victim
        confirmed_at_kill = len(publisher.result.confirmed)
        killed_at = time.monotonic()
        tb.kill(victim)
        # the publisher resumes: confirms keep coming after the kill, through the same HAProxy address
        wait_for(lambda: len(publisher.result.confirmed) >= confirmed_at_kill + 300, 60, 0.1,
                 "300 confirms after the kill")
        resumed_after = time.monotonic() - killed_at
        new_leader = tb.leader_index(queue)
        assert new_leader != victim
        tb.revive(victim)
        tb.wait_cluster(3, 180)
        time.sleep(1)  # a few confirms with the node back
    finally:
        stop.set()
        worker.join(30)
    result = publisher.result
    missing = consumer.wait_for(result.confirmed, seconds=60)
    consumer.stop()
    print(f"\nfailover: victim {NAMES[victim]}, confirmed {len(result.confirmed)}, max gap {result.max_gap:.2f}s, "
          f"resumed in {resumed_after:.2f}s, reconnects {result.reconnects}, duplicates "
          f"{consumer.deliveries - len(consumer.received)}, missing {len(missing)}\n  errors: {result.errors[:5]}")
    assert result.reconnects >= 1  # its connection died with the node: it reconnected and went on
    assert not missing, f"{len(missing)} confirmed messages never consumed, e.g. {sorted(missing)[:10]}"
    assert result.max_gap <= GAP_TARGET_S, f"publish gap {result.max_gap:.2f}s > {GAP_TARGET_S}s"
    # the revived node is a member of the queue again
    info = wait_for(lambda: (lambda q: q if len(q.get("online", [])) == 3 else None)(_queue_info(tb, queue)),
                    60, what="3 online queue members")
    assert sorted(info["online"]) == [f"rabbit@{n}" for n in NAMES]
    delete_queue(endpoint, queue)
    _heal(tb)


def test_a_lost_node_rejoins_by_itself(tb):
    """A node down long enough to miss messages comes back and catches up with no manual step."""
    queue = "kb.test.rejoin"
    endpoint = tb.lb_endpoint()
    ConfirmedPublisher(endpoint, queue).run(count=10, seconds=30)
    tb.kill(2)
    wait_for(lambda: len(running_members(tb.apis()[0])) == 2, 60, what="2 running members")
    result = ConfirmedPublisher(endpoint, queue).run(count=100, seconds=60)
    assert len(result.confirmed) == 100  # 2 of 3 members: quorum kept, writes accepted
    tb.revive(2)
    assert tb.wait_cluster(3, 180) == [f"rabbit@{n}" for n in NAMES]
    info = wait_for(lambda: (lambda q: q if len(q.get("online", [])) == 3 else None)(_queue_info(tb, queue)),
                    60, what="3 online queue members")
    assert NAMES[2] in " ".join(info["online"])
    delete_queue(endpoint, queue)
    _heal(tb)


def test_a_node_that_lost_its_data_is_taken_back_by_the_node_script(tb):
    """Disk replaced: the node boots blank and alone; `keybuzz-rabbitmq ready` (run by the deploy's
    start) makes the cluster forget the old incarnation, joins it, and regrows the quorum queues."""
    queue = "kb.test.blank"
    endpoint = tb.lb_endpoint()
    ConfirmedPublisher(endpoint, queue).run(count=10, seconds=30)
    tb.kill(2)
    wait_for(lambda: len(running_members(tb.apis()[0])) == 2, 60, what="2 running members")
    data = tb.dir / NAMES[2] / "data"
    for path in data.iterdir():  # everything but the cookie (the deploy writes it back anyway)
        if path.name != ".erlang.cookie":
            subprocess.run(["rm", "-rf", str(path)], check=True)
    tb.revive(2)
    wait_for(lambda: tb.ctl(2, "rabbitmq-diagnostics", "-q", "check_running").returncode == 0, 240, 2,
             "the blank node booted")
    ready = tb.script(2, "ready", timeout=400)
    assert ready.returncode == 0, ready.stderr[-3000:]
    assert "rejoining the cluster" in ready.stderr
    assert tb.wait_cluster(3, 120) == [f"rabbit@{n}" for n in NAMES]
    info = wait_for(lambda: (lambda q: q if len(q.get("online", [])) == 3 else None)(_queue_info(tb, queue)),
                    60, what="3 online queue members")
    assert f"rabbit@{NAMES[2]}" in info["members"]
    delete_queue(endpoint, queue)
    _heal(tb)

def test_diag_and_perf_checks_against_the_testbed(tb, tmp_path, monkeypatch):
    """keybuzz.rabbitmq.check (what `invoke check --name rabbitmq [--perf]` runs) on this cluster,
    through its HAProxy, and nothing secret in what they print."""
    from keybuzz.checks import Target
    from keybuzz.rabbitmq import check as checks
    from keybuzz.servers import load_servers

    plan = write_tsv(tmp_path / "servers.tsv", [(n, tb.node_ip(i), "rabbitmq") for i, n in enumerate(NAMES)])
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    env = creds / "rabbitmq.env"
    env.write_text(f"RABBITMQ_USER={USER}\nRABBITMQ_PASSWORD={tb.password}\nRABBITMQ_ERLANG_COOKIE={tb.cookie}\n")
    env.chmod(0o600)
    monkeypatch.setenv("KEYBUZZ_CREDENTIALS_DIR", str(creds))
    target = Target(load_servers(plan, network=f"{tb.prefix}.0/24"), tb.haproxy_ip)
    diag = checks.diag(target)
    print(f"\n{diag}")
    assert diag.ok, str(diag)
    assert any("members running: rabbit@queue-01, rabbit@queue-02, rabbit@queue-03 (3/3)" in line
               for line in diag.lines)
    perf = checks.perf(target, messages=2000, seconds=30)
    print(perf)
    assert perf.ok, str(perf)
    for text in (str(diag), str(perf)):
        assert tb.password not in text and tb.cookie not in text
    # a stopped node turns diag red
    tb.kill(2)
    try:
        wait_for(lambda: len(running_members(tb.apis()[0])) == 2, 60, what="2 running members")
        assert not checks.diag(target).ok
    finally:
        _heal(tb)
