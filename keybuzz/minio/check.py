"""Checks of the MinIO cluster (design §B, §G): `invoke check --name minio [--failover] [--perf]`.

    diag      each node's liveness (/minio/health/live), the cluster's write and read quorum
              (/minio/health/cluster, /cluster/read), the erasure set from MinIO's admin API (3 drives in one
              set, parity 1, every drive online, none healing), s3.keybuzz.io resolving to minio-01, and a
              put/get/delete through http://s3.keybuzz.io:9000
    failover  stops minio on the last node (systemctl stop over SSH; never minio-01, which s3.keybuzz.io names)
              while a probe writes and reads through s3.keybuzz.io: with 3 drives and parity 1 the write quorum
              is 2 drives, so every write and read must keep succeeding; then starts it again and waits until
              the node is live, every drive is online and none is healing
    perf      bounded put then get of N objects through s3.keybuzz.io (MB/s, per-object latency)

Everything goes from install-01 to the nodes' private addresses on port 9000 with the root credentials of
minio.env (never printed). Where install-01 does not resolve s3.keybuzz.io (the base OS layer names it on the
servers only), the checks use minio-01's address and say so.

Example::

    print(diag(Target.from_env()))
"""

from __future__ import annotations

import io
import os
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field

from keybuzz import ssh
from keybuzz.checks import Report, Target
from keybuzz.minio.client import UNREACHABLE, admin, erasure_info, health, round_trip, s3
from keybuzz.minio.settings import CHECK_BUCKET, DRIVES, PARITY, S3_NAME, S3_PORT, WRITE_QUORUM

DOWN_SECONDS = 20  # failover: how long the node stays down while the probe runs
HEAL_SECONDS = 180  # failover: bound of the wait until the returned node is live and healed


def _nodes(target: Target) -> list[tuple[str, str]]:
    return [(s.name, s.ip) for s in target.plan.group("minio")]


def _root(target: Target) -> tuple[str, str]:
    creds = target.secrets("minio")
    return creds["MINIO_ROOT_USER"].unmask(), creds["MINIO_ROOT_PASSWORD"].unmask()


def s3_endpoint(nodes, resolve=socket.gethostbyname) -> tuple[str, str]:
    """(host:port clients use, a note): s3.keybuzz.io when it resolves to minio-01 here, else minio-01's address.

    >>> s3_endpoint([("minio-01", "10.0.0.134")], resolve=lambda name: "10.0.0.134")
    ('s3.keybuzz.io:9000', 's3.keybuzz.io -> 10.0.0.134 (minio-01)')
    >>> s3_endpoint([("minio-01", "10.0.0.134")], resolve=lambda name: "10.9.9.9")[0]
    '10.0.0.134:9000'
    """
    first_name, first_ip = nodes[0]
    try:
        seen = resolve(S3_NAME)
    except OSError:
        return f"{first_ip}:{S3_PORT}", f"{S3_NAME} does not resolve on this machine: using {first_name}'s address"
    if seen != first_ip:
        return f"{first_ip}:{S3_PORT}", f"{S3_NAME} resolves to {seen} here, not {first_name} ({first_ip})"
    return f"{S3_NAME}:{S3_PORT}", f"{S3_NAME} -> {seen} ({first_name})"


def check_nodes(report: Report, nodes) -> int:
    """One line per node: /minio/health/live. Returns how many are live."""
    live = 0
    for name, ip in nodes:
        code = health(ip, "/minio/health/live")
        live += code == 200
        report.add(f"{name} {ip}:{S3_PORT} live: HTTP {code or 'no answer'}", ok=code == 200)
    return live


def check_quorum(report: Report, address: str) -> bool:
    """The cluster's write and read quorum as the node at `address` sees them."""
    write = health(address, "/minio/health/cluster")
    read = health(address, "/minio/health/cluster/read")
    report.add(f"cluster write quorum ({WRITE_QUORUM} of {DRIVES} drives): HTTP {write or 'no answer'}",
               ok=write == 200)
    report.add(f"cluster read quorum: HTTP {read or 'no answer'}", ok=read == 200)
    return write == 200 and read == 200


