"""MinIO layer on real containers, without MinIO (no registry this project reaches ships it):

* the S3 side of keybuzz.minio.client / check against an S3 PROTOCOL STAND-IN (Debian's moto server,
  lab/images/s3-standin; keybuzz/minio/testbed.py S3StandIn), never called MinIO: put/get/delete, the apps'
  buckets created idempotently, the failover probe through a paused server, the bounded perf loop, and a dead
  endpoint reported red;
* deploys/minio.py with pyinfra --dry through the real inventory, preflight and strict-host-key SSH against three
  fresh Debian hosts (the lab's host image, FreshHosts) that have no MinIO, no Docker, nothing: the planned
  operations, no secret at -vvv, nothing changed on the hosts; a host whose names resolve elsewhere is refused.

Containers are named keybuzz-minio-test-*, on 192.168.210.0/24 only.
"""

from __future__ import annotations

import time

import pytest

from helpers import ROOT, run
from keybuzz import credentials
from keybuzz.checks import Report
from keybuzz.minio.check import Probe, check_nodes, check_round_trip, perf_at
from keybuzz.minio.client import bootstrap_needed, ensure_buckets, round_trip, s3
from keybuzz.minio.settings import CHECK_BUCKET, load_apps
from keybuzz.minio.testbed import FreshHosts, S3StandIn
from keybuzz.waiting import wait_for

# Safety bounds (a hang is a failure), not performance targets.
PERF_BOUND_S = 90  # perf_at is given seconds=60: it must stop by itself
NO_MINIO_ASK_BOUND_S = 10  # the deploy's question to a host with no MinIO must not wait out long timeouts


@pytest.fixture(scope="module")
def standin():
    with S3StandIn() as tb:
        yield tb


def _client(tb, timeout=5.0):
    return s3(tb.endpoint, tb.access_key, tb.secret_key, timeout=timeout)


def test_round_trip_puts_gets_and_deletes_through_the_s3_protocol(standin):
    result = round_trip(_client(standin), CHECK_BUCKET, size=256 * 1024)
    assert result.ok, result.detail
    client = _client(standin)
    assert client.bucket_exists(CHECK_BUCKET)
    assert [o.object_name for o in client.list_objects(CHECK_BUCKET, recursive=True)] == []  # nothing left behind
    report = Report("t")
    assert check_round_trip(report, standin.endpoint, (standin.access_key, standin.secret_key)) and report.ok


def test_apps_buckets_are_created_once(standin):
    apps = load_apps()
    client = _client(standin)
    assert ensure_buckets(client, apps.buckets) == list(apps.buckets)
    assert ensure_buckets(client, apps.buckets) == []  # idempotent: the second run creates nothing
    assert set(apps.buckets) <= {b.name for b in client.list_buckets()}


def test_probe_sees_an_outage_and_the_recovery(standin):
    probe = Probe(_client(standin, timeout=1.5), CHECK_BUCKET, interval=0.1).start()
    try:
        wait_for(lambda: probe.result.ok >= 5, 30, 0.1, "5 probe round trips before the outage")
        before = probe.result.ok
        standin.pause()
        try:
            # the scenario, not a wait: an outage of 3 s (the gap asserted below must come from it)
            time.sleep(3)
            during_failed = probe.result.failed
        finally:
            standin.unpause()
        after_outage = probe.result.ok
        wait_for(lambda: probe.result.ok >= after_outage + 5, 30, 0.1, "5 probe round trips after the outage")
    finally:
        result = probe.stop()
    assert before >= 5 and during_failed > 0, result
    assert result.ok >= after_outage + 5  # recovered after the pause
    assert result.max_gap >= 2.5, result  # the outage shows as a gap without a successful write+read


def test_perf_is_bounded_and_reads_back_what_it_wrote(standin):
    began = time.monotonic()
    report = perf_at(standin.endpoint, (standin.access_key, standin.secret_key), objects=12, size=512 * 1024,
                     seconds=60)
    assert report.ok, str(report)
    assert report.metrics["put_mb_s"] > 0 and report.metrics["get_mb_s"] > 0
    assert time.monotonic() - began < PERF_BOUND_S


def test_a_dead_endpoint_is_red_never_a_crash(standin):
    standin.pause()
    try:
        report = Report("t")
        assert not check_round_trip(report, standin.endpoint, (standin.access_key, standin.secret_key))
        assert not report.ok and "failed" in report.lines[0]
    finally:
        standin.unpause()
    # the stand-in has no /minio/health/* (it is not MinIO): the node check reports it as not live
    report = Report("t")
    assert check_nodes(report, [("s3-standin", standin.address)]) == 0 and not report.ok


