"""Settings of the K3s layer (design §E, §H): paths, ports, the air-gap artifacts, pure render functions.

K3s is installed the way an air-gapped site can reproduce it: no `curl | sh` at deploy time. The operator puts
the release assets of the pinned `k3s_version` in one directory on the install host (install-01),
$KEYBUZZ_K3S_ARTIFACTS/<k3s_version>/ (default /opt/keybuzz-installer/artifacts/k3s/<k3s_version>/), exactly
as the K3s release page names them:

    k3s                                 the binary (amd64)
    sha256sum-amd64.txt                 the release's checksum list
    k3s-airgap-images-amd64.tar.zst     K3s' own images (optional when `registry_mirror` serves them)

`preflight` checks, before any host is contacted, that they are there and that the binary and the images
match the checksum list; the deploy uploads them (pyinfra compares checksums: a second run uploads nothing).

    >>> "cluster-init: true" in render_config(master_config("k3s-master-01", "10.0.0.41", "ens10", True, None))
    True
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from keybuzz.errors import PinRefused
from keybuzz.render import render

# --- where things live on the nodes ----------------------------------------------------------------------
CONFIG_DIR = "/etc/rancher/k3s"
CONFIG_FILE = f"{CONFIG_DIR}/config.yaml"  # root 0600 (it names the token file; no secret inside)
TOKEN_FILE = f"{CONFIG_DIR}/token"  # root 0600: K3S_TOKEN, nothing else (config `token-file`)
REGISTRIES_FILE = f"{CONFIG_DIR}/registries.yaml"
BINARY = "/usr/local/bin/k3s"
DATA_DIR = "/var/lib/rancher/k3s"
IMAGES_DIR = f"{DATA_DIR}/agent/images"
MANIFESTS_DIR = f"{DATA_DIR}/server/manifests"  # K3s applies every file here (its deploy controller)
INGRESS_MANIFEST = f"{MANIFESTS_DIR}/keybuzz-ingress.yaml"
SERVER_TOKEN = f"{DATA_DIR}/server/token"  # written by K3s: K10<ca hash>::server:<token>
SERVER_UNIT, AGENT_UNIT = "k3s", "k3s-agent"

# --- the cluster ---------------------------------------------------------------------------------------------
API_PORT = 6443
# The Hetzner load balancers in front of the API (6443, the masters) and the ingress (80/443, every node): §E.
API_LOAD_BALANCERS = ("10.0.0.5", "10.0.0.6")
CLUSTER_CIDR = "10.42.0.0/16"  # pods (K3s default, written out so that the firewall and the docs agree)
SERVICE_CIDR = "10.43.0.0/16"
DISABLED = ("traefik", "servicelb")  # they would take 80/443 from the NGINX ingress DaemonSet
READY_WAIT_SECONDS = 300  # bound of every wait for a node to be Ready

# Opened by the base OS firewall from the private network only (keybuzz.base_os.settings.open_ports):
# API, kubelet, etcd client/peer (masters only, but one list per layer: the workers' firewall opens them too and
# nothing listens there), flannel VXLAN, the ingress' 80/443 (the Hetzner LBs reach the nodes over the private
# network).
OPEN_PORTS = ("tcp/6443", "tcp/10250", "tcp/2379-2380", "udp/8472", "tcp/80", "tcp/443")
# Pods and services reach their own node (kubelet, the API through the kubernetes service, DNS): their
# addresses are not in the private network, so the firewall accepts them as a whole (keybuzz.base_os).
TRUSTED_NETWORKS = (CLUSTER_CIDR, SERVICE_CIDR)

# --- the air-gap artifacts ------------------------------------------------------------------------------------
ARTIFACTS_ENV = "KEYBUZZ_K3S_ARTIFACTS"
DEFAULT_ARTIFACTS = "/opt/keybuzz-installer/artifacts/k3s"
ARCH = "amd64"
BINARY_ASSET = "k3s"
IMAGES_ASSET = f"k3s-airgap-images-{ARCH}.tar.zst"
SUMS_ASSET = f"sha256sum-{ARCH}.txt"
# A clearly labelled mode for `pyinfra --dry` only (the lab's dry run: no registry this project reaches ships
# K3s): the deploy is evaluated without the artifacts, their uploads are reported as skipped. Refused on a real
# run, so it can never install a node without its binary.
DRY_WITHOUT_ARTIFACTS_ENV = "KEYBUZZ_K3S_DRY_WITHOUT_ARTIFACTS"


@dataclass(frozen=True)
class Artifacts:
    directory: Path
    binary: Path | None  # None only in the dry run without artifacts
    images: Path | None  # None when the registry mirror serves K3s' images (or dry run without artifacts)
    dry_without_artifacts: bool = False


def artifacts_dir(version: str, environ=None) -> Path:
    """Where the release assets of `version` are expected on the install host.

    >>> str(artifacts_dir("v1.30.4+k3s1", {}))
    '/opt/keybuzz-installer/artifacts/k3s/v1.30.4+k3s1'
    """
    environ = os.environ if environ is None else environ
    return Path(environ.get(ARTIFACTS_ENV) or DEFAULT_ARTIFACTS) / version


def parse_sums(text: str) -> dict[str, str]:
    """{file name: sha256} of a `sha256sum` list (`<64 hex>  <name>`, `*` binary marker allowed).

    >>> parse_sums("0" * 64 + "  k3s\\n" + "1" * 64 + " *k3s-airgap-images-amd64.tar.zst\\n")["k3s"][:4]
    '0000'
    """
    sums = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and len(parts[0]) == 64 and all(c in "0123456789abcdef" for c in parts[0].lower()):
            sums[parts[1].lstrip("*").strip()] = parts[0].lower()
    return sums


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_fix(version: str, directory: Path, asset: str) -> str:
    return (f"download {asset} of K3s {version} from https://github.com/k3s-io/k3s/releases/tag/"
            f"{version.replace('+', '%2B')} (or your mirror of it) into {directory}/")


def verify_artifacts(version: str, need_images: bool, environ=None) -> Artifacts:
    """The release assets of `version`, checked against the release's checksum list; PinRefused (one line: file,
    reason, fix) when one is missing or does not match. `need_images`: False when the registry mirror serves
    K3s' images."""
    directory = artifacts_dir(version, environ)
    sums_path = directory / SUMS_ASSET
    if not sums_path.is_file():
        raise PinRefused("k3s_version", f"{sums_path} is missing; {_download_fix(version, directory, SUMS_ASSET)} "
                         f"(or set {ARTIFACTS_ENV} to the directory holding {version}/)")
    sums = parse_sums(sums_path.read_text(encoding="utf-8", errors="replace"))
    wanted = [BINARY_ASSET] + ([IMAGES_ASSET] if need_images else [])
    found: dict[str, Path] = {}
    for asset in wanted:
        path = directory / asset
        if not path.is_file():
            raise PinRefused("k3s_version", f"{path} is missing; {_download_fix(version, directory, asset)}")
        if asset not in sums:
            raise PinRefused("k3s_version", f"{sums_path} lists no checksum for {asset}: it is not the checksum "
                             f"list of K3s {version}; {_download_fix(version, directory, SUMS_ASSET)}")
        actual = sha256_of(path)
        if actual != sums[asset]:
            raise PinRefused("k3s_version", f"{path}: sha256 {actual} does not match {sums_path} "
                             f"({sums[asset]}): a corrupt or different file; "
                             f"{_download_fix(version, directory, asset)} again")
        found[asset] = path
    return Artifacts(directory, found[BINARY_ASSET], found.get(IMAGES_ASSET))


