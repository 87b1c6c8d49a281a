"""The lab: the production deploy code, over SSH, against containers that behave like fresh Debian hosts.

One Docker network of its own (172.30.0.0/24, never 10.x), on this machine only:

    container                   address          what it stands for
    keybuzz-lab-registry        172.30.0.2:5000  the private registry the hosts pull images from
    keybuzz-lab-lb              172.30.0.10      the Hetzner private LB 10.0.0.10 (TCP, §A)
    keybuzz-lab-haproxy-01/02   172.30.0.11/12   haproxy-01/02
    keybuzz-lab-redis-01..03    172.30.0.21-23   redis-01..03 (no production address yet)
    keybuzz-lab-queue-01..03    172.30.0.126-128 queue-01..03

Each host container boots systemd as PID 1, runs sshd, and gets its Docker Engine from the base OS
layer, as a fresh server would. What differs from production is data only: the generated servers.tsv,
lab/versions.lab.yaml and the generated credentials, all under <repo>/.lab/ (see env()).

Example::

    rows = up()                 # build what is missing, start, deploy the implemented layers
    deploy("base_os").changes   # a second run changes nothing
    # -> 0
    exec("redis-01", "docker ps").stdout
    kill_dockerd("redis-01"); stop_host("queue-02"); start_host("queue-02")
    down()                      # removes every container, network and volume the lab created
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from keybuzz import ROOT, credentials, runner
from keybuzz import ssh as ssh_module
from keybuzz.layers import LAYERS, Layer, ordered
from keybuzz.runner import strip_colors
from keybuzz.servers import DEFAULT_PRIVATE_NETWORK, load_servers

LAB_DIR = ROOT / ".lab"
VERSIONS_FILE = ROOT / "lab" / "versions.lab.yaml"
PLAN_FILE = ROOT / "lab" / "lab.yaml"
PREFIX = "keybuzz-lab-"
LABEL = "keybuzz.lab=1"  # on every container and network the lab creates: down() removes exactly these
NETWORK = f"{PREFIX}net"
SSH_WAIT_SECONDS = 300  # 22 hosts booting systemd at once on 2 cores
CHECK_RETRIES, CHECK_RETRY_SECONDS = 3, 10  # a red check is retried, bounded to 30 s


@dataclass(frozen=True)
class LabHost:
    """One lab host: production name and role, lab address (172.30.0.<production last octet>)."""

    name: str
    ip: str
    role: str

    @property
    def container(self) -> str:
        return PREFIX + self.name

    @property
    def public_ip(self) -> str:
        """Its address on the network that stands for the public side (same last octet)."""
        return str(ipaddress.ip_network(PUBLIC_SUBNET).network_address + int(self.ip.rsplit(".", 1)[1]))


def _plan_data() -> dict:
    return yaml.safe_load(PLAN_FILE.read_text(encoding="utf-8"))


def topology(data: dict | None = None, plan=None) -> tuple[LabHost, ...]:
    """The lab hosts: production hosts (servers.tsv) of the roles a service layer with a deploy file touches,
    at 172.30.0.<last octet of the production address>, or the lab.yaml address where production has none.

    >>> [h.name for h in topology() if h.role == "haproxy"]
    ['haproxy-01', 'haproxy-02']
    """
    data = data or _plan_data()
    plan = plan or load_servers(ROOT / "servers.tsv", network=DEFAULT_PRIVATE_NETWORK)
    network = ipaddress.ip_network(data["network"])
    roles = {role for layer in LAYERS.values() if layer.exists() and layer.name != "base_os" for role in layer.roles}
    hosts = []
    for s in plan.servers:
        if s.role not in roles:
            continue
        ip = data["tbd_addresses"].get(s.name) or (
            str(network.network_address + int(s.ip.split(".")[-1])) if s.ip else None)
        if ip is None:
            raise LabError(f"{PLAN_FILE}: {s.name} has no production address (TBD in servers.tsv): "
                           f"give it one under tbd_addresses")
        hosts.append(LabHost(s.name, ip, s.role))
    return tuple(hosts)


_DATA = _plan_data()
SUBNET = _DATA["network"]
PUBLIC_SUBNET = _DATA["public_network"]
PUBLIC_NETWORK = f"{PREFIX}public"
GATEWAY = _DATA["gateway"]
REGISTRY_IP = _DATA["registry"]
REGISTRY = f"{REGISTRY_IP}:5000"
LOAD_BALANCERS = _DATA["load_balancers"]
LB_IP = LOAD_BALANCERS[0]["address"]  # the stand-in for 10.0.0.10, where checks send client traffic
LB_PORTS: dict[int, str] = LOAD_BALANCERS[0]["ports"]
# layer -> {why: the reason the lab can only run it with --dry, env: what its dry run needs (optional)}
DRY_ONLY: dict[str, dict] = _DATA.get("dry_only") or {}
TOPOLOGY: tuple[LabHost, ...] = topology(_DATA)
REGISTRY_CONTAINER = f"{PREFIX}registry"
LB_CONTAINER = f"{PREFIX}lb"
# The registry's storage is a cache like the images (content-addressed blobs): down() keeps it, so that a new lab
# pushes only what changed (about 1 s instead of 55 s for the service images). Its own label, never LABEL.
REGISTRY_VOLUME = f"{PREFIX}registry-cache"
CACHE_LABEL = "keybuzz.lab.cache=1"
# The lab's two networks outlive a down(): fixed names and subnets, reused by the next up (_ensure_network).
# Removing them failed in CI and here with "has active endpoints" while no container was attached (Docker 20.10's
# stale endpoint count, moby/moby#42119; only a daemon restart clears it), and the stale endpoint holds no address.
KEPT_NETWORKS = (NETWORK, PUBLIC_NETWORK)


class LabError(RuntimeError):
    """Something the lab needs is missing or failed; the message says what to do."""


# --------------------------------------------------------------------------------------------------
# paths and environment


def paths() -> dict[str, Path]:
    """Where the lab keeps its state (all under .lab/, gitignored; down() deletes it).

    Example::

        paths()["servers"]
        # -> PosixPath('/work/main/.lab/servers.tsv')
    """
    return {
        "servers": LAB_DIR / "servers.tsv",
        "credentials": LAB_DIR / "credentials",
        "ssh_key": LAB_DIR / "ssh" / "id_ed25519",
        "known_hosts": LAB_DIR / "ssh" / "known_hosts",
        "inventory": LAB_DIR / "inventory.py",
        "lb_cfg": LAB_DIR / "lb" / "haproxy.cfg",
        "hosts": LAB_DIR / "hosts",
    }


def env() -> dict[str, str]:
    """Environment variables that point the deploy code (inventory, checks, tasks) at the lab.

    >>> env()["KEYBUZZ_LB_ADDRESS"]
    '172.30.0.10'
    """
    p = paths()
    return {
        "KEYBUZZ_SERVERS": str(p["servers"]),
        "KEYBUZZ_VERSIONS": str(VERSIONS_FILE),
        "KEYBUZZ_CREDENTIALS_DIR": str(p["credentials"]),
        "KEYBUZZ_SSH_USER": "root",
        "KEYBUZZ_SSH_KEY": str(p["ssh_key"]),
        "KEYBUZZ_SSH_KNOWN_HOSTS": str(p["known_hosts"]),
        "KEYBUZZ_LB_ADDRESS": LB_IP,
        "KEYBUZZ_PRIVATE_NETWORK": SUBNET,
    }


@contextmanager
def lab_environ() -> Iterator[None]:
    """Run a block with env() in os.environ (for in-process checks), restoring it afterwards."""
    saved = {k: os.environ.get(k) for k in env()}
    os.environ.update(env())
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def host(name: str) -> LabHost:
    """The lab host called `name` (LabError listing the names otherwise)."""
    for h in TOPOLOGY:
        if h.name == name:
            return h
    raise LabError(f"no lab host {name!r}; lab hosts: {', '.join(h.name for h in TOPOLOGY)}")


# --------------------------------------------------------------------------------------------------
# generated files


def servers_tsv() -> str:
    """The lab's servers.tsv (same format and validation as production's).

    >>> [line for line in servers_tsv().splitlines() if line.startswith("queue-03")][0]
    'queue-03\\t172.30.0.128\\trabbitmq\\tlab container keybuzz-lab-queue-03'
    """
    lines = [
        "# Generated by `invoke lab.up` (keybuzz/lab/lab.py): the lab's plan, same format as servers.tsv.",
        f"# Addresses are on the lab's Docker network {SUBNET}; this machine plays install-01.",
        "hostname\tprivate_ip\trole\tnote",
    ]
    lines += [f"{h.name}\t{h.ip}\t{h.role}\tlab container {h.container}" for h in TOPOLOGY]
    return "\n".join(lines) + "\n"


LB_CHECKS: dict[str, dict[str, int]] = LOAD_BALANCERS[0]["health_checks"]


def lb_checks_profile() -> str:
    """The LB stand-in's health-check profile: $KEYBUZZ_LAB_LB_CHECKS (a key of lab.yaml health_checks) or "lab"."""
    name = os.environ.get("KEYBUZZ_LAB_LB_CHECKS") or "lab"
    if name not in LB_CHECKS:
        raise LabError(f"KEYBUZZ_LAB_LB_CHECKS={name}: no such profile in lab/lab.yaml health_checks "
                       f"(one of {', '.join(LB_CHECKS)})")
    return name