def test_bootstrap_ask_on_a_host_without_minio_is_fast_and_plans_everything():
    """What the deploy asks at evaluation time (also under --dry) when no MinIO answers yet."""
    apps = load_apps()
    keys = {v: "keybuzz-x" if "ACCESS" in v else "y" * 12 for u in apps.users
            for v in (u.access_key_var, u.secret_key_var)}
    began = time.monotonic()
    actions = bootstrap_needed("127.0.0.1:9", ("rootuser", "rootpassword"), apps, keys)
    assert time.monotonic() - began < NO_MINIO_ASK_BOUND_S
    assert ("make-bucket", apps.buckets[0]) in actions and any(a[0] == "add-user" for a in actions)


# --- deploys/minio.py --dry against fresh hosts -----------------------------------------------------------------

PLANNED = [
    "Install /opt/keybuzz/minio/minio.env",
    "Install /opt/keybuzz/minio/secrets/minio_root_user",
    "Install /opt/keybuzz/minio/secrets/minio_root_password",
    "Install minio.service",
    "Enable and start minio (a first install starts the three nodes together)",
    "Wait until this node is live and the cluster has its write quorum",
    "Create the apps' buckets, policies and users",
]


@pytest.fixture(scope="module")
def hosts(standin):
    with FreshHosts(share_with=standin) as tb:  # the stand-in's bridge: this layer has one /24
        yield tb


def _secrets(tb) -> list[str]:
    values = credentials.parse_env(tb.dir / "credentials" / "minio.env")
    return [v for v, _ in values.values()]


def test_dry_run_plans_the_install_prints_no_secret_and_changes_nothing(hosts):
    result = run(["pyinfra", "--dry", "-vvv", "inventory.py", "deploys/minio.py"], env=hosts.env, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "--> Detected changes:" in output
    for operation in PLANNED:
        assert operation in output, operation
    for value in _secrets(hosts):
        assert value not in output
    for name, _ in hosts.nodes():
        code, _ = hosts.exec(name, "test -e /opt/keybuzz/minio || test -e /etc/systemd/system/minio.service")
        assert code != 0, f"--dry changed {name}"


def test_a_host_resolving_a_name_elsewhere_is_refused_with_the_fix(hosts):
    name = "minio-02"
    elsewhere, right = hosts.ip(99), dict(hosts.nodes())["minio-03"]
    hosts.exec(name, "cp /etc/hosts /tmp/hosts.keybuzz && sed 's/^.*[[:space:]]minio-03[.]keybuzz[.]io$/"
                     f"{elsewhere} minio-03.keybuzz.io/' /tmp/hosts.keybuzz > /etc/hosts")
    try:
        code, text = hosts.exec(name, "getent ahostsv4 minio-03.keybuzz.io")
        assert text.split()[0] == elsewhere
        result = run(["pyinfra", "--dry", "inventory.py", "deploys/minio.py"], env=hosts.env, timeout=300)
        output = result.stdout + result.stderr
        assert result.returncode != 0
        assert f"minio-02 resolves minio-03.keybuzz.io -> {elsewhere} (servers.tsv: {right})" in output
        assert "run the base_os layer" in output and "Traceback" not in output
    finally:
        hosts.exec(name, "cat /tmp/hosts.keybuzz > /etc/hosts")


def test_root_credentials_differing_from_the_nodes_are_refused_never_rotated_by_a_deploy(hosts):
    name = "minio-03"
    hosts.exec(name, "mkdir -p -m 700 /opt/keybuzz/minio/secrets && printf other-root-user > "
                     "/opt/keybuzz/minio/secrets/minio_root_user")
    try:
        result = run(["pyinfra", "--dry", "-vvv", "inventory.py", "deploys/minio.py"], env=hosts.env, timeout=300)
        output = result.stdout + result.stderr
        assert result.returncode != 0
        assert ("minio-03: MINIO_ROOT_USER in minio.env differ from the node's: rotating MinIO's root credentials is a "
                "manual procedure") in output and "Traceback" not in output
        for value in _secrets(hosts):
            assert value not in output
    finally:
        hosts.exec(name, "rm -rf /opt/keybuzz")


# --- the container plumbing of the rendered unit, with real Docker (the process is `sleep`, not MinIO) ----------

def test_docker_hands_the_container_the_designs_volumes_and_the_secret_files_never_the_secrets(tmp_path):
    """The minio unit's own `docker run` arguments (host network, --env-file, the read-only secrets mount,
    --add-host), paths moved under tmp_path, image and command replaced by a base image running `sleep`: Docker
    itself parses the env file and mounts the files. Nothing listens, nothing is sent anywhere."""
    import shlex
    import subprocess

    from keybuzz.lab import images
    from keybuzz.minio import settings as S
    from keybuzz.render import render
    from keybuzz.servers import load_servers

    nodes = [(s.name, s.ip) for s in load_servers(ROOT / "servers.tsv").group("minio")]
    credentials.init(tmp_path / "credentials", bricks=["minio"])
    values = {k: v for k, (v, _) in credentials.parse_env(tmp_path / "credentials" / "minio.env").items()}
    paths = {S.ENV_FILE: str(tmp_path / "minio.env"), S.SECRETS_DIR: str(tmp_path / "secrets"),
             S.DATA_DIR: str(tmp_path / "data")}
    (tmp_path / "minio.env").write_text(S.render_env_file([n for n, _ in nodes]))
    (tmp_path / "secrets").mkdir(mode=0o700)
    (tmp_path / "data").mkdir(mode=0o700)
    for var, name in S.ROOT_FILES.items():
        (tmp_path / "secrets" / name).write_text(values[var])
        (tmp_path / "secrets" / name).chmod(0o600)
    unit = render("common/container.service.j2", name=S.SERVICE, image="IMAGE", command=S.server_command(),
                  run_args=S.run_args(nodes), reload=None, description="d", stop_timeout=30)
    argv = shlex.split(next(x for x in unit.splitlines() if x.startswith("ExecStart="))[len("ExecStart="):])
    name = "keybuzz-minio-test-plumbing"

    def moved(arg: str) -> str:  # the deploy's paths -> tmp_path (a mount keeps its `:/inside[:ro]` part)
        for old, new in paths.items():
            if arg == old or arg.startswith(old + ":"):
                return new + arg[len(old):]
        return arg

    argv = [moved(a) for a in argv[:argv.index("IMAGE")]]
    argv[argv.index("--name") + 1] = name
    argv.insert(2, "-d")
    subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True)
    subprocess.run([*argv, images.build("base-trixie", progress=lambda m: None), "sleep", "120"], check=True,
                   capture_output=True)
    try:
        def inside(cmd):
            return subprocess.run(["docker", "exec", name, "sh", "-c", cmd], capture_output=True, text=True,
                                  check=True).stdout
        environ = dict(x.split("=", 1) for x in inside("cat /proc/1/environ | tr '\\0' '\\n'").splitlines() if "=" in x)
        assert environ["MINIO_VOLUMES"] == S.minio_volumes(["minio-01", "minio-02", "minio-03"])
        assert environ["MINIO_VOLUMES"].encode() == (b"http://minio-01.keybuzz.io/data http://minio-02.keybuzz.io/data"
                                                     b" http://minio-03.keybuzz.io/data")
        for var, file_name in S.ROOT_FILES.items():  # what MinIO's *_FILE loading reads
            assert environ[f"{var}_FILE"] == f"/run/secrets/{file_name}"
            assert inside(f"cat /run/secrets/{file_name}") == values[var]
        assert "ro" in inside("grep ' /run/secrets ' /proc/mounts").split()[3].split(",")
        for host_name, ip in S.dns_names(nodes).items():  # --add-host works with --network host
            assert inside(f"getent ahostsv4 {host_name}").split()[0] == ip
        inspect = subprocess.run(["docker", "inspect", name], capture_output=True, text=True, check=True).stdout
        for value in values.values():
            assert value not in inspect
        assert '"NetworkMode": "host"' in inspect
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True)


