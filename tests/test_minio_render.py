"""MinIO layer, what can be proven without a MinIO binary (none is reachable here): the rendered env file, unit and
command (MINIO_VOLUMES byte for byte and identical on the three nodes, nothing secret on a command line), the
preflight refusals (one line naming servers.tsv / versions.yaml and the fix, before any connection), the node
helper's health gating against a real HTTP server, and the pure parts of the bootstrap (policy documents, the
plan of actions)."""

from __future__ import annotations

import http.server
import shlex
import subprocess
import threading
import time

import pytest

from helpers import ROOT, design_blocks, run, write_tsv
from keybuzz import credentials
from keybuzz.errors import InputError
from keybuzz.minio import settings as S
from keybuzz.render import render
from keybuzz.servers import load_servers

# design §B (tests/fixtures/design/section_B.md), verbatim: the shell line's value, as the shell reads it
DESIGN_MINIO_VOLUMES = shlex.split(design_blocks("B", "bash")[0].strip().removeprefix("MINIO_VOLUMES="))[0]
PRODUCTION = load_servers(ROOT / "servers.tsv")
NODES = [(s.name, s.ip) for s in PRODUCTION.group("minio")]


def docker_env_file(text: str) -> dict[str, str]:
    """What `docker run --env-file` passes: `VAR=value` lines, the value literal after the first `=`
    (quotes included), `#` lines and blank lines skipped."""
    env = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
    return env


def unit_for(node: str) -> str:
    """The minio unit as deploys/minio.py renders it on `node` (keybuzz.ops.container_unit's template, with the
    arguments the deploy gives it: they come from the plan, the same on every node)."""
    assert node in dict(NODES)
    return render("common/container.service.j2", name=S.SERVICE, image="minio/minio:RELEASE.2024-10-02T17-50-41Z",
                  command=S.server_command(), run_args=S.run_args(NODES), reload=None,
                  description="KeyBuzz MinIO (distributed, minio-01..03)", stop_timeout=30)


def exec_start(unit: str) -> list[str]:
    line = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_minio_volumes_is_the_designs_line_byte_for_byte_and_identical_on_the_three_nodes():
    hosts = [name for name, _ in NODES]
    assert hosts == ["minio-01", "minio-02", "minio-03"]
    files = {node: S.render_env_file(hosts) for node in hosts}  # the deploy renders it from the plan on each node
    assert len(set(files.values())) == 1
    env = docker_env_file(files["minio-01"])
    assert env["MINIO_VOLUMES"].encode() == DESIGN_MINIO_VOLUMES.encode()
    units = {node: unit_for(node) for node in hosts}
    assert len(set(units.values())) == 1, "the unit differs between nodes"


def test_nothing_secret_reaches_a_command_line_or_the_containers_environment(tmp_path):
    credentials.init(tmp_path, bricks=["minio"])
    values = {k: v for k, (v, _) in credentials.parse_env(tmp_path / "minio.env").items()}
    env_text = S.render_env_file([n for n, _ in NODES])
    unit = unit_for("minio-01")
    argv = exec_start(unit)
    for value in values.values():
        assert value not in unit and value not in env_text
    assert "-e" not in argv and "--env" not in argv and not any(a.startswith("--env=") for a in argv)
    assert argv[argv.index("--env-file") + 1] == S.ENV_FILE
    env = docker_env_file(env_text)
    assert set(env) == {"MINIO_VOLUMES", "MINIO_ROOT_USER_FILE", "MINIO_ROOT_PASSWORD_FILE"}
    # the *_FILE variables name files of the read-only secrets mount, which holds the files the deploy writes
    mount = argv[argv.index(f"{S.SECRETS_DIR}:{S.CREDENTIALS_MOUNT}:ro") - 1]
    assert mount == "-v"
    assert {env[f"{var}_FILE"] for var in S.ROOT_FILES} == {f"{S.CREDENTIALS_MOUNT}/{n}" for n in S.ROOT_FILES.values()}
    deploy = (ROOT / "deploys" / "minio.py").read_text()
    assert "ROOT_FILES.items()" in deploy and "secret_file(" in deploy