def lb_config(profile: str | None = None) -> str:
    """HAProxy (TCP mode) config of the stand-in for the Hetzner private LB 10.0.0.10 (design §A).

    Like the Hetzner LB it only checks that a TCP connection opens, and balances round-robin over
    haproxy-01/02 on the same port. Its health checks follow `profile` (lab.yaml health_checks, in Hetzner's
    terms): interval -> inter, timeout -> the check's connect timeout (HAProxy uses min(timeout connect,
    inter)), retries -> fall = rise = retries + 1 (the first failed check, then `retries` more).

    >>> [line for line in lb_config("hetzner").splitlines() if "inter" in line or "connect" in line]
    ['    timeout connect 1s', '    default-server inter 3s fall 2 rise 2']
    """
    checks = LB_CHECKS[profile or lb_checks_profile()]
    backends = [h for h in TOPOLOGY if h.role == LOAD_BALANCERS[0]["role"]]
    out = [
        "# Generated by keybuzz/lab/lab.py: the lab's stand-in for the Hetzner private LB 10.0.0.10.",
        "global",
        "    maxconn 4096",
        "",
        "defaults",
        "    mode tcp",
        f"    timeout connect {checks['timeout']}s",
        "    timeout client 1h",
        "    timeout server 1h",
        f"    default-server inter {checks['interval']}s fall {checks['retries'] + 1} rise {checks['retries'] + 1}",
    ]
    for port, service in LB_PORTS.items():
        out += ["", f"listen {service}_{port}", f"    bind :{port}", "    balance roundrobin"]
        out += [f"    server {b.name} {b.ip}:{port} check" for b in backends]
    return "\n".join(out) + "\n"