def test_diag_end_to_end_against_the_stand_in_is_red_where_minio_is_missing_green_for_s3(standin, tmp_path,
                                                                                         monkeypatch):
    """The whole diag against a plan whose minio-01 is the stand-in (minio-02/03: addresses where nothing runs):
    the S3 round trip is green; liveness, quorum and the admin API — MinIO's own — are red, and nothing crashes."""
    from helpers import write_tsv
    from keybuzz.checks import Target
    from keybuzz.minio.check import diag
    from keybuzz.servers import load_servers

    tsv = write_tsv(tmp_path / "servers.tsv", [("minio-01", standin.address, "minio"),
                                               ("minio-02", standin.ip(11), "minio"),
                                               ("minio-03", standin.ip(12), "minio")])
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "minio.env").write_text(f"MINIO_ROOT_USER={standin.access_key}\nMINIO_ROOT_PASSWORD={standin.secret_key}\n"
                                     "MINIO_APP_ACCESS_KEY=keybuzz-app\nMINIO_APP_SECRET_KEY=abcdefgh\n"
                                     "MINIO_BACKUP_ACCESS_KEY=keybuzz-backup\nMINIO_BACKUP_SECRET_KEY=abcdefgh\n")
    (creds / "minio.env").chmod(0o600)
    monkeypatch.setenv("KEYBUZZ_CREDENTIALS_DIR", str(creds))
    report = diag(Target(load_servers(tsv, network=f"{standin.prefix}.0/24"), lb=""))
    text = str(report)
    assert not report.ok
    assert f"  put/get/delete 65536 bytes through http://{standin.address}:9000 (keybuzz-check)" in text, text
    assert f"! minio-01 {standin.address}:9000 live:" in text and "! minio-02" in text
    assert "! cluster write quorum" in text and "! admin info" in text
    assert standin.secret_key not in text
