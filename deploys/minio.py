"""MinIO layer (design §B, §F, §G): distributed MinIO on minio-01..03, one drive each, s3.keybuzz.io:9000.

    pyinfra -y inventory.py deploys/minio.py          # or: invoke layer --name minio [--lab]

On each minio node, as a systemd unit wrapping `docker run --network host` (keybuzz/ops.py):
  * minio.service     the pinned `minio_image`, `server --address :9000 --console-address :9001`;
                      /opt/keybuzz/minio/data -> /data (root 0700); restart always (systemd Restart=always)
  * minio.env         --env-file, root 0600, identical on the three nodes, no secret: the design's MINIO_VOLUMES
                      byte for byte, and MINIO_ROOT_USER_FILE / MINIO_ROOT_PASSWORD_FILE (file names)
  * secrets/          root 0700, mounted read-only on /run/secrets: minio_root_user, minio_root_password
                      (0600, from minio.env on install-01): never on a command line, in a unit or `docker inspect`
  * --add-host for minio-0N.keybuzz.io and s3.keybuzz.io: the container resolves the names itself
  * /usr/local/sbin/keybuzz-minio: status / state / wait-healthy (MinIO's health endpoints; no secret)
Before anything changes, each node must resolve the design's names to servers.tsv's addresses (base OS layer's
/etc/hosts block, or a DNS zone), else the run stops on that host with the fix.

Activation: a first install starts the three nodes together (a lone node waits for its peers) and waits until
the cluster has its write quorum. A changed definition (image, arguments, env file) restarts one node at a time,
minio-01 (s3.keybuzz.io) last, each only after the cluster was healthy and until it is healthy again. Root
credentials that differ from the node's are refused: a rotation is a manual procedure (the three nodes
authenticate each other with them). A service that was not running is started, never restarted. Then, from
install-01 through MinIO's admin API, the apps' buckets, policies and users (templates/minio/buckets.yaml, keys
from minio.env) are created where missing. A second run changes nothing.
"""

import hashlib
from collections import Counter
from io import StringIO

from pyinfra import host
from pyinfra.api import FactBase, HiddenValue
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import Sha256File
from pyinfra.operations import files, python, server, systemd
from pyinfra.operations.util import any_changed

from keybuzz.context import layer_context
from keybuzz.facts import ServiceActive
from keybuzz.minio.client import apply_bootstrap, bootstrap_needed
from keybuzz.minio.settings import (
    BASE_DIR,
    DATA_DIR,
    ENV_FILE,
    NODE_SCRIPT,
    ROOT_FILES,
    S3_PORT,
    SECRETS_DIR,
    SERVICE,
    WAIT_SECONDS,
    dns_names,
    load_apps,
    render_env_file,
    run_args,
    server_command,
)
from keybuzz.ops import container_unit, secret_file, template


class NamesResolved(FactBase):
    """{name: IPv4 address or None} as this host resolves `names` (space-separated) through getent (/etc/hosts,
    then DNS): the same resolver MinIO's container starts from.

    Example: output ["s3.keybuzz.io=10.0.0.134", "minio-02.keybuzz.io="]
    -> {"s3.keybuzz.io": "10.0.0.134", "minio-02.keybuzz.io": None}
    """

    def command(self, names):
        return "; ".join(f"echo {n}=$(getent ahostsv4 {n} | awk 'NR==1 {{print $1}}')" for n in names.split())

    def process(self, output):
        pairs = (line.strip().partition("=") for line in output if "=" in line)
        return {name: (ip or None) for name, _, ip in pairs}


ctx = layer_context("minio")
creds = ctx.secrets("minio")
NODES = ctx.addresses("minio")  # exactly minio-01..03 at the design's addresses (settings.preflight_servers)
HOSTS = [name for name, _ in NODES]
ME = host.data.private_ip
NAMES = dns_names(NODES)

# --- refuse what MinIO cannot run with, before anything changes ------------------------------------------------

resolved = host.get_fact(NamesResolved, names=" ".join(NAMES))
wrong = [f"{name} -> {resolved.get(name) or 'nothing'} (servers.tsv: {ip})" for name, ip in NAMES.items()
         if resolved.get(name) != ip]
if wrong:
    raise DeployError(f"{host.name} resolves {'; '.join(wrong)}: run the base_os layer (its /etc/hosts block names "
                      "them) or fix the DNS zone (README, MinIO) before deploying")

