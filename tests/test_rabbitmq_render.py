"""RabbitMQ templates rendered from the production plan (no container): the cluster is formed from the
inventory, the listeners stay on the private address, HAProxy's be_rabbitmq is §D verbatim, the node
script is valid bash and keeps the password off command lines."""

from __future__ import annotations

import re
import subprocess

from helpers import DESIGN_D_BLOCK
from keybuzz.haproxy.settings import render_haproxy_cfg
from keybuzz.render import render
from keybuzz.servers import load_servers


def _conf(name="queue-02") -> str:
    plan = load_servers()
    peers = [s.name for s in plan.group("rabbitmq")]
    return render("rabbitmq/rabbitmq.conf.j2", peers=peers, private_ip=plan.get(name).ip)


def _settings(text: str) -> dict[str, str]:
    return dict(line.split(" = ", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_cluster_is_formed_from_the_inventory_peers():
    s = _settings(_conf())
    assert s["cluster_formation.peer_discovery_backend"] == "classic_config"
    nodes = [v for k, v in sorted(s.items()) if k.startswith("cluster_formation.classic_config.nodes.")]
    assert nodes == ["rabbit@queue-01", "rabbit@queue-02", "rabbit@queue-03"]
    assert s["cluster_partition_handling"] == "pause_minority"


def test_listeners_and_management_on_the_private_address_only():
    s = _settings(_conf("queue-02"))
    assert s["listeners.tcp.1"] == "10.0.0.127:5672"
    assert s["management.tcp.ip"] == "10.0.0.127"
    assert not any(k.startswith("listeners.tcp.default") for k in s)
    # 3.13.2 does not know the global default_queue_type key (3.13.3+): the vhost metadata carries it
    assert "default_queue_type" not in s


def test_user_file_holds_the_application_user_and_no_guest():
    text = render("rabbitmq/keybuzz-user.conf.j2", user="keybuzz", password="s3cret")
    s = _settings(text)
    assert s["default_user"] == "keybuzz" and s["default_pass"] == "s3cret"
    assert "guest" not in text.replace("# ", "")


def test_haproxy_be_rabbitmq_is_the_design_block_verbatim():
    """Against the design's §D block kept in tests/fixtures/design/section_D.md (tests/test_design_fixtures.py
    keeps it equal to the design)."""
    plan = load_servers()
    cfg = render_haproxy_cfg("haproxy-01", "10.0.0.11", {"rabbitmq": [(s.name, s.ip) for s in plan.group("rabbitmq")]})
    block = cfg[cfg.index("\nbackend be_rabbitmq") + 1:]
    block = block[:block.index("\n\n")] + "\n" if "\n\n" in block else block
    assert block == DESIGN_D_BLOCK
    assert "bind 0.0.0.0:5672" in cfg and "bind 10.0.0.10" not in cfg  # §A: never bind the LB address


def _script() -> str:
    return render("rabbitmq/keybuzz-rabbitmq.sh.j2", peers=["queue-01", "queue-02", "queue-03"], vhosts=["/"],
                  user_conf="/opt/keybuzz/rabbitmq/conf/conf.d/20-keybuzz-user.conf", wait_seconds=300, uid="999")


def test_node_script_is_valid_bash(tmp_path):
    path = tmp_path / "keybuzz-rabbitmq"
    path.write_text(_script())
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0


def test_node_script_never_puts_the_password_on_a_command_line():
    script = _script()
    # the password only ever goes through printf (a bash builtin) into rabbitmqctl's stdin
    uses = [line for line in script.splitlines() if "$pass" in line and "pass=" not in line]
    assert uses and all(re.search(r"printf '%s\\n' \"\$pass\" \| rmq_stdin rabbitmqctl", u) for u in uses), uses
    # rabbitmqctl -q waits forever instead of reading a password from stdin
    assert not re.search(r"rabbitmqctl -q (add_user|change_password|authenticate_user)", script)
    assert "set -x" not in script


def test_every_wait_of_the_node_script_is_bounded():
    script = _script()
    assert "WAIT_SECONDS=300" in script
    assert "timeout 120 docker exec" in script
    assert "until " in script and "deadline" in script