def inventory_py() -> str:
    """A pyinfra inventory for the lab: `pyinfra .lab/inventory.py deploys/<layer>.py` (run from the repo).

    It sets env() and then does exactly what the production inventory.py does.
    """
    return (
        '"""Generated by `invoke lab.up`: the lab\'s pyinfra inventory (env of keybuzz.lab.lab.env())."""\n\n'
        "import os\n\n"
        f"os.environ.update({env()!r})\n\n"
        "from keybuzz.inventory import run_inventory  # noqa: E402\n\n"
        "run_inventory(globals())\n"
    )


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def prepare_state(progress: Callable[[str], None] = print) -> None:
    """Create .lab/: servers.tsv, credentials (random, 0600), SSH key, LB config, inventory."""
    p = paths()
    LAB_DIR.mkdir(exist_ok=True)
    _write(p["servers"], servers_tsv())
    _write(p["lb_cfg"], lb_config())
    _write(p["inventory"], inventory_py())
    if credentials.init(p["credentials"]):  # lines name variables only, never values
        progress(f"credentials: generated in {p['credentials']} (random, root 0600)")
    key = p["ssh_key"]
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(key.parent, 0o700)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "keybuzz-lab", "-f", str(key)])
        progress(f"ssh key: {key}")


# --------------------------------------------------------------------------------------------------
# docker helpers


def _run(cmd: list[str], check: bool = True, timeout: float | None = 300, **kw) -> subprocess.CompletedProcess:
    """subprocess.run with text capture; raise LabError (with stderr) when `check` and it fails."""
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)
    if check and result.returncode != 0:
        raise LabError(f"`{' '.join(cmd[:4])} ...` failed (exit {result.returncode}): "
                       f"{(result.stderr or result.stdout).strip()[-800:]}")
    return result


