"""Settings of the MinIO layer (design §B, §F): paths, ports, the design's nodes and names, the pure render
functions of what deploys/minio.py installs, the preflight refusals, and the apps' bucket/user/policy list.

One container per node, `docker run --network host` under systemd (keybuzz/ops.py), the same definition on the
three nodes but for nothing: MINIO_VOLUMES (design §B, byte for byte) and the root credentials' file names come
from a 0600 env file (`--env-file`); the root credentials themselves are 0600 files mounted read-only on
/run/secrets, which MinIO reads through MINIO_ROOT_USER_FILE / MINIO_ROOT_PASSWORD_FILE: no secret in the unit
file, on a command line, or in `docker inspect` (Config.Env holds the file names only).

    >>> minio_volumes(["minio-01", "minio-02", "minio-03"])
    'http://minio-01.keybuzz.io/data http://minio-02.keybuzz.io/data http://minio-03.keybuzz.io/data'
    >>> OPEN_PORTS
    ('tcp/9000', 'tcp/9001')

The pin: MinIO tags its releases `RELEASE.YYYY-MM-DDTHH-MM-SSZ` (UTC time of the release, `-` instead of `:`),
e.g. `RELEASE.2024-10-02T17-50-41Z`. The design's `minio/minio:RELEASE.2024-10-02T10-00Z` lacks the seconds: no
such tag exists, so versions.yaml keeps the design's line and this preflight refuses it with the fix (an
override file named by KEYBUZZ_VERSIONS pinning the release of that day).

    >>> preflight({"minio_image": "minio/minio:RELEASE.2024-10-02T17-50-41Z"})
    >>> preflight({"minio_image": "minio/minio:RELEASE.2024-10-02T10-00Z"})
    Traceback (most recent call last):
    keybuzz.errors.PinRefused: minio_image: minio_image 'minio/minio:RELEASE.2024-10-02T10-00Z': ...
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime

import yaml

from keybuzz import ROOT
from keybuzz.errors import InputError, PinRefused
from keybuzz.render import render

# --- ports, paths -------------------------------------------------------------------------------------------

S3_PORT = 9000
CONSOLE_PORT = 9001
OPEN_PORTS = (f"tcp/{S3_PORT}", f"tcp/{CONSOLE_PORT}")  # to the private network only (base OS firewall)

BASE_DIR = "/opt/keybuzz/minio"
DATA_DIR = f"{BASE_DIR}/data"  # design §B: /opt/keybuzz/minio/data -> /data
SECRETS_DIR = f"{BASE_DIR}/secrets"  # root 0700: mounted read-only on /run/secrets
ENV_FILE = f"{BASE_DIR}/minio.env"  # root 0600, --env-file: MINIO_VOLUMES and the secret files' names
CONTAINER_DATA = "/data"
CREDENTIALS_MOUNT = "/run/secrets"  # MinIO's own default place for *_FILE credentials
# the root credentials' files in SECRETS_DIR (MinIO reads /run/secrets/<name> through MINIO_ROOT_*_FILE)
ROOT_FILES = {"MINIO_ROOT_USER": "minio_root_user", "MINIO_ROOT_PASSWORD": "minio_root_password"}
NODE_SCRIPT = "/usr/local/sbin/keybuzz-minio"
SERVICE = "minio"
WAIT_SECONDS = 300  # bound of every wait for the cluster (first start of three nodes included)

DOMAIN = "keybuzz.io"
S3_NAME = f"s3.{DOMAIN}"  # design §B: the entry point, -> minio-01
S3_ENDPOINT = f"{S3_NAME}:{S3_PORT}"

# Design §B: the three nodes, their order in MINIO_VOLUMES and their addresses on the Hetzner private network.
DESIGN_NODES = (("minio-01", "10.0.0.134"), ("minio-02", "10.0.0.131"), ("minio-03", "10.0.0.132"))
DESIGN_NETWORK = "10.0.0.0/16"

# Erasure coding of 3 drives (one per node): MinIO's default parity for an erasure set of 2-3 drives is EC:1,
# so 2 data + 1 parity shards; read quorum = data shards = 2, write quorum = data shards = 2 (data != parity).
# One node down: reads and writes go on; two down: neither (the cluster health endpoint answers 503).
DRIVES = 3
PARITY = 1
WRITE_QUORUM = DRIVES - PARITY
READ_QUORUM = DRIVES - PARITY


def node_name(host: str) -> str:
    """The DNS name MinIO knows a node by (design §B).

    >>> node_name("minio-02")
    'minio-02.keybuzz.io'
    """
    return f"{host}.{DOMAIN}"


def minio_volumes(hosts) -> str:
    """MINIO_VOLUMES exactly as design §B writes it, from the node names in servers.tsv order.

    No `:9000` in the URLs: with `--address :9000` (MinIO's default, the port only) MinIO gives a URL without a
    port the port of --address; a port there is only required when --address names a host too (MinIO's
    endpoint parsing, minio/minio#4205). So the design's form is kept byte for byte.
    """
    return " ".join(f"http://{node_name(h)}{CONTAINER_DATA}" for h in hosts)


def dns_names(nodes) -> dict[str, str]:
    """{name: address} every host that talks to MinIO must resolve (design §B): minio-0N.keybuzz.io, and
    s3.keybuzz.io -> the first node (minio-01).

    >>> dns_names([("minio-01", "10.0.0.134"), ("minio-02", "10.0.0.131")])
    {'minio-01.keybuzz.io': '10.0.0.134', 'minio-02.keybuzz.io': '10.0.0.131', 's3.keybuzz.io': '10.0.0.134'}
    """
    names = {node_name(h): ip for h, ip in nodes}
    names[S3_NAME] = nodes[0][1]
    return names


def render_env_file(hosts) -> str:
    """The node's env file (`docker run --env-file`, root 0600): nothing secret, identical on the three nodes.

    Docker's env-file format takes everything after the first `=` literally (quotes included), so the value is
    written unquoted: the container sees exactly the design's MINIO_VOLUMES.

    >>> [line.split("=")[0] for line in render_env_file(["minio-01"]).splitlines() if not line.startswith("#")]
    ['MINIO_VOLUMES', 'MINIO_ROOT_USER_FILE', 'MINIO_ROOT_PASSWORD_FILE']
    """
    return render("minio/minio.env.j2", volumes=minio_volumes(hosts),
                  files={f"{var}_FILE": f"{CREDENTIALS_MOUNT}/{name}" for var, name in ROOT_FILES.items()})


def run_args(nodes) -> list[str]:
    """`docker run` arguments of the minio unit (no secret: file names only).

    --network host (keybuzz.ops.container_unit): behind Docker's port mapping a distributed MinIO does not find
    itself among MINIO_VOLUMES (its name resolves to the host's address, which no interface of the container
    has: "grid: local host not found", minio/minio#18977, #18983 "working as intended"). --add-host for every
    name: a host-network container gets a copy of the host's /etc/hosts made when it is created, so the names
    are given to the container itself, and a changed address changes the unit (a rolling restart).

    >>> run_args([("minio-01", "10.0.0.134")])[:2]
    ['--env-file', '/opt/keybuzz/minio/minio.env']
    """
    args = ["--env-file", ENV_FILE,
            "-v", f"{DATA_DIR}:{CONTAINER_DATA}",
            "-v", f"{SECRETS_DIR}:{CREDENTIALS_MOUNT}:ro"]
    for name, ip in dns_names(nodes).items():
        args += ["--add-host", f"{name}:{ip}"]
    return args


def server_command() -> str:
    """The container's command: MINIO_VOLUMES comes from the env file (MinIO reads it when no volume is given).

    >>> server_command()
    'server --address :9000 --console-address :9001'
    """
    return f"server --address :{S3_PORT} --console-address :{CONSOLE_PORT}"


# --- preflight ---------------------------------------------------------------------------------------------

RELEASE_TAG = re.compile(r"^RELEASE\.(?P<date>\d{4}-\d{2}-\d{2})T(?P<time>\d{2}-\d{2}-\d{2})Z(?:-cpuv1)?$")
# the MinIO server release published on a date a malformed pin names (MinIO's release list)
KNOWN_RELEASES = {"2024-10-02": "RELEASE.2024-10-02T17-50-41Z"}


def release_problem(tag: str) -> str | None:
    """Why `tag` is not a MinIO release tag, or None.

    >>> release_problem("RELEASE.2024-10-02T17-50-41Z") is None
    True
    """
    m = RELEASE_TAG.match(tag)
    if m:
        try:
            datetime.strptime(f"{m.group('date')}T{m.group('time')}", "%Y-%m-%dT%H-%M-%S")
            return None
        except ValueError:
            pass
    return f"{tag!r} is not a MinIO release tag (RELEASE.YYYY-MM-DDTHH-MM-SSZ, e.g. RELEASE.2024-10-02T17-50-41Z)"


def preflight(versions: dict) -> None:
    """Refuse (PinRefused) a minio_image whose tag is not a MinIO release stamp, naming the likely release."""
    ref = str(versions.get("minio_image", "")).split("@", 1)[0]
    tag = ref.rpartition(":")[2] if ref.rfind(":") > ref.rfind("/") else ""
    problem = release_problem(tag)
    if problem is None:
        return
    day = re.match(r"^RELEASE\.(\d{4}-\d{2}-\d{2})", tag)
    known = KNOWN_RELEASES.get(day.group(1)) if day else None
    name = ref.rpartition(":")[0] or "minio/minio"
    fix = (f"the release of that day is {known}: pin minio_image: \"{name}:{known}\"" if known else
           "look the release up in MinIO's release list (`invoke versions.check` confirms it exists) and pin it")
    raise PinRefused("minio_image", f"minio_image {ref!r}: {problem}; {fix} in an override file named by "
                     "KEYBUZZ_VERSIONS=<file> (versions.yaml keeps the design's line)")


def design_nodes(network: str) -> list[tuple[str, str]]:
    """The design's nodes with their addresses moved to `network` at the same offset (the lab keeps the last
    octet: 172.30.0.134); on the design's own 10.0.0.0/16 they are the design's addresses.

    >>> design_nodes("10.0.0.0/16")[0], design_nodes("172.30.0.0/24")[1]
    (('minio-01', '10.0.0.134'), ('minio-02', '172.30.0.131'))
    """
    base = int(ipaddress.ip_network(DESIGN_NETWORK).network_address)
    target = int(ipaddress.ip_network(network).network_address)
    return [(name, str(ipaddress.ip_address(target + int(ipaddress.ip_address(ip)) - base)))
            for name, ip in DESIGN_NODES]


def preflight_servers(plan, network: str | None = None) -> None:
    """Refuse (InputError: servers.tsv, line, fix) a minio group that is not exactly minio-01..03 at the design's
    addresses (§B; on another private network: the same offsets), in that order, or that holds a K3s worker.

    Called by keybuzz.inventory.preflight before any host is contacted.
    """
    from keybuzz.servers import private_network

    network = network or str(private_network())
    group = plan.group("minio")
    want = design_nodes(network)
    want_text = ", ".join(f"{n} {ip}" for n, ip in want)
    for server in group:
        if server.name.startswith("k3s-worker"):
            raise InputError(plan.path, server.line, f"{server.name} is a K3s worker and cannot be in the minio "
                             f"group (design §B: k3s-worker-05 stays in k3s_workers); the minio lines must be "
                             f"{want_text}")
    found = [(s.name, s.ip) for s in group]
    if found != want:
        line = next((s.line for s, w in zip(group, want, strict=False) if (s.name, s.ip) != w),
                    group[-1].line if group else 0)
        found_text = ", ".join(f"{n} {ip or 'TBD'}" for n, ip in found) or "none"
        raise InputError(plan.path, line, f"the minio group is {found_text}; design §B requires exactly "
                         f"{want_text} in that order (MINIO_VOLUMES names them in this order on every node); "
                         "fix the minio lines")


# --- the apps' buckets, users and policies (templates/minio/buckets.yaml) ------------------------------------

APPS_FILE = ROOT / "templates" / "minio" / "buckets.yaml"
CHECK_BUCKET = "keybuzz-check"  # the checks' own bucket (put/get/delete of a probe object)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # S3 bucket naming rules (no dots-as-IP check)
_ACCESS = {
    "readwrite": (["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
                  ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                   "s3:ListMultipartUploadParts"]),
    "readonly": (["s3:GetBucketLocation", "s3:ListBucket"], ["s3:GetObject"]),
    "writeonly": (["s3:GetBucketLocation"], ["s3:PutObject", "s3:AbortMultipartUpload",
                                            "s3:ListMultipartUploadParts"]),
}


@dataclass(frozen=True)
class AppUser:
    access_key_var: str  # minio.env variable holding the user's access key (its name in MinIO)
    secret_key_var: str  # minio.env variable holding its secret key
    policies: tuple[str, ...]


@dataclass(frozen=True)
class AppsPlan:
    buckets: tuple[str, ...]
    policies: dict  # name -> policy document (dict)
    users: tuple[AppUser, ...]


def policy_document(buckets, access: str) -> dict:
    """An IAM policy giving `access` (readwrite, readonly, writeonly) on `buckets` and their objects only.

    >>> doc = policy_document(["keybuzz-media"], "readonly")
    >>> [s["Resource"] for s in doc["Statement"]]
    [['arn:aws:s3:::keybuzz-media'], ['arn:aws:s3:::keybuzz-media/*']]
    """
    on_bucket, on_objects = _ACCESS[access]
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": list(on_bucket), "Resource": [f"arn:aws:s3:::{b}" for b in buckets]},
        {"Effect": "Allow", "Action": list(on_objects), "Resource": [f"arn:aws:s3:::{b}/*" for b in buckets]},
    ]}


def load_apps(path=APPS_FILE, brick_vars=None) -> AppsPlan:
    """The apps' list, validated (InputError naming the file and the fix). `brick_vars`: the variables the minio
    credentials brick defines (a user's keys must be among them)."""
    from keybuzz.credentials import BRICKS

    brick_vars = set(BRICKS["minio"]) if brick_vars is None else set(brick_vars)
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}

    def line(needle) -> int:  # the first line naming `needle` (its definition), for the refusal
        return next((n for n, x in enumerate(text.splitlines(), 1) if str(needle) in x.split("#")[0]), 0)

    buckets = tuple(data.get("buckets") or ())
    for b in buckets:
        if not isinstance(b, str) or not _BUCKET.match(b):
            raise InputError(path, line(b), f"bucket {b!r}: 3-63 lower-case letters, digits, '.', '-' (S3 naming)")
    if CHECK_BUCKET in buckets:
        raise InputError(path, line(CHECK_BUCKET),
                         f"bucket {CHECK_BUCKET} is the checks' own: give the apps another name")
    policies = {}
    for name, spec in (data.get("policies") or {}).items():
        access = (spec or {}).get("access")
        on = tuple((spec or {}).get("buckets") or ())
        if access not in _ACCESS:
            raise InputError(path, line(f"{name}:"), f"policy {name}: access must be one of {', '.join(_ACCESS)}")
        unknown = [b for b in on if b not in buckets]
        if not on or unknown:
            raise InputError(path, line(f"{name}:"), f"policy {name}: buckets must be a non-empty list of the "
                             f"buckets above (unknown: {', '.join(unknown) or 'none given'})")
        policies[name] = policy_document(on, access)
    users = []
    for spec in data.get("users") or ():
        user = AppUser(spec.get("access_key_from", ""), spec.get("secret_key_from", ""),
                       tuple(spec.get("policies") or ()))
        for var in (user.access_key_var, user.secret_key_var):
            if var not in brick_vars:
                raise InputError(path, line(var), f"user key variable {var!r} is not in the minio credentials brick "
                                 f"({', '.join(sorted(brick_vars))}); name one of them")
        unknown = [p for p in user.policies if p not in policies]
        if not user.policies or unknown:
            raise InputError(path, line(user.access_key_var), f"user {user.access_key_var}: policies must name "
                             f"policies of this file (unknown: {', '.join(unknown) or 'none given'})")
        users.append(user)
    return AppsPlan(buckets, policies, tuple(users))


@dataclass(frozen=True)
class IamState:
    """What the running cluster holds: buckets, policies {name: document}, users {access key: policies},
    and which users' secret keys were refused (their minio.env value differs from MinIO's)."""

    buckets: frozenset
    policies: dict
    users: dict
    bad_secrets: frozenset = frozenset()


def bootstrap_actions(apps: AppsPlan, state: IamState | None, keys: dict[str, str]) -> list[tuple]:
    """What to do so that the cluster holds `apps` (idempotent: [] when it does). `state` None: the cluster did not
    answer (first install): everything. `keys`: {minio.env variable: value} (only access keys are returned
    in actions; secret keys stay out of them).

    >>> apps = AppsPlan(("b1",), {"p": policy_document(["b1"], "readonly")}, (AppUser("A", "S", ("p",)),))
    >>> bootstrap_actions(apps, None, {"A": "app"})
    [('make-bucket', 'b1'), ('add-policy', 'p'), ('add-user', 'app'), ('attach-policy', 'app', 'p')]
    >>> bootstrap_actions(apps, IamState(frozenset({"b1"}), {"p": apps.policies["p"]}, {"app": {"p"}}), {"A": "app"})
    []
    """
    if state is None:
        state = IamState(frozenset(), {}, {})
    actions: list[tuple] = [("make-bucket", b) for b in apps.buckets if b not in state.buckets]
    actions += [("add-policy", name) for name, doc in apps.policies.items()
                if not _same_policy(state.policies.get(name), doc)]
    for user in apps.users:
        access = keys[user.access_key_var]
        if access not in state.users:
            actions.append(("add-user", access))
        elif access in state.bad_secrets:
            actions.append(("set-secret", access))
        have = state.users.get(access, set())
        actions += [("attach-policy", access, p) for p in user.policies if p not in have]
    return actions


def _same_policy(current: dict | None, wanted: dict) -> bool:
    """MinIO hands a stored policy back with its own spelling (a single action or resource as a string):
    compare the statements as sets."""
    if current is None:
        return False

    def norm(doc):
        out = set()
        for st in doc.get("Statement", []):
            acts = st.get("Action", [])
            res = st.get("Resource", [])
            out.add((st.get("Effect"), frozenset([acts] if isinstance(acts, str) else acts),
                     frozenset([res] if isinstance(res, str) else res)))
        return out
    return norm(current) == norm(wanted)