# Root credentials differing from those on the node: a rotation, which the three nodes must make together (they
# authenticate each other with them) and which MinIO's release notes may constrain: a manual procedure, never a
# side effect of a deploy. (The fact prints a sha256, as secret_file's does, never the value.)
rotated = [var for var, name in ROOT_FILES.items()
           if host.get_fact(Sha256File, path=f"{SECRETS_DIR}/{name}")
           not in (None, hashlib.sha256(creds[var].unmask().encode()).hexdigest())]
if rotated:
    raise DeployError(f"{host.name}: {', '.join(rotated)} in minio.env differ from the node's: rotating MinIO's root "
                      "credentials is a manual procedure (README, MinIO); put the old values back to deploy")

# --- directories and files -------------------------------------------------------------------------------------

files.directory(name=f"Create {BASE_DIR}", path=BASE_DIR, user="root", group="root", mode="755")
files.directory(name=f"Create {DATA_DIR} (the node's drive, root 0700)", path=DATA_DIR, user="root", group="root",
                mode="700")
files.directory(name=f"Create {SECRETS_DIR} (root 0700, mounted read-only on /run/secrets)", path=SECRETS_DIR,
                user="root", group="root", mode="700")
for var, name in ROOT_FILES.items():  # new files only (a differing one is refused above): no restart needed
    secret_file(name=f"Install {SECRETS_DIR}/{name} ({var}, root 0600)", dest=f"{SECRETS_DIR}/{name}",
                content=HiddenValue(creds[var].unmask()))
env_file = files.put(name=f"Install {ENV_FILE} (MINIO_VOLUMES and the secret files' names; no secret, root 0600)",
                     src=StringIO(render_env_file(HOSTS)), dest=ENV_FILE, user="root", group="root", mode="600")
template("minio/keybuzz-minio", NODE_SCRIPT, mode="755")

# --- the unit and its activation --------------------------------------------------------------------------------

unit = container_unit(SERVICE, ctx.image("minio_image"), command=server_command(), run_args=run_args(NODES),
                      description="KeyBuzz MinIO (distributed, minio-01..03)")
was_running = host.get_fact(ServiceActive, service=SERVICE)
definition_changed = any_changed(env_file, *unit)
WAIT_HEALTHY = f"{NODE_SCRIPT} wait-healthy {ME} {WAIT_SECONDS}"

systemd.daemon_reload(name="systemd daemon-reload (minio)", _if=definition_changed)
# pyinfra runs one operation on every host before the next: the three nodes start together
systemd.service(name="Enable and start minio (a first install starts the three nodes together)", service=SERVICE,
                running=True, enabled=True)
# minio-01 last: s3.keybuzz.io names it, so the apps' entry point goes down once, after the others are back
for entry_turn in (False, True):
    if (host.name == HOSTS[0]) == entry_turn:
        server.shell(
            name=f"Restart minio, one node at a time{' (minio-01, s3.keybuzz.io, last)' if entry_turn else ''}: "
                 "its definition changed; only once the cluster is healthy, then wait until it is healthy again",
            commands=[f"{NODE_SCRIPT} wait-healthy {ME} 60", "systemctl restart minio", WAIT_HEALTHY],
            _if=lambda: was_running and definition_changed(), _serial=True,
        )
if not was_running:
    server.shell(name="Wait until this node is live and the cluster has its write quorum", commands=[WAIT_HEALTHY])

# --- the apps' buckets, policies and users (once, from install-01, MinIO's admin API) ----------------------------

if host.name == HOSTS[0]:
    APPS = load_apps()
    ENDPOINT = f"{ME}:{S3_PORT}"
    ROOT_LOGIN = (creds["MINIO_ROOT_USER"].unmask(), creds["MINIO_ROOT_PASSWORD"].unmask())
    KEYS = {var: creds[var].unmask() for user in APPS.users for var in (user.access_key_var, user.secret_key_var)}
    todo = ctx.ask_once("MinIO which of the apps' buckets, policies and users are missing",
                        lambda: bootstrap_needed(ENDPOINT, ROOT_LOGIN, APPS, KEYS))
    if todo:
        counts = Counter(action[0] for action in todo)

        def bootstrap():  # no argument: nothing secret in what pyinfra prints about the operation
            return apply_bootstrap(ENDPOINT, ROOT_LOGIN, APPS, KEYS, wait_seconds=WAIT_SECONDS)

        python.call(name="Create the apps' buckets, policies and users (templates/minio/buckets.yaml) with MinIO's "
                         f"admin API: {', '.join(f'{n} {kind}' for kind, n in sorted(counts.items()))}",
                    function=bootstrap)