def _container_state(name: str) -> str | None:
    """'running', 'exited', ... or None when there is no such container."""
    r = _run(["docker", "inspect", "-f", "{{.State.Status}}", name], check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def _ensure_network(name: str = NETWORK, subnet: str = SUBNET) -> None:
    if _run(["docker", "network", "inspect", name], check=False).returncode == 0:
        return
    r = _run(["docker", "network", "create", "--driver", "bridge", "--subnet", subnet, "--label", LABEL, name],
             check=False)
    if r.returncode != 0:
        raise LabError(f"cannot create the lab network {name} ({subnet}): {r.stderr.strip()}; "
                       "another Docker network may already use that subnet (`docker network ls`)")


def _ensure_container(name: str, run_args: list[str], image: str, command: list[str] | None = None) -> bool:
    """Start container `name` (create it if absent). Returns True if it was created."""
    state = _container_state(name)
    if state == "running":
        return False
    if state is not None:
        _run(["docker", "start", name])
        return False
    _run(["docker", "run", "-d", "--name", name, "--label", LABEL, "--network", NETWORK,
          *run_args, image, *(command or [])])
    return True


# --------------------------------------------------------------------------------------------------
# the lab's parts


def _images(progress) -> dict[str, str]:
    from keybuzz.lab import images

    try:
        return images.build_all(progress)
    except images.BuildError as e:
        raise LabError(str(e)) from None


def start_registry(image: str, progress: Callable[[str], None] = print) -> str:
    """Run the lab registry (172.30.0.2:5000, published on 127.0.0.1 for pushing); returns host:port."""
    # a named volume (not the image's anonymous one) that outlives the lab: see REGISTRY_VOLUME
    if _run(["docker", "volume", "inspect", REGISTRY_VOLUME], check=False).returncode != 0:
        _run(["docker", "volume", "create", "--label", CACHE_LABEL, REGISTRY_VOLUME])
    _ensure_container(REGISTRY_CONTAINER, ["--ip", REGISTRY_IP, "-p", "127.0.0.1::5000",
                                           "-v", f"{REGISTRY_VOLUME}:/var/lib/registry"], image)
    port = _run(["docker", "port", REGISTRY_CONTAINER, "5000/tcp"]).stdout.split()[0].rsplit(":", 1)[1]
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:  # bounded: the registry answers /v2/ within a second or two
        try:
            with urllib.request.urlopen(f"http://{address}/v2/", timeout=2) as answer:
                if answer.status == 200:
                    return address
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise LabError(f"the lab registry did not answer on {address} within 30 s: "
                           f"docker logs {REGISTRY_CONTAINER}")
        time.sleep(0.5)


def start_hosts(image: str, progress: Callable[[str], None] = print) -> list[str]:
    """Start every lab host container (systemd, sshd; its own /var/lib/docker dir). Returns those created."""
    from keybuzz.lab import images

    pub = paths()["ssh_key"].with_suffix(".pub")
    created = []
    for h in TOPOLOGY:
        docker_dir = paths()["hosts"] / h.name / "docker"
        docker_dir.mkdir(parents=True, exist_ok=True)
        args = [
            *images.HOST_RUN_ARGS,
            "--hostname", h.name,
            "--ip", h.ip,
            # the other lab hosts resolve this name through Docker's DNS, as production resolves it
            # through the /etc/hosts block the base OS layer writes (restarts keep this one)
            "--network-alias", h.name,
            "-v", f"{docker_dir}:/var/lib/docker",
            "-v", f"{pub}:{images.LAB_AUTHORIZED_FILE}:ro",
        ]
        if _ensure_container(h.container, args, image):
            created.append(h.name)
            # the public side: a second interface, as a Hetzner server has (the firewall closes it)
            _run(["docker", "network", "connect", "--ip", h.public_ip, PUBLIC_NETWORK, h.container])
    if created:
        progress(f"started {len(created)} host container(s): {', '.join(created)}")
    return created


def start_lb(image: str) -> None:
    """Run the LB stand-in (HAProxy, TCP) at 172.30.0.10 in front of haproxy-01/02."""
    _ensure_container(LB_CONTAINER, ["--ip", LB_IP, "-v", f"{paths()['lb_cfg']}:/usr/local/etc/haproxy/haproxy.cfg:ro"],
                      image)


def configure_lb(profile: str) -> None:
    """Rewrite the LB stand-in's config for health-check `profile` (lab.yaml health_checks) and restart it."""
    if profile not in LB_CHECKS:
        raise LabError(f"no LB health-check profile {profile!r} in lab/lab.yaml (one of {', '.join(LB_CHECKS)})")
    _write(paths()["lb_cfg"], lb_config(profile))  # same inode: the bind mount sees the new content
    _run(["docker", "restart", "-t", "2", LB_CONTAINER])


def _ssh_ready(h: LabHost) -> bool:
    """sshd is active, the host key exists and port 22 answers with an SSH banner."""
    r = exec(h.name, "systemctl is-active ssh.service >/dev/null && test -s /etc/ssh/ssh_host_ed25519_key.pub")
    if r.returncode != 0:
        return False
    try:
        with socket.create_connection((h.ip, 22), timeout=2) as s:
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def wait_ssh(names: list[str] | None = None, timeout: float = SSH_WAIT_SECONDS,
             progress: Callable[[str], None] = print) -> None:
    """Wait (bounded) until every named host accepts SSH; then (re)write the lab's known_hosts."""
    pending = [host(n) for n in names] if names else list(TOPOLOGY)
    deadline = time.monotonic() + timeout
    while pending:
        pending = [h for h in pending if not _ssh_ready(h)]
        if not pending:
            break
        if time.monotonic() > deadline:
            raise LabError(f"sshd not ready after {timeout:.0f} s on: {', '.join(h.name for h in pending)} "
                           f"(see `docker logs {pending[0].container}`)")
        time.sleep(1)
    write_known_hosts()


def write_known_hosts() -> None:
    """known_hosts from each running host's own public key, read through docker (no trust on first use)."""
    lines = []
    for h in TOPOLOGY:
        if _container_state(h.container) != "running":
            continue
        r = exec(h.name, "cat /etc/ssh/ssh_host_ed25519_key.pub")
        if r.returncode == 0 and r.stdout.strip():
            keytype, key = r.stdout.split()[:2]
            lines.append(f"{h.ip},{h.name} {keytype} {key}")
    _write(paths()["known_hosts"], "\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------------
# deploying layers


def deploy(layer_name: str, progress: Callable[[str], None] | None = None, verbose: int = 0,
           extra: tuple[str, ...] = (), timeout: float = 1200) -> runner.DeployResult:
    """keybuzz.runner.deploy of `layer_name` against the lab (its inventory settings: env()).

    Example::

        deploy("base_os")   # DeployResult(ok=True, changes=0, output='...', seconds=14.2)
    """
    layer = LAYERS.get(layer_name)
    if layer is None or not layer.exists():
        raise LabError(f"layer {layer_name!r} has no deploy file (deploys/{layer_name}.py)")
    environ = env()
    if layer_name in DRY_ONLY:
        if "--dry" not in extra:
            raise LabError(f"{PLAN_FILE}: layer {layer_name} runs in the lab with --dry only "
                           f"({DRY_ONLY[layer_name]['why']})")
        environ |= {k: str(v) for k, v in (DRY_ONLY[layer_name].get("env") or {}).items()}
    return runner.deploy(layer, progress, verbose, extra, environ, timeout)


def run_checks(layer: Layer) -> tuple[bool | None, str]:
    """The layer's diag check against the lab (None when the layer has no checks)."""
    with lab_environ():
        reports = runner.run_checks(layer, ("diag",))
    if not reports:
        return None, "no checks"
    return all(r.ok for r in reports), "\n".join(str(r) for r in reports)


def implemented_layers() -> list[Layer]:
    """Layers with a deploy file that touch at least one lab role, in the design's order (§G)."""
    roles = {h.role for h in TOPOLOGY}
    return [layer for layer in ordered() if layer.exists() and roles & set(layer.roles)]


@dataclass
class LayerRow:
    layer: str
    deploy_ok: bool | None  # None: not run (an earlier layer failed)
    changes: int = 0
    checks_ok: bool | None = None  # None: the layer has no checks
    seconds: float = 0.0
    detail: str = field(default="", repr=False)
    dry: bool = False  # deployed with --dry only (lab.yaml dry_only): nothing changed, nothing to check

    @property
    def green(self) -> bool:
        return bool(self.deploy_ok) and self.checks_ok is not False


def table(rows: list[LayerRow], color: bool | None = None) -> str:
    """The per-layer green/red table `lab up` prints.

    >>> print(table([LayerRow("base_os", True, 42, None, 80.0), LayerRow("minio", True, 9, dry=True)], color=False))
    layer      deploy  changes  checks     seconds
    base_os    ok      42       (none)     80
    minio      dry     9        (none)     0
    """
    color = sys.stdout.isatty() if color is None else color

    def paint(text: str, good: bool | None) -> str:
        if not color or good is None:
            return text
        return f"\x1b[{32 if good else 31}m{text}\x1b[0m"

    out = [f"{'layer':<10} {'deploy':<7} {'changes':<8} {'checks':<10} {'seconds'}"]
    for r in rows:
        dep = "dry" if r.dry and r.deploy_ok else {True: "ok", False: "FAILED", None: "skipped"}[r.deploy_ok]
        chk = {True: "ok", False: "FAILED", None: "(none)"}[r.checks_ok]
        changes = str(r.changes) if r.deploy_ok is not None else "-"
        line = f"{r.layer:<10} {dep:<7} {changes:<8} {chk:<10} {r.seconds:.0f}"
        out.append(paint(line, r.green if r.deploy_ok is not None else False))
    return "\n".join(out)


def _deploy_progress(progress: Callable[[str], None]) -> Callable[[str], None]:
    """Show pyinfra's step lines and errors, not every host's success line."""
    def show(line: str) -> None:
        plain = strip_colors(line)
        if plain.startswith("--> ") or "rror" in plain or "Traceback" in plain:
            progress("   " + plain)
    return show


def deploy_layers(names: list[str] | None = None, progress: Callable[[str], None] = print) -> list[LayerRow]:
    """Deploy the given layers (default: all implemented) in order, then run each deployed layer's checks.

    Deploys stop at the first failed one (later layers build on it). Checks come after all the
    deploys: a layer's check may go through a later layer (Redis is checked through HAProxy and the LB).
    """
    chosen = implemented_layers()
    if names is not None:
        unknown = [n for n in names if n not in {layer.name for layer in chosen}]
        if unknown:
            raise LabError(f"cannot deploy {', '.join(unknown)} in the lab; implemented layers: "
                           f"{', '.join(layer.name for layer in chosen)}")
        chosen = [layer for layer in chosen if layer.name in names]
    rows: list[LayerRow] = []
    failed = False
    for layer in chosen:
        if failed:
            rows.append(LayerRow(layer.name, None))
            continue
        dry = layer.name in DRY_ONLY
        progress(f"deploying layer {layer.name} ({layer.help})"
                 + (f" with --dry only: {DRY_ONLY[layer.name]['why']}" if dry else ""))
        result = deploy(layer.name, _deploy_progress(progress), extra=("--dry",) if dry else ())
        rows.append(LayerRow(layer.name, result.ok, result.changes, None, result.seconds, result.output, dry))
        if not result.ok:
            progress("\n".join(result.output.splitlines()[-30:]))
            failed = True
    for layer, row in zip(chosen, rows, strict=True):
        if not row.deploy_ok or row.dry:
            continue
        start = time.monotonic()
        row.checks_ok, report = run_checks(layer)
        for _ in range(CHECK_RETRIES):  # just-deployed services may still converge (HAProxy picks the master)
            if row.checks_ok is not False:
                break
            progress(f"checks of layer {layer.name} not green yet; again in {CHECK_RETRY_SECONDS} s")
            time.sleep(CHECK_RETRY_SECONDS)
            row.checks_ok, report = run_checks(layer)
        row.seconds += time.monotonic() - start
        if row.checks_ok is not None:
            progress(f"checks of layer {layer.name}:\n{report}")
    return rows


# --------------------------------------------------------------------------------------------------
# commands


def _timed(progress: Callable[[str], None]) -> Callable[[str], None]:
    start = time.monotonic()

    def say(message: str) -> None:
        elapsed = int(time.monotonic() - start)
        progress(f"[lab {elapsed // 60}:{elapsed % 60:02d}] {message}")
    return say


def _check_versions_file() -> None:
    """The lab's versions override must let the hosts' dockerd pull from the lab registry over HTTP."""
    from keybuzz.versions import load_versions

    pins = load_versions(override=VERSIONS_FILE)
    if REGISTRY not in pins["insecure_registries"]:
        raise LabError(f"{VERSIONS_FILE}: insecure_registries must list {REGISTRY} (the lab registry, plain "
                       f"HTTP); add the line: insecure_registries: [\"{REGISTRY}\"]")


def start(progress: Callable[[str], None] = print) -> None:
    """Build what is missing and start the lab's containers (no deploy)."""
    for tool in ("docker", "mmdebstrap", "ssh-keygen"):
        if not shutil.which(tool):
            raise LabError(f"{tool} is not installed: run `bash scripts/bootstrap.sh` (Debian packages)")
    _check_versions_file()
    progress("images (built only when their content changed)")
    refs = _images(progress)
    prepare_state(progress)
    _ensure_network()
    _ensure_network(PUBLIC_NETWORK, PUBLIC_SUBNET)
    progress("lab registry")
    registry = start_registry(refs["registry"], progress)
    from keybuzz.lab import images

    images.push_to_registry(registry, progress=progress)
    progress(f"hosts: {len(TOPOLOGY)} containers on {NETWORK} {SUBNET}")
    start_hosts(refs["host"], progress)
    start_lb(refs["haproxy"])
    progress("waiting for sshd on every host")
    wait_ssh(progress=progress)


def up(layers: list[str] | None = None, progress: Callable[[str], None] = print) -> list[LayerRow]:
    """Build what is missing, start the lab, deploy the implemented layers with their checks.

    Prints (through `progress`) the per-layer table and returns its rows.
    `layers` limits the deploy to those layer names (e.g. ["base_os"]); [] deploys nothing.
    """
    say = _timed(progress)
    start(say)
    rows = deploy_layers(layers, say)
    say("done")
    progress(table(rows))
    return rows


def _labelled(kind: str) -> list[str]:
    """Names/ids of the Docker objects of `kind` (container, network, volume) the lab created."""
    fmt = {"container": "{{.Names}}", "network": "{{.Name}}", "volume": "{{.Name}}"}[kind]
    cmd = ["docker", kind, "ls", "--filter", f"label={LABEL}", "--format", fmt]
    if kind == "container":
        cmd.insert(3, "-a")
    return [n for n in _run(cmd).stdout.split() if n]


def leftovers() -> dict[str, list[str]]:
    """Docker objects carrying the lab's label (empty lists after down()), KEPT_NETWORKS aside."""
    return {kind: [n for n in _labelled(kind) if n not in KEPT_NETWORKS] for kind in ("container", "network", "volume")}


def down(progress: Callable[[str], None] = print) -> None:
    """Remove every container, network and volume the lab created (by label), and .lab/ itself.

    Images and the registry cache volume stay (the build cache), and so do the two lab networks (KEPT_NETWORKS);
    nothing without the lab's label is touched.
    """
    containers = _labelled("container")
    inner = [i for h in TOPOLOGY if _container_state(h.container) == "running" for i in _inner_container_ids(h)]
    if containers:
        progress(f"stopping and removing containers: {', '.join(containers)}")
        # a clean stop lets each host's systemd stop its dockerd and service containers first
        _run(["docker", "stop", "-t", "20", *containers], check=False, timeout=240)
        _run(["docker", "rm", "-f", "-v", *containers], timeout=180)
    _remove_leaked_cgroups(inner)
    for network in _labelled("network"):
        if network not in KEPT_NETWORKS:
            _run(["docker", "network", "rm", network])
    volumes = _labelled("volume")
    if volumes:
        _run(["docker", "volume", "rm", *volumes])
    if LAB_DIR.exists():
        shutil.rmtree(LAB_DIR)
        progress(f"removed {LAB_DIR}")


def _remove_leaked_cgroups(container_ids: list[str]) -> None:
    """rmdir the (empty) cgroups of the hosts' inner containers that a killed host left behind.

    Only these ids, only empty directories (rmdir refuses others): nothing else of the machine is touched.
    """
    for controller in Path("/sys/fs/cgroup").glob("*/docker"):
        for container_id in container_ids:
            path = controller / container_id
            if path.is_dir():
                for sub in sorted(path.rglob("*"), reverse=True):  # deepest first
                    if sub.is_dir():
                        try:
                            sub.rmdir()
                        except OSError:
                            pass
                try:
                    path.rmdir()
                except OSError:
                    pass


def status() -> list[dict[str, str]]:
    """One row per lab container: name, role, address, state (absent when not created).

    Example::

        status()[0]
        # -> {'name': 'registry', 'role': 'registry', 'address': '172.30.0.2:5000', 'state': 'running'}
    """
    rows = [{"name": "registry", "role": "registry", "address": REGISTRY, "container": REGISTRY_CONTAINER},
            {"name": "lb", "role": "lb 10.0.0.10", "address": LB_IP, "container": LB_CONTAINER}]
    rows += [{"name": h.name, "role": h.role, "address": h.ip, "container": h.container} for h in TOPOLOGY]
    for r in rows:
        r["state"] = _container_state(r.pop("container")) or "absent"
    return rows


def exec(host_name: str, cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run shell command `cmd` as root in the lab host container (docker exec; no SSH needed).

    Example::

        exec("redis-01", "systemctl is-active docker").stdout
        # -> 'active\\n'
    """
    return _run(["docker", "exec", host(host_name).container, "sh", "-c", cmd], check=False, timeout=timeout)


def ssh_command(host_name: str, *remote: str, batch: bool = False) -> list[str]:
    """The ssh command line that logs into a lab host with the lab's key and known_hosts (keybuzz.ssh).

    >>> ssh_command("redis-01", "hostname")[-2:]
    ['root@172.30.0.21', 'hostname']
    """
    return ssh_module.command(host(host_name).ip, *remote, batch=batch, environ=env())


def ssh(host_name: str, cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `cmd` on a lab host over SSH (non-interactive), the way the deploy code reaches it."""
    return _run(ssh_command(host_name, cmd, batch=True), check=False, timeout=timeout)


def answering(addresses: list[tuple[str, int]], timeout: float = 1.0) -> list[tuple[str, int]]:
    """The (address, port) pairs that accept a TCP connection from this machine (checked in parallel, bounded:
    one attempt each, `timeout` seconds)."""
    from concurrent.futures import ThreadPoolExecutor

    def opens(target: tuple[str, int]) -> bool:
        try:
            with socket.create_connection(target, timeout=timeout):
                return True
        except OSError:
            return False

    with ThreadPoolExecutor(max_workers=32) as pool:
        return [t for t, ok in zip(addresses, pool.map(opens, addresses), strict=True) if ok]


def exposure(ports: dict[str, list[int]] | None = None) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(private, public): what answers on each lab host's private and public addresses, for SSH and the
    ports its role opens (or `ports`: role -> ports). The public list must stay empty.

    Example::

        private, public = exposure()   # private: [('172.30.0.11', 22), ...]; public: []
    """
    from keybuzz.base_os.settings import SSH_PORT, open_ports

    def role_ports(role: str) -> list[int]:
        if ports is not None:
            return [SSH_PORT, *ports.get(role, [])]
        tcp = [p for spec in open_ports(role)[0] for p in _port_range(spec)]
        return [SSH_PORT, *tcp]

    private = answering([(h.ip, p) for h in TOPOLOGY for p in role_ports(h.role)])
    public = answering([(h.public_ip, p) for h in TOPOLOGY for p in role_ports(h.role)])
    return private, public


def _port_range(spec: str) -> list[int]:
    """'6379' -> [6379]; '35672-35682' -> its first and last port (enough to see a range open or closed)."""
    first, _, last = spec.partition("-")
    return [int(first), int(last)] if last else [int(first)]


def stop_host(host_name: str, timeout: int = 30) -> None:
    """Stop a lab host container (systemd shuts down as on a power-off request); its state is kept."""
    _run(["docker", "stop", "-t", str(timeout), host(host_name).container], timeout=timeout + 60)


def kill_host(host_name: str) -> None:
    """SIGKILL a lab host container: the whole server dies at once (power cut); its state is kept."""
    _run(["docker", "kill", host(host_name).container], timeout=60)


def start_host(host_name: str, wait: bool = True) -> None:
    """Start a stopped lab host and, by default, wait until it accepts SSH again."""
    _run(["docker", "start", host(host_name).container])
    if wait:
        wait_ssh([host_name])


def kill_dockerd(host_name: str) -> int:
    """SIGKILL the Docker daemon of a lab host (a crash: systemd restarts it). Returns the killed pid.

    Debian's docker.service restarts at most 3 times in 60 s (StartLimitBurst): space repeated kills.
    """
    r = exec(host_name, "pid=$(systemctl show -p MainPID --value docker.service); "
                        "[ \"$pid\" -gt 0 ] && kill -KILL \"$pid\" && echo \"$pid\"")
    if r.returncode != 0:
        raise LabError(f"no running dockerd on {host_name}: {r.stderr.strip() or r.stdout.strip()}")
    return int(r.stdout.strip())


def _inner_container_ids(h: LabHost) -> list[str]:
    """Full ids of the containers the lab host's own dockerd runs (empty if it has none or no docker)."""
    r = exec(h.name, "command -v docker >/dev/null && docker ps -aq --no-trunc", timeout=30)
    return r.stdout.split() if r.returncode == 0 else []


def _cgroup_v1_memory(container_id: str) -> int:
    """Memory of one container from cgroup v1, as `docker stats` counts it (usage - inactive file cache)."""
    base = Path("/sys/fs/cgroup/memory/docker") / container_id
    try:
        usage = int((base / "memory.usage_in_bytes").read_text())
        stat = dict(line.split() for line in (base / "memory.stat").read_text().splitlines())
    except OSError:
        return 0
    return max(usage - int(stat.get("total_inactive_file", 0)), 0)


def memory_bytes() -> int:
    """Memory used by the lab right now: its containers plus the service containers inside the hosts.

    The hosts' own dockerd puts its containers in cgroups beside (not below) the host container's
    (--cgroupns=host), and `docker stats` shows 0 for a container whose systemd moved its processes
    to sub-cgroups: so this reads cgroup v1 directly (the machines this lab runs on; 0 elsewhere).
    """
    ids = []
    for name in _labelled("container"):
        if _container_state(name) != "running":
            continue
        ids.append(_run(["docker", "inspect", "-f", "{{.Id}}", name]).stdout.strip())
    for h in TOPOLOGY:
        if _container_state(h.container) == "running":
            ids += _inner_container_ids(h)
    return sum(_cgroup_v1_memory(i) for i in ids)