def test_unit_runs_host_network_names_console_and_restarts_always():
    unit = unit_for("minio-01")
    argv = exec_start(unit)
    assert argv[argv.index("--network") + 1] == "host"
    hosts = [argv[i + 1] for i, a in enumerate(argv) if a == "--add-host"]
    assert hosts == ["minio-01.keybuzz.io:10.0.0.134", "minio-02.keybuzz.io:10.0.0.131",
                     "minio-03.keybuzz.io:10.0.0.132", "s3.keybuzz.io:10.0.0.134"]
    assert argv[-5:] == ["server", "--address", ":9000", "--console-address", ":9001"]
    assert f"{S.DATA_DIR}:/data" in argv
    assert "Restart=always" in unit
    assert S.OPEN_PORTS == ("tcp/9000", "tcp/9001")
    from keybuzz.base_os.settings import open_ports

    assert open_ports("minio") == (["9000", "9001"], [])


# --- preflight: servers.tsv -----------------------------------------------------------------------------------

OTHER = [("queue-01", "10.0.0.126", "rabbitmq"), ("queue-02", "10.0.0.127", "rabbitmq"),
         ("queue-03", "10.0.0.128", "rabbitmq")]
GOOD = [("minio-01", "10.0.0.134", "minio"), ("minio-02", "10.0.0.131", "minio"), ("minio-03", "10.0.0.132", "minio")]


@pytest.mark.parametrize("rows, line, reason", [
    ([GOOD[0], ("minio-02", "10.0.0.135", "minio"), GOOD[2]], 3, "minio-02 10.0.0.135"),
    ([GOOD[1], GOOD[0], GOOD[2]], 2, "in that order"),
    ([GOOD[0], GOOD[1], ("minio-04", "10.0.0.132", "minio")], 4, "minio-04"),
])
def test_a_minio_group_other_than_the_designs_is_refused_naming_servers_tsv_and_the_fix(tmp_path, rows, line, reason):
    tsv = write_tsv(tmp_path / "servers.tsv", OTHER + rows)
    with pytest.raises(InputError) as err:
        S.preflight_servers(load_servers(tsv))
    message = str(err.value)
    assert message.startswith(f"{tsv}:{line + len(OTHER)}: "), message
    assert reason in message and "minio-01 10.0.0.134, minio-02 10.0.0.131, minio-03 10.0.0.132" in message
    assert "fix" in message and "\n" not in message


def test_a_k3s_worker_in_the_minio_group_is_refused(tmp_path):
    tsv = write_tsv(tmp_path / "servers.tsv", [GOOD[0], GOOD[1], ("k3s-worker-05", "10.0.0.132", "minio")])
    with pytest.raises(InputError, match=rf"^{tsv}:4: k3s-worker-05 cannot be in the minio group"):
        S.preflight_servers(load_servers(tsv))


def test_the_designs_group_passes_and_the_lab_keeps_its_offsets(tmp_path):
    S.preflight_servers(PRODUCTION)
    tsv = write_tsv(tmp_path / "servers.tsv", [(n, f"172.30.0.{ip.rsplit('.', 1)[1]}", "minio") for n, ip, _ in GOOD])
    S.preflight_servers(load_servers(tsv, network="172.30.0.0/24"), network="172.30.0.0/24")
    with pytest.raises(InputError):  # the design's addresses on another network are not the lab's
        S.preflight_servers(load_servers(write_tsv(tmp_path / "s2.tsv", GOOD)), network="172.30.0.0/24")


