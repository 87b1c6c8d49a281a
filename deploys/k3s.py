"""K3s layer (design §E, §H): 3 HA masters with embedded etcd + 5 workers, the NGINX ingress DaemonSet.

    pyinfra -y inventory.py deploys/k3s.py            # or: invoke layer --name k3s [--lab]

Air-gapped: the pinned `k3s_version` release assets come from the install host (keybuzz/k3s/settings.py:
$KEYBUZZ_K3S_ARTIFACTS/<k3s_version>/, checked against the release's sha256 list before any host is contacted),
K3s' images from that tarball or through `registry_mirror` (registries.yaml). No install script, no download.

On every K3s node:
  * /usr/local/bin/k3s, the images tarball in /var/lib/rancher/k3s/agent/images/
  * /etc/rancher/k3s/config.yaml (root 0600, no secret): node-ip and flannel-iface on the private network,
    token-file; masters: tls-san 10.0.0.5/10.0.0.6 from the first start, traefik and servicelb disabled,
    secrets encryption; master-01 `cluster-init`, the others `server: https://<master-01>:6443`; workers
    `server: https://10.0.0.5:6443`
  * /etc/rancher/k3s/token (root 0600): K3S_TOKEN, the only place it is written; units k3s / k3s-agent
  * masters: the ingress manifest in K3s' manifests directory (K3s applies it): F5 NGINX's NGINX Ingress
    Controller, a DaemonSet on hostNetwork (80/443 on every node), dnsPolicy ClusterFirstWithHostNet
No Docker on K3s nodes (the base OS layer leaves it out: K3s brings containerd; Docker's iptables FORWARD DROP
policy breaks pod traffic between nodes); a node that has it running is refused with the fix.

Order: master-01 first (Ready), then master-02 and -03 one at a time (each Ready before the next), then the
workers once the three masters are Ready; master-01 waits for all nodes. A node already in a cluster is never
registered again; one registered with another token is refused (restore the token, or wipe the node). A changed
file restarts its node, one node at a time, masters first, each Ready before the next. A second run changes
nothing.
"""

from io import StringIO

from pyinfra import host, logger
from pyinfra.api import HiddenValue, operation
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import Sha256File
from pyinfra.facts.server import Command
from pyinfra.operations import files, server, systemd
from pyinfra.operations.util import any_changed

from keybuzz.context import layer_context
from keybuzz.facts import ServiceActive
from keybuzz.k3s import settings as K
from keybuzz.ops import apt_packages, secret_file, template

NODE_SCRIPT = "/usr/local/sbin/keybuzz-k3s"
WAIT = K.READY_WAIT_SECONDS

ctx = layer_context("k3s")
TOKEN = ctx.secrets("k3s")["K3S_TOKEN"]
MASTERS = ctx.addresses("k3s_masters")
WORKERS = ctx.addresses("k3s_workers")
NAME, ME = host.name, host.data.private_ip
IS_MASTER = host.data.role == "k3s_masters"
FIRST, FIRST_IP = MASTERS[0]
UNIT = K.SERVER_UNIT if IS_MASTER else K.AGENT_UNIT
API_URL = f"https://{K.API_LOAD_BALANCERS[0]}:{K.API_PORT}"
ARTIFACTS = ctx.ask_once("the K3s release assets (sha256 checked)", lambda: K.artifacts(ctx.versions))
STARTING: set = ctx.ask_once("which nodes this run starts", set)  # one set shared by every host of the run


@operation()
def artifact_missing(asset: str):
    """Stands for an upload in the labelled dry run without artifacts: nothing is uploaded, nothing changes."""
    host.noop(f"DRY RUN WITHOUT ARTIFACTS: {asset} not uploaded ({K.DRY_WITHOUT_ARTIFACTS_ENV}=1)")
    yield from ()  # an operation is a generator of commands: here, none


# --- refuse what would break the node or the cluster, before anything changes --------------------------------

if host.get_fact(ServiceActive, service="docker"):
    raise DeployError(f"{NAME}: Docker runs on this K3s node: its iptables FORWARD DROP policy breaks pod traffic "
                      "and K3s brings its own containerd; remove it (apt-get purge docker.io && reboot) and re-run")