def check_erasure(report: Report, endpoint: str, root: tuple[str, str]) -> None:
    """The erasure set from MinIO's admin API: one set of 3 drives, parity 1, all online, none healing."""
    try:
        info = erasure_info(admin(endpoint, *root))
    except UNREACHABLE as e:
        report.add(f"admin info through {endpoint} failed: {type(e).__name__}", ok=False)
        return
    report.add(f"backend {info.backend}, sets {info.sets} (want [{DRIVES}]), parity {info.parity} (want {PARITY})",
               ok=info.backend.lower().startswith("erasure") and info.sets == [DRIVES] and info.parity == PARITY)
    report.add(f"drives online {info.online}/{info.drives}, offline {info.offline}, healing {info.healing}",
               ok=info.online == DRIVES and info.offline == 0 and info.healing == 0)


def check_round_trip(report: Report, endpoint: str, root: tuple[str, str]) -> bool:
    result = round_trip(s3(endpoint, *root), CHECK_BUCKET)
    report.add(f"{result.detail} through http://{endpoint} ({CHECK_BUCKET}) in {result.seconds:.2f}s", ok=result.ok)
    return result.ok


def diag(target: Target) -> Report:
    report = Report("minio diag")
    nodes = _nodes(target)
    root = _root(target)
    endpoint, note = s3_endpoint(nodes)
    report.add(note, ok=not note.startswith(f"{S3_NAME} resolves to"))  # a wrong answer is red, none is a note
    check_nodes(report, nodes)
    check_quorum(report, endpoint.rsplit(":", 1)[0])
    check_erasure(report, endpoint, root)
    check_round_trip(report, endpoint, root)
    return report


# --- failover ------------------------------------------------------------------------------------------------

@dataclass
class ProbeResult:
    ok: int = 0
    failed: int = 0
    max_gap: float = 0.0  # longest time without a successful write+read
    errors: list = field(default_factory=list)


class Probe:
    """Writes then reads back a small object every `interval` s through `client`, in a thread, until stopped.

    Example::

        probe = Probe(s3(endpoint, user, password), "keybuzz-check").start()
        ...  # stop a node
        result = probe.stop()   # ProbeResult(ok=..., failed=0, max_gap=...)
    """

    def __init__(self, client, bucket: str, interval: float = 0.2):
        self.client, self.bucket, self.interval = client, bucket, interval
        self.result = ProbeResult()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Probe:
        if not self.client.bucket_exists(self.bucket):
            self.client.make_bucket(self.bucket)
        self._thread.start()
        return self

    def _run(self) -> None:
        last_ok = time.monotonic()
        n = 0
        while not self._stop.is_set():
            key = f"keybuzz-probe/{os.getpid()}/{n}"
            data = f"probe {n} {time.time_ns()}".encode()
            try:
                self.client.put_object(self.bucket, key, io.BytesIO(data), len(data))
                answer = self.client.get_object(self.bucket, key)
                try:
                    same = answer.read() == data
                finally:
                    answer.close()
                    answer.release_conn()
                self.client.remove_object(self.bucket, key)
                if not same:
                    raise ValueError("read back differs")
                self.result.ok += 1
                now = time.monotonic()
                self.result.max_gap = max(self.result.max_gap, now - last_ok)
                last_ok = now
            except UNREACHABLE as e:
                self.result.failed += 1
                if len(self.result.errors) < 5:
                    self.result.errors.append(type(e).__name__ if not hasattr(e, "code") else f"S3 {e.code}")
            n += 1
            self._stop.wait(self.interval)
        self.result.max_gap = max(self.result.max_gap, time.monotonic() - last_ok)

    def stop(self, timeout: float = 30) -> ProbeResult:
        self._stop.set()
        self._thread.join(timeout)
        return self.result