def test_pyinfra_stops_on_a_wrong_minio_group_before_contacting_any_host(tmp_path):
    tsv = write_tsv(tmp_path / "servers.tsv", [GOOD[0], ("minio-02", "10.0.0.133", "minio"), GOOD[2]])
    creds = tmp_path / "credentials"
    credentials.init(creds, bricks=["minio"])
    override = tmp_path / "versions.yaml"
    override.write_text('minio_image: "minio/minio:RELEASE.2024-10-02T17-50-41Z"\n')
    result = run(["pyinfra", "-y", "inventory.py", "deploys/minio.py"],
                 env={"KEYBUZZ_SERVERS": str(tsv), "KEYBUZZ_CREDENTIALS_DIR": str(creds),
                      "KEYBUZZ_VERSIONS": str(override)})
    assert result.returncode != 0
    lines = [x for x in (result.stdout + result.stderr).splitlines() if x.startswith("keybuzz: ")]
    assert len(lines) == 1 and lines[0].startswith(f"keybuzz: {tsv}:3: the minio group is "), lines
    assert "Traceback" not in result.stderr and "Connecting" not in result.stdout + result.stderr


def test_pyinfra_stops_on_the_designs_minio_pin_naming_versions_yaml_and_the_release(tmp_path):
    creds = tmp_path / "credentials"
    credentials.init(creds, bricks=["minio"])
    result = run(["pyinfra", "-y", "inventory.py", "deploys/minio.py"], env={"KEYBUZZ_CREDENTIALS_DIR": str(creds)})
    lines = [x for x in (result.stdout + result.stderr).splitlines() if x.startswith("keybuzz: ")]
    assert result.returncode != 0 and len(lines) == 1, result.stdout + result.stderr
    assert lines[0].startswith(f"keybuzz: {ROOT / 'versions.yaml'}:") and "RELEASE.2024-10-02T17-50-41Z" in lines[0]
    assert "KEYBUZZ_VERSIONS" in lines[0] and "Connecting" not in result.stdout + result.stderr


def test_the_lab_pins_a_well_formed_minio_release_that_is_no_lab_image():
    from keybuzz.lab import images
    from keybuzz.versions import load_versions

    pins = load_versions(override=ROOT / "lab" / "versions.lab.yaml")
    S.preflight(pins)  # passes the refusal
    assert pins["minio_image"].endswith("/minio/minio:RELEASE.2024-10-02T17-50-41Z")
    assert "minio_image" not in images.service_keys().values()  # nothing is built or pushed for it
    assert "s3-standin" not in images.service_keys()  # the protocol stand-in is never a pin


# --- the node helper: health gating (against a real HTTP server on loopback) -----------------------------------

class _Health(http.server.BaseHTTPRequestHandler):
    answers: dict = {}

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(self.answers.get(self.path, 404))
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def _script(port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "templates" / "minio" / "keybuzz-minio"), *args], capture_output=True,
                          text=True, timeout=60, env={"KEYBUZZ_MINIO_PORT": str(port), "PATH": "/usr/bin:/bin"})


SAFETY_BOUND_S = 15


def test_node_helper_gates_on_liveness_and_write_quorum(health_server):
    port = health_server.server_address[1]
    _Health.answers = {"/minio/health/live": 200, "/minio/health/cluster": 503}
    assert _script(port, "state", "127.0.0.1").stdout.strip() == "starting"
    began = time.monotonic()
    waited = _script(port, "wait-healthy", "127.0.0.1", "3")
    seconds = time.monotonic() - began
    assert waited.returncode == 1 and "not healthy within 3 s" in waited.stderr
    # it kept asking for its 3 s (bash SECONDS is whole seconds: 2 s at least), then gave up; 15 s is only a safety
    # bound against a helper that ignores its limit, generous for a loaded machine, not a target
    assert 2 <= seconds < SAFETY_BOUND_S, seconds
    _Health.answers = {"/minio/health/live": 200, "/minio/health/cluster": 200}
    assert _script(port, "state", "127.0.0.1").stdout.strip() == "healthy"
    assert _script(port, "wait-healthy", "127.0.0.1", "3").returncode == 0
    health_server.shutdown()
    health_server.server_close()
    assert _script(port, "state", "127.0.0.1").stdout.strip() == "down"
    assert _script(port, "status", "127.0.0.1", "/minio/health/live").stdout.strip() == "000"