IFACE = host.get_fact(Command, command="ip -o -4 addr show | awk '{split($4, a, \"/\"); "
                                       f"if (a[1] == \"{ME}\") print $2}}'")
if not IFACE:
    raise DeployError(f"{NAME}: no network interface carries its private address {ME} (servers.tsv): fix the "
                      "address or the host's network")
REGISTERED = host.get_fact(Command, command=f"if [ -e {K.DATA_DIR}/server/db ]; then echo server; "
                                            f"elif [ -e {K.DATA_DIR}/agent/client-kubelet.crt ]; then echo agent; "
                                            "else echo none; fi")
if REGISTERED != "none":
    # K3s keeps the token it was registered with; a different one makes it crash-loop ("bootstrap data already
    # found and encrypted with different token"). Only digests are compared, the token is never printed.
    stored = host.get_fact(Command, command=f"[ -s {K.SERVER_TOKEN} ] && sed -n 's/^K10[0-9a-f]*::server://p' "
                                            f"{K.SERVER_TOKEN} | tr -d '\\n' | sha256sum | cut -d' ' -f1 || true")
    stored = stored or host.get_fact(Sha256File, path=K.TOKEN_FILE)
    if not stored:
        raise DeployError(f"{NAME}: already a K3s {REGISTERED} but {K.TOKEN_FILE} is missing: it was not "
                          "installed by this code; put the cluster's token there (root 0600) or wipe the node "
                          f"(k3s-killall.sh; rm -rf {K.DATA_DIR} {K.CONFIG_DIR}) to register it anew")
    if stored != K.token_digest(TOKEN.unmask()):
        raise DeployError(f"{NAME}: already registered in a K3s cluster with another token than K3S_TOKEN of "
                          "credentials/k3s.env: restore the cluster's token there, or wipe this node "
                          f"(k3s-killall.sh; rm -rf {K.DATA_DIR} {K.CONFIG_DIR}) to register it anew")

# --- files ------------------------------------------------------------------------------------------------------

apt_packages(["curl"], "curl (the deploy's waits ask the API and the kubelet)", no_recommends=True)
template("k3s/keybuzz-k3s", NODE_SCRIPT, mode="755")
files.directory(name=f"Create {K.CONFIG_DIR} (root 0700)", path=K.CONFIG_DIR, user="root", group="root", mode="700")
files.directory(name=f"Create {K.IMAGES_DIR}", path=K.IMAGES_DIR, user="root", group="root", mode="755")

if ARTIFACTS.dry_without_artifacts:
    logger.warning(f"[{NAME}] DRY RUN WITHOUT ARTIFACTS ({K.DRY_WITHOUT_ARTIFACTS_ENV}=1): the K3s binary and "
                   "images are not uploaded; only a --dry run accepts this")
    binary = artifact_missing(name=f"Install {K.BINARY} (K3s {ctx.versions['k3s_version']})", asset=K.BINARY_ASSET)
    images = artifact_missing(name=f"Install {K.IMAGES_ASSET}", asset=K.IMAGES_ASSET)
else:
    binary = files.put(name=f"Install {K.BINARY} (K3s {ctx.versions['k3s_version']}, sha256 checked)",
                       src=str(ARTIFACTS.binary), dest=K.BINARY, user="root", group="root", mode="755")
    images = (files.put(name=f"Install {K.IMAGES_DIR}/{K.IMAGES_ASSET}", src=str(ARTIFACTS.images),
                        dest=f"{K.IMAGES_DIR}/{K.IMAGES_ASSET}", user="root", group="root", mode="644")
              if ARTIFACTS.images else None)

mirror = ctx.versions.get("registry_mirror") or ""
registries = (files.put(name=f"Install {K.REGISTRIES_FILE} (every image through {mirror})",
                        src=StringIO(K.render_registries(mirror, ctx.versions.get("insecure_registries") or [])),
                        dest=K.REGISTRIES_FILE, user="root", group="root", mode="600")
              if mirror else files.file(name=f"No {K.REGISTRIES_FILE} (no registry mirror)", path=K.REGISTRIES_FILE,
                                        present=False))
token = secret_file(name=f"Install {K.TOKEN_FILE} (K3S_TOKEN; root 0600)", dest=K.TOKEN_FILE,
                    content=HiddenValue(TOKEN.unmask()))