def dry_without_artifacts(argv=None, environ=None) -> bool:
    """True when $KEYBUZZ_K3S_DRY_WITHOUT_ARTIFACTS=1 and this is a `pyinfra --dry` run; set without --dry,
    PinRefused (it would install nodes without K3s).

    >>> dry_without_artifacts(["pyinfra", "--dry", "inventory.py"], {DRY_WITHOUT_ARTIFACTS_ENV: "1"})
    True
    >>> dry_without_artifacts(["pyinfra", "inventory.py"], {})
    False
    """
    argv = sys.argv if argv is None else argv
    environ = os.environ if environ is None else environ
    if environ.get(DRY_WITHOUT_ARTIFACTS_ENV) != "1":
        return False
    if "--dry" not in argv:
        raise PinRefused("k3s_version", f"{DRY_WITHOUT_ARTIFACTS_ENV}=1 is for `pyinfra --dry` only (the lab's dry "
                         "run); a real run needs the release assets: unset it and provide them")
    return True


def artifacts(versions: dict, argv=None, environ=None) -> Artifacts:
    """What the deploy uploads: the verified assets, or the labelled dry run without them."""
    version = versions["k3s_version"]
    if dry_without_artifacts(argv, environ):
        return Artifacts(artifacts_dir(version, environ), None, None, dry_without_artifacts=True)
    return verify_artifacts(version, need_images=not versions.get("registry_mirror"), environ=environ)


