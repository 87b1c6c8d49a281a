"""README (Redis checks): "Keys are `keybuzz:check:*` with a TTL": the checks write into production's Redis, so
every key they write must expire by itself. Against one real Redis (the lab's redis image) on a bridge of its own:
the perf check and the failover check's write probe, as they run. Every write call of the Redis check code (diag's
included, which needs Sentinels and HAProxy to run) carries an expiry: tests/test_redis_check_keys.py (pure)."""

from __future__ import annotations

import secrets

import pytest
from docker.types import EndpointConfig
from testcontainers.core.container import DockerContainer

from helpers import write_tsv
from keybuzz import credentials
from keybuzz.checks import Target
from keybuzz.lab import images
from keybuzz.redis import check
from keybuzz.redis.client import WriteProbe, no_retry_client
from keybuzz.redis.settings import REDIS_PORT, Login
from keybuzz.servers import load_servers
from keybuzz.testbed import ContainerTestbed
from keybuzz.waiting import wait_for


class OneRedis(ContainerTestbed):
    """One Redis at <bridge>.21, the `default` user's password = REDIS_PASSWORD of a fresh credentials dir."""

    SUBNET_OCTETS = range(240, 245)  # 210 (minio) and 230 (mariadb) are single-bridge testbeds: kept clear

    def start(self) -> None:
        image = images.build("redis", progress=lambda m: None)
        self.create_network()
        credentials.init(self.dir / "credentials", bricks=["redis"])
        password = credentials.parse_env(self.dir / "credentials" / "redis.env")["REDIS_PASSWORD"][0]
        self.app = Login(None, password)
        container = DockerContainer(image).with_name(f"keybuzz-redis-keys-test-{secrets.token_hex(4)}").with_kwargs(
            network=self.network.name,
            networking_config={self.network.name: EndpointConfig("1.41", ipv4_address=self.ip(21))},
        ).with_command(["redis-server", "--requirepass", password, "--save", "", "--appendonly", "no"])
        container.start()
        self.containers["redis"] = container
        wait_for(lambda: no_retry_client(self.ip(21), REDIS_PORT, self.app, timeout=2).ping(), 30, what="redis")


@pytest.fixture(scope="module")
def bed():
    with OneRedis("keybuzz-redis-keys-") as tb:
        yield tb


@pytest.fixture
def redis_client(bed):
    client = no_retry_client(bed.ip(21), REDIS_PORT, bed.app, timeout=2)
    client.flushall()
    yield client
    client.close()


def _ttls(client) -> dict[str, int]:
    return {key: client.ttl(key) for key in client.scan_iter(count=1000)}


def test_the_perf_check_leaves_only_expiring_check_keys(bed, redis_client, monkeypatch):
    monkeypatch.setenv("KEYBUZZ_CREDENTIALS_DIR", str(bed.dir / "credentials"))
    monkeypatch.setattr(check, "PERF_SECONDS", 1)  # the same loops, shorter
    plan = load_servers(write_tsv(bed.dir / "servers.tsv", []), network=f"{bed.prefix}.0/24")
    report = check.perf(Target(plan, bed.ip(21)))
    assert report.ok, str(report)
    ttls = _ttls(redis_client)
    assert ttls and all(k.startswith("keybuzz:check:perf:") for k in ttls), sorted(ttls)[:5]
    assert {k: t for k, t in ttls.items() if not 0 < t <= 60} == {}


def test_the_failover_probe_writes_expiring_keys(bed, redis_client):
    probe = WriteProbe(bed.ip(21), REDIS_PORT, bed.app, prefix="keybuzz:check:failover:", ttl=300, wait=False,
                       max_seconds=5).start()
    wait_for(lambda: len([w for w in probe.writes if w.ok]) >= 10, 10, 0.1, what="10 probe writes")
    probe.stop()
    ttls = _ttls(redis_client)
    assert len(ttls) >= 10 and all(k.startswith("keybuzz:check:failover:") for k in ttls)
    assert {k: t for k, t in ttls.items() if not 0 < t <= 300} == {}