node = (K.master_config(NAME, ME, IFACE, first=NAME == FIRST, join_ip=FIRST_IP, mirror_only=bool(mirror))
        if IS_MASTER else K.worker_config(NAME, ME, IFACE, mirror_only=bool(mirror)))
config = files.put(name=f"Install {K.CONFIG_FILE} (root 0600, no secret)", src=StringIO(K.render_config(node)),
                   dest=K.CONFIG_FILE, user="root", group="root", mode="600")
unit = files.put(name=f"Install {UNIT}.service (no secret)", src=StringIO(K.render_unit(IS_MASTER)),
                 dest=f"/etc/systemd/system/{UNIT}.service", user="root", group="root", mode="644")
if IS_MASTER:
    files.directory(name=f"Create {K.MANIFESTS_DIR}", path=K.MANIFESTS_DIR, user="root", group="root", mode="700")
    files.put(name=f"Install {K.INGRESS_MANIFEST} (NGINX Ingress Controller DaemonSet; K3s applies it)",
              src=StringIO(K.render_ingress(ctx.image("nginx_ingress_image"))), dest=K.INGRESS_MANIFEST,
              user="root", group="root", mode="600")
restart_needed = any_changed(*(op for op in (binary, images, registries, token, config, unit) if op is not None))
systemd.daemon_reload(name="systemd daemon-reload (K3s unit)", _if=any_changed(unit))

# --- start, in the order the cluster needs ---------------------------------------------------------------------
# pyinfra orders operations by each host's own sequence (a topological sort), so every phase is an operation of
# EVERY host, run where `_if` says: a phase only some hosts had would not wait for the phases before it.

was_active = host.get_fact(ServiceActive, service=UNIT)
starts_now = not was_active
if starts_now:
    STARTING.add(NAME)
is_first = NAME == FIRST
# `systemctl start` returns when K3s reports ready (Type=notify); bounded, as every wait here
start = [f"systemctl enable {UNIT}", f"timeout {WAIT} systemctl start {UNIT}"]
server.shell(name=f"K3s phase 1: start {FIRST} (cluster-init: the first etcd member), wait until Ready",
             commands=[*start, f"{NODE_SCRIPT} wait-ready {NAME} {WAIT}"],
             _if=lambda: is_first and starts_now)
server.shell(name=f"K3s phase 2: start the other masters (they join {FIRST}), one at a time, each Ready before "
                  "the next",
             commands=[f"{NODE_SCRIPT} wait-api https://{FIRST_IP}:{K.API_PORT} {WAIT}", *start,
                       f"{NODE_SCRIPT} wait-ready {NAME} {WAIT}"],
             _if=lambda: IS_MASTER and not is_first and starts_now, _serial=True)
server.shell(name=f"K3s phase 3: wait until the {len(MASTERS)} masters are Ready (before any worker joins)",
             commands=[f"{NODE_SCRIPT} wait-nodes node-role.kubernetes.io/control-plane=true {len(MASTERS)} "
                       f"{WAIT}"],
             _if=lambda: is_first and bool(STARTING & {name for name, _ in WORKERS}))
server.shell(name=f"K3s phase 4: start the workers' agents (they join through {API_URL}), wait for their kubelets",
             commands=[f"{NODE_SCRIPT} wait-api {API_URL} {WAIT}", *start, f"{NODE_SCRIPT} wait-kubelet {WAIT}"],
             _if=lambda: not IS_MASTER and starts_now)
server.shell(name=f"K3s phase 5: wait until all {len(MASTERS) + len(WORKERS)} nodes are Ready",
             commands=[f"{NODE_SCRIPT} wait-nodes - {len(MASTERS) + len(WORKERS)} {WAIT}"],
             _if=lambda: is_first and bool(STARTING))

# --- a changed file: restart, one node at a time (masters come first in the inventory), each healthy again -----

healthy = [f"{NODE_SCRIPT} wait-kubelet {WAIT}", *([f"{NODE_SCRIPT} wait-ready {NAME} {WAIT}"] if IS_MASTER else [])]
server.shell(name=f"Restart {UNIT} (its files changed), one node at a time, then wait until healthy",
             commands=[f"timeout {WAIT} systemctl restart {UNIT}", *healthy],
             _if=lambda: was_active and restart_needed(), _serial=True)