def preflight(versions: dict) -> None:
    """Refuse (PinRefused at the k3s_version line) missing or corrupt air-gap artifacts, before any connection."""
    artifacts(versions)


# --- rendered files -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeConfig:
    """What /etc/rancher/k3s/config.yaml of one node says (no secret: the token is in TOKEN_FILE)."""

    name: str
    ip: str
    iface: str
    server: bool
    cluster_init: bool = False
    join_url: str | None = None  # None only for the first master
    tls_san: tuple[str, ...] = API_LOAD_BALANCERS
    disable: tuple[str, ...] = DISABLED
    mirror_only: bool = False  # a registry mirror is set: never fall back to the images' own registries


def master_config(name: str, ip: str, iface: str, first: bool, join_ip: str | None,
                  mirror_only: bool = False) -> NodeConfig:
    """The first master starts the embedded etcd (cluster-init); the others join it on its private address."""
    if first:
        return NodeConfig(name, ip, iface, server=True, cluster_init=True, mirror_only=mirror_only)
    return NodeConfig(name, ip, iface, server=True, join_url=f"https://{join_ip}:{API_PORT}", mirror_only=mirror_only)


def worker_config(name: str, ip: str, iface: str, api: str = API_LOAD_BALANCERS[0],
                  mirror_only: bool = False) -> NodeConfig:
    """Workers join through the API load balancer (10.0.0.5)."""
    return NodeConfig(name, ip, iface, server=False, join_url=f"https://{api}:{API_PORT}", mirror_only=mirror_only)


def render_config(node: NodeConfig) -> str:
    return render("k3s/config.yaml.j2", node=node, token_file=TOKEN_FILE, cluster_cidr=CLUSTER_CIDR,
                  service_cidr=SERVICE_CIDR)


def render_unit(server: bool) -> str:
    return render("k3s/k3s.service.j2", server=server, binary=BINARY)


def render_registries(mirror: str, insecure: list[str]) -> str:
    """/etc/rancher/k3s/registries.yaml: every registry through the mirror (plain HTTP when it is listed in
    insecure_registries), so that an air-gapped cluster pulls the ingress and the apps from it.

    >>> print(render_registries("172.30.0.2:5000", ["172.30.0.2:5000"]).split("mirrors:")[1].strip().splitlines()[0])
    "*":
    """
    scheme = "http" if mirror in insecure else "https"
    return render("k3s/registries.yaml.j2", endpoint=f"{scheme}://{mirror}")


def render_ingress(image: str) -> str:
    """The NGINX Ingress Controller (F5 NGINX, nginx/kubernetes-ingress) as a DaemonSet on hostNetwork (§E)."""
    return render("k3s/ingress.yaml.j2", image=image, namespace=INGRESS_NAMESPACE, ingress_class=INGRESS_CLASS)


INGRESS_NAMESPACE = "nginx-ingress"
INGRESS_CLASS = "nginx"


def token_digest(token: str) -> str:
    """sha256 of the token: what the deploy compares with the node's (the token itself is never printed).

    >>> token_digest("abc")[:8]
    'ba7816bf'
    """
    return hashlib.sha256(token.encode()).hexdigest()
