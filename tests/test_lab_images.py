"""The lab images (keybuzz.lab.images), for real: each is built (or found in the cache), started, and
answers as its official counterpart would; a second build_all rebuilds nothing.

About 1 min with the images cached (rabbitmq's boot dominates), 3-4 min from nothing on 2 cores.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
import uuid

import pytest
from testcontainers.core.container import DockerContainer  # noqa: E402

from keybuzz.lab import images  # noqa: E402
from keybuzz.waiting import wait_for  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not (shutil.which("docker") and shutil.which("mmdebstrap")),
                       reason="needs docker and mmdebstrap (scripts/bootstrap.sh)"),
]


@pytest.fixture(scope="module")
def refs():
    lines = []
    start = time.monotonic()
    built = images.build_all(progress=lines.append)
    print(f"build_all: {time.monotonic() - start:.0f}s", *lines, sep="\n  ")
    return built


@pytest.fixture(scope="module")
def lab_versions():
    """name -> Debian upstream version, from the tags in lab/versions.lab.yaml (e.g. 7.0.15)."""
    return {n: ref.rsplit(":", 1)[1].rsplit("-", 1)[0] for n, ref in images.lab_image_names().items()}


def http_get(url, auth=None, put=None):
    """(status, body) of a GET, or of a PUT of the JSON `put`; `auth` is "user:password"."""
    data = None if put is None else json.dumps(put).encode()
    request = urllib.request.Request(url, data=data, method="GET" if put is None else "PUT",
                                     headers={"content-type": "application/json"})
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=5) as answer:
        return answer.status, answer.read()


def output(container: DockerContainer, command: str) -> str:
    code, out = container.exec(["sh", "-c", command])
    assert code == 0, f"{command}: exit {code}: {out.decode(errors='replace')}"
    return out.decode()


def test_second_build_all_rebuilds_nothing(refs):
    """Nothing is built again (how long a cached build_all takes is a figure, not a claim: bench/lab_images.py)."""
    lines = []
    again = images.build_all(progress=lines.append)
    assert again == refs
    assert not [line for line in lines if line.startswith("building")], lines
    assert all(ref == images.image_ref(name) for name, ref in refs.items())
    assert all(re.fullmatch(r"keybuzz-lab/[a-z0-9-]+:[0-9a-f]{12}", ref) for ref in refs.values())


def test_redis_answers_like_the_official_image(refs, lab_versions):
    import redis

    # as the deploy runs it: --user 999:1000, default CMD, no password (protected mode must be off)
    with DockerContainer(refs["redis"]).with_exposed_ports(6379).with_kwargs(user="999:1000") as c:
        client = redis.Redis(c.get_container_host_ip(), int(c.get_exposed_port(6379)), socket_timeout=2)
        assert wait_for(client.ping, 20, what="redis PING")
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert output(c, "id -u; id -g; pwd").split() == ["999", "1000", "/data"]
        assert f"v={lab_versions['redis']} " in output(c, "redis-server --version")
        assert output(c, "command -v redis-sentinel redis-cli").count("/") >= 2


def test_haproxy_validates_runs_and_reloads(refs, lab_versions):
    cfg = """global
    stats socket /var/lib/haproxy/admin.sock mode 660 level admin
defaults
    mode tcp
    timeout connect 5s
    timeout client 1m
    timeout server 1m
frontend fe_redis
    bind :6379
    default_backend be_redis_master
backend be_redis_master
    option tcp-check
    server redis-master 127.0.0.1:6380 check