def failover(target: Target, down_seconds: float = DOWN_SECONDS, heal_seconds: float = HEAL_SECONDS) -> Report:
    """Stop the last node while writing and reading through s3.keybuzz.io; start it again; wait for healing."""
    report = Report("minio failover")
    nodes = _nodes(target)
    root = _root(target)
    endpoint, note = s3_endpoint(nodes)
    report.add(note)
    if check_nodes(Report("pre"), nodes) != len(nodes) or not check_quorum(Report("pre"), endpoint.rsplit(":", 1)[0]):
        report.add("not every node is live or the cluster lacks its quorum: no node stopped", ok=False)
        return report
    victim, victim_ip = nodes[-1]
    probe = Probe(s3(endpoint, *root, timeout=5), CHECK_BUCKET).start()
    stopped = False
    try:
        time.sleep(2)
        if probe.result.ok == 0:
            report.add("writing through the entry point does not work: no node stopped", ok=False)
            return report
        answer = ssh.run(victim_ip, "systemctl stop minio", timeout=90)
        stopped = answer.returncode == 0
        report.add(f"stopped minio on {victim}", ok=stopped)
        at_stop = probe.result.ok
        time.sleep(down_seconds)
        during = probe.result.ok - at_stop
        report.add(f"{during} write+read round trips while {victim} was down ({down_seconds:.0f}s)", ok=during > 0)
        check_quorum(report, endpoint.rsplit(":", 1)[0])
    finally:
        if stopped:
            ssh.run(victim_ip, "systemctl start minio", timeout=90)
        result = probe.stop()
    report.add(f"probe: {result.ok} ok, {result.failed} failed {result.errors or ''}, longest gap "
               f"{result.max_gap:.2f}s (write quorum {WRITE_QUORUM} of {DRIVES}: no failure expected)",
               ok=result.failed == 0 and result.ok > 0)
    deadline = time.monotonic() + heal_seconds
    healed = False
    while time.monotonic() < deadline:
        if health(victim_ip, "/minio/health/live") == 200:
            try:
                info = erasure_info(admin(endpoint, *root))
                healed = info.online == DRIVES and info.healing == 0
            except UNREACHABLE:
                healed = False
            if healed:
                break
        time.sleep(2)
    report.add(f"{victim} back: live, {DRIVES} drives online, none healing" if healed else
               f"{victim} not live and healed within {heal_seconds:.0f}s", ok=healed)
    report.metrics.update(failed=result.failed, max_gap_s=round(result.max_gap, 3), ok=result.ok)
    return report


# --- perf ------------------------------------------------------------------------------------------------------

def perf_at(endpoint: str, root: tuple[str, str], objects: int = 40, size: int = 1024 * 1024,
            seconds: float = 60) -> Report:
    """Put then get `objects` objects of `size` bytes through `endpoint`, bounded by `seconds` in all; then
    delete them. MB/s and median latency of each side."""
    report = Report("minio perf")
    client = s3(endpoint, *root, timeout=30)
    if not client.bucket_exists(CHECK_BUCKET):
        client.make_bucket(CHECK_BUCKET)
    data = os.urandom(size)
    prefix = f"keybuzz-perf/{os.getpid()}-{time.time_ns()}"
    deadline = time.monotonic() + seconds
    timings: dict[str, list[float]] = {"put": [], "get": []}
    keys = []
    for i in range(objects):
        if time.monotonic() > deadline:
            break
        began = time.monotonic()
        client.put_object(CHECK_BUCKET, f"{prefix}/{i}", io.BytesIO(data), size)
        timings["put"].append(time.monotonic() - began)
        keys.append(f"{prefix}/{i}")
    wrong = 0
    for key in keys:
        if time.monotonic() > deadline:
            break
        began = time.monotonic()
        answer = client.get_object(CHECK_BUCKET, key)
        try:
            wrong += answer.read() != data
        finally:
            answer.close()
            answer.release_conn()
        timings["get"].append(time.monotonic() - began)
    for key in keys:
        client.remove_object(CHECK_BUCKET, key)
    for side, spent in timings.items():
        total = sum(spent)
        rate = len(spent) * size / total / 1e6 if total else 0.0
        report.add(f"{side}: {len(spent)}/{objects} objects of {size // 1024} KiB, {rate:.1f} MB/s, median "
                   f"{1000 * statistics.median(spent) if spent else 0:.1f} ms", ok=len(spent) == objects)
        report.metrics[f"{side}_mb_s"] = round(rate, 2)
    report.add(f"objects read back different: {wrong}", ok=wrong == 0)
    return report


def perf(target: Target) -> Report:
    endpoint, note = s3_endpoint(_nodes(target))
    report = perf_at(endpoint, _root(target))
    report.lines.insert(0, "  " + note)
    return report