# --- the apps' buckets, policies and users ---------------------------------------------------------------------

def test_apps_list_is_valid_and_names_only_brick_variables():
    apps = S.load_apps()
    assert apps.buckets and S.CHECK_BUCKET not in apps.buckets
    for user in apps.users:
        assert {user.access_key_var, user.secret_key_var} <= set(credentials.BRICKS["minio"])
    text = S.APPS_FILE.read_text()
    for value in ("keybuzz-app", "keybuzz-backup"):  # default user names are in the brick, never secret keys
        assert value not in text or value in str(credentials.BRICKS["minio"])


def test_policy_documents_give_each_access_exactly_its_actions():
    doc = S.policy_document(["a-bucket"], "writeonly")
    actions = {a for st in doc["Statement"] for a in st["Action"]}
    assert "s3:PutObject" in actions and not {"s3:GetObject", "s3:DeleteObject", "s3:ListBucket"} & actions
    rw = S.policy_document(["a-bucket", "b-bucket"], "readwrite")
    assert rw["Statement"][1]["Resource"] == ["arn:aws:s3:::a-bucket/*", "arn:aws:s3:::b-bucket/*"]
    assert all(st["Effect"] == "Allow" for st in rw["Statement"])


def test_bootstrap_plan_does_only_what_is_missing():
    apps = S.load_apps()
    keys = {"MINIO_APP_ACCESS_KEY": "keybuzz-app", "MINIO_APP_SECRET_KEY": "s" * 16,
            "MINIO_BACKUP_ACCESS_KEY": "keybuzz-backup", "MINIO_BACKUP_SECRET_KEY": "t" * 16}
    everything = S.bootstrap_actions(apps, None, keys)
    assert [a for a in everything if a[0] == "make-bucket"] == [("make-bucket", b) for b in apps.buckets]
    assert all("s" * 16 not in str(a) and "t" * 16 not in str(a) for a in everything)  # no secret in actions
    # MinIO hands policies back with a lone action as a string: still the same policy
    stored = {n: {**d, "Statement": [{**st, "Action": st["Action"][0] if len(st["Action"]) == 1 else st["Action"]}
                                     for st in d["Statement"]]} for n, d in apps.policies.items()}
    done = S.IamState(frozenset(apps.buckets), stored, {"keybuzz-app": {"keybuzz-app-readwrite"},
                                                        "keybuzz-backup": {"keybuzz-backup-writeonly"}})
    assert S.bootstrap_actions(apps, done, keys) == []
    partial = S.IamState(frozenset(apps.buckets[:1]), {}, {"keybuzz-app": set()}, frozenset({"keybuzz-app"}))
    todo = S.bootstrap_actions(apps, partial, keys)
    assert ("set-secret", "keybuzz-app") in todo and ("add-user", "keybuzz-backup") in todo
    assert ("attach-policy", "keybuzz-app", "keybuzz-app-readwrite") in todo
    assert ("make-bucket", apps.buckets[0]) not in todo


def test_apps_list_mistakes_are_refused_with_the_file(tmp_path):
    bad = tmp_path / "buckets.yaml"
    bad.write_text("buckets: [ok-bucket]\npolicies:\n  p: {access: readwrite, buckets: [other]}\n")
    with pytest.raises(InputError, match=rf"^{bad}:3: policy p: .*unknown: other"):
        S.load_apps(bad)
    bad.write_text("buckets: [ok-bucket]\npolicies:\n  p: {access: readwrite, buckets: [ok-bucket]}\n"
                   "users:\n  - {access_key_from: NOPE, secret_key_from: MINIO_APP_SECRET_KEY, policies: [p]}\n")
    with pytest.raises(InputError, match=rf"^{bad}:5: user key variable 'NOPE' is not in the minio credentials brick"):
        S.load_apps(bad)
    bad.write_text("buckets: [Bad_Bucket]\n")
    with pytest.raises(InputError, match=rf"^{bad}:1: bucket 'Bad_Bucket': .*S3 naming"):
        S.load_apps(bad)