"""
    bad = cfg.replace("option tcp-check", "option no-such-option")
    check = "cat > /tmp/h.cfg <<'EOF'\n{}EOF\nhaproxy -c -f /tmp/h.cfg"
    for text, ok in ((cfg, True), (bad, False)):
        run = subprocess.run(["docker", "run", "--rm", "--entrypoint", "sh", refs["haproxy"], "-c",
                              check.format(text)], capture_output=True, text=True, timeout=60)
        assert (run.returncode == 0) == ok, run.stdout + run.stderr
    # default CMD: the image's placeholder config answers on :8404; HUP reloads (master-worker)
    with DockerContainer(refs["haproxy"]).with_exposed_ports(8404) as c:
        url = f"http://{c.get_container_host_ip()}:{c.get_exposed_port(8404)}/healthz"
        assert wait_for(lambda: http_get(url) == (200, b"ok\n"), 20, what="haproxy :8404")
        assert output(c, "id -u; id -g").split() == ["99", "99"]
        assert f"version {lab_versions['haproxy']}" in output(c, "haproxy -v")
        assert "Uptime" in output(c, "echo 'show info' | socat stdio /var/lib/haproxy/admin.sock")
        subprocess.run(["docker", "kill", "-s", "HUP", c.get_wrapped_container().id], check=True, capture_output=True)
        wait_for(lambda: b"Loading success" in b"".join(c.get_logs()), 10, what="haproxy reload")
        assert http_get(url)[0] == 200


def test_rabbitmq_starts_with_env_user_and_per_vhost_quorum_default(refs, lab_versions):
    import pika

    c = (DockerContainer(refs["rabbitmq"]).with_exposed_ports(5672, 15672)
         .with_env("RABBITMQ_DEFAULT_USER", "kb").with_env("RABBITMQ_DEFAULT_PASS", "s3cret")
         .with_kwargs(hostname="queue-01"))
    with c:
        # as the rabbitmq user: a root `docker exec` before the node made its cookie would create it
        # root-owned (same race as with the official image)
        def ping():
            code, _ = c.get_wrapped_container().exec_run(["rabbitmq-diagnostics", "-q", "check_running"],
                                                         user="rabbitmq")
            return code == 0
        wait_for(ping, 90, what="rabbitmq check_running")
        assert output(c, "rabbitmq-diagnostics -q ping").strip() == "Ping succeeded"
        assert output(c, "rabbitmqctl -q version").strip() == lab_versions["rabbitmq"]
        assert output(c, "stat -c '%u:%g' /var/lib/rabbitmq/.erlang.cookie").strip() == "999:999"
        assert "rabbitmq_management " in output(c, "rabbitmq-plugins -q list -E")
        host, api = c.get_container_host_ip(), f"http://{c.get_container_host_ip()}:{c.get_exposed_port(15672)}"
        wait_for(lambda: http_get(f"{api}/api/overview", "kb:s3cret")[0] == 200, 30, what="management API")
        # per-vhost default queue type through the HTTP API, 3.13 style
        assert http_get(f"{api}/api/vhosts/qq", "kb:s3cret", {"default_queue_type": "quorum"})[0] == 201
        everything = {"configure": ".*", "write": ".*", "read": ".*"}
        assert http_get(f"{api}/api/permissions/qq/kb", "kb:s3cret", everything)[0] in (201, 204)
        params = pika.ConnectionParameters(host, int(c.get_exposed_port(5672)), "qq",
                                           pika.PlainCredentials("kb", "s3cret"))
        connection = pika.BlockingConnection(params)
        try:
            connection.channel().queue_declare("jobs", durable=True)  # no x-queue-type
        finally:
            connection.close()
        assert "jobs\tquorum" in output(c, "rabbitmqctl -q list_queues -p qq name type")


def test_registry_serves_v2_and_takes_the_service_images(refs, lab_versions):
    with DockerContainer(refs["registry"]).with_bind_ports(5000, None) as c:
        address = f"127.0.0.1:{c.get_exposed_port(5000)}"  # 127.0.0.0/8: insecure by default
        wait_for(lambda: http_get(f"http://{address}/v2/")[0] == 200, 20, what="registry /v2/")
        pushed = images.push_to_registry(address, names=["redis"], progress=lambda m: None)
        assert pushed == {"redis": f"{address}/keybuzz-lab/redis:{lab_versions['redis']}-bookworm"}
        status, tags = http_get(f"http://{address}/v2/keybuzz-lab/redis/tags/list")
        assert json.loads(tags)["tags"] == [f"{lab_versions['redis']}-bookworm"]


def test_host_boots_systemd_and_takes_the_lab_key(refs, tmp_path):
    if not shutil.which("ssh"):
        pytest.skip("needs the ssh client")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "key")], check=True)
    os.chmod(tmp_path / "key.pub", 0o644)
    docker_dir = tmp_path / "docker"
    docker_dir.mkdir()
    name = f"kb-images-host-{uuid.uuid4().hex[:8]}"
    run = ["docker", "run", "-d", "--name", name, *images.HOST_RUN_ARGS, "-p", "127.0.0.1::22",
           "-v", f"{docker_dir}:/var/lib/docker", "-v", f"{tmp_path / 'key.pub'}:{images.LAB_AUTHORIZED_FILE}:ro",
           refs["host"]]
    subprocess.run(run, check=True, capture_output=True)
    try:
        def state():
            out = subprocess.run(["docker", "exec", name, "systemctl", "is-system-running"],
                                 capture_output=True, text=True).stdout.strip()
            return out if out in ("running", "degraded") else None
        assert wait_for(state, 60, what="systemd") == "running"
        port = subprocess.run(["docker", "port", name, "22/tcp"], capture_output=True, text=True,
                              check=True).stdout.split()[0].rsplit(":", 1)[1]
        ssh = ["ssh", "-i", str(tmp_path / "key"), "-p", port, "-o", "BatchMode=yes",
               "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
               "root@127.0.0.1"]
        probe = "ps -p 1 -o comm=; . /etc/os-release; echo $VERSION_ID; command -v docker || echo no-docker"
        out = wait_for(lambda: subprocess.run([*ssh, probe], capture_output=True, text=True, timeout=20).stdout,
                       30, what="ssh login with the lab key")
        assert out.split() == ["systemd", "12", "no-docker"]
        refused = subprocess.run([*ssh[:3], "-o", "PubkeyAuthentication=no", *ssh[3:], "true"],
                                 capture_output=True, text=True, timeout=20)
        assert refused.returncode == 255 and "Permission denied" in refused.stderr
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True)
