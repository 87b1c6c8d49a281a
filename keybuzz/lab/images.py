"""Lab images, built locally with no image registry: a Debian root filesystem from mmdebstrap,
`docker import`-ed, then ordinary Dockerfiles in lab/images/<name>/ on top of it.

Images (tags are `keybuzz-lab/<name>:<12 hex>`, see image_ref):
    base-bookworm, base-trixie  mmdebstrap --variant=apt roots (security mirror included)
    host      fresh Debian 12 server: systemd PID 1 + sshd, no Docker (the base OS layer installs it)
    redis     stand-in for redis:7.2.5-alpine          (Debian 12 redis 7.0.15)
    haproxy   stand-in for haproxy:2.8.5               (Debian 12 haproxy 2.6.12); also the lab's "LB"
    rabbitmq  stand-in for rabbitmq:3.13.2-management  (Debian 13 rabbitmq-server 4.0.5)
    registry  Debian's docker-registry 2.8, the registry the lab hosts pull service images from

Cache by content: a tag hashes the image directory's files and the parent's tag (for a base: the
suite, sources and package list), so an unchanged image is found by `docker image inspect` and
not rebuilt. Old tags are left behind; `docker image prune` does not remove tagged images, so
`docker rmi $(docker images -q 'keybuzz-lab/*')` clears them all.

Running a lab host: HOST_RUN_ARGS, checked flag by flag on this kind of machine (cgroup v1 hybrid,
dockerd 20.10, --privileged refused) by booting the host image and running `apt-get install docker.io`,
`systemctl start docker` and `docker run -p ...` of a `docker load`-ed image inside it:
  * --cap-add=ALL --cap-drop=SYS_RESOURCE: what --privileged would give systemd and an inner dockerd;
    this sandbox refuses CAP_SYS_RESOURCE ("unable to apply caps: operation not permitted").
  * seccomp=unconfined: required; with the default profile the inner dockerd starts but none of its
    containers does. apparmor=unconfined: a no-op here (no AppArmor), needed on AppArmor hosts.
  * --cgroupns=host: required; with a private cgroup namespace systemd exits at once (255, no
    output). It is 20.10's default on cgroup v1, spelled out so a daemon default cannot change it.
  * -v /sys/fs/cgroup:/sys/fs/cgroup:rw: required; with Docker's read-only mount systemd exits.
  * --device-cgroup-rule='a *:* rwm': not needed by the checks above; kept so that inner containers
    may use any device, as under --privileged.
  * --tmpfs /run, /run/lock: booted without them too; systemd's container interface asks for them
    (no stale /run across restarts).
  * per host, the lab adds -v <outer dir>:/var/lib/docker: the inner dockerd then uses overlay2 (a
    Docker volume works too); without it, it falls back to vfs (a full copy per layer: slow, big).
    One directory per host, never shared.
  * the inner dockerd works with Debian's default iptables-nft (DNAT for -p): no iptables-legacy.
  * inner containers' cgroups land in the machine's hierarchy as /docker/<id>, beside the host
    containers, so limits set on a host container do not cover them.
  * the inner docker0 takes 172.17.0.0/16 unless a host address is in it, i.e. the same range as the
    outer docker0: harmless as long as lab hosts need not reach the outer docker0.
  * ssh: the lab's public key is mounted read-only at /etc/ssh/lab_authorized_keys (LAB_AUTHORIZED_FILE),
    which sshd reads besides ~/.ssh/authorized_keys, so ~root/.ssh stays the deploy's to manage as in
    production. Root logs in by key only. Host keys are made at first boot (each host its own).
  * `docker stop` is a clean systemd shutdown (STOPSIGNAL SIGRTMIN+3, under a second); after a
    `docker start` systemd, sshd and the inner dockerd come back with their data.
  * python3 is installed as on a stock server: pyinfra's facts are shell, only its pip/venv
    operations call python.

Pushing to the lab registry: the outer dockerd treats 127.0.0.0/8 registries as insecure by default,
so publish the registry container on 127.0.0.1:<port> and call push_to_registry("127.0.0.1:<port>").
The lab hosts pull the same images as 172.30.0.2:5000/...; their (inner) dockerd needs that address in
`insecure-registries` of /etc/docker/daemon.json: the base OS layer writes it from insecure_registries
in lab/versions.lab.yaml.

CLI: python -m keybuzz.lab.images [names...]   (builds what is missing, prints `name ref`)
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from keybuzz import ROOT

IMAGES_DIR = ROOT / "lab" / "images"
LAB_VERSIONS = ROOT / "lab" / "versions.lab.yaml"
PREFIX = "keybuzz-lab"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"

# What every base gets beyond the apt variant (essential + apt). Nothing: each image adds its own
# (bookworm's ca-certificates alone would pull 50 MB of perl into every service image).
BASE_PACKAGES: tuple[str, ...] = ()
# Docs, man pages and translations are useless in lab images; the dpkg filter is kept in the image,
# so later `apt-get install`s skip them too.
BASE_DPKG_OPTS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)
# No apt binary caches or downloaded .debs left in image layers (80 MB per `apt-get install` otherwise):
# the same apt.conf file as Debian's official docker images, written once the root is built.
APT_CLEAN = """Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
"""
# (apt-get clean no longer removes the *.bin once pkgcache is "", hence the rm)
BASE_CUSTOMIZE = (f'printf %s {shlex.quote(APT_CLEAN)} >"$1/etc/apt/apt.conf.d/docker-clean"'
                  ' && rm -f "$1"/var/cache/apt/*.bin')
# Merge /usr with mmdebstrap's hook rather than the usrmerge package (which drags perl in on bookworm).
BASE_HOOKS = ("/usr/share/mmdebstrap/hooks/maybe-merged-usr",)


SUITES = ("bookworm", "trixie")
HEADER = "# keybuzz-lab-image:"  # first line of every lab/images/<name>/Dockerfile: parent=<base> seconds=<n>
REQUIREMENTS = "requirements.txt"  # optional: `package==version` lines fetched from PyPI on the build machine


class BuildError(RuntimeError):
    pass


def _suite(name: str) -> str:
    return name.removeprefix("base-")


@dataclass(frozen=True)
class Image:
    parent: str  # name of the image it is built FROM (a base-<suite> for all of them)
    seconds: int  # rough build time on 2 cores, for the progress line


def parse_header(line: str, where: str = "Dockerfile") -> Image:
    """The image's parent and build time from its Dockerfile's first line (data, not code).

    >>> parse_header("# keybuzz-lab-image: parent=base-trixie seconds=20")
    Image(parent='base-trixie', seconds=20)
    """
    if not line.startswith(HEADER):
        raise BuildError(f"{where}:1: first line must be `{HEADER} parent=base-<suite> seconds=<n>`")
    fields = dict(word.split("=", 1) for word in line[len(HEADER):].split() if "=" in word)
    parent, seconds = fields.get("parent", ""), fields.get("seconds", "30")
    if not parent.startswith("base-") or _suite(parent) not in SUITES or not seconds.isdigit():
        raise BuildError(f"{where}:1: parent must be one of {', '.join('base-' + s for s in SUITES)} "
                         f"and seconds a number, got {line.strip()!r}")
    return Image(parent, int(seconds))


def discover(images_dir: Path = IMAGES_DIR) -> dict[str, Image]:
    """Every lab/images/<name>/ with a Dockerfile, by name: adding an image is adding its directory."""
    found = {}
    for dockerfile in sorted(images_dir.glob("*/Dockerfile")):
        first = dockerfile.read_text(encoding="utf-8").splitlines()[:1] or [""]
        found[dockerfile.parent.name] = parse_header(first[0], str(dockerfile.relative_to(ROOT)))
    return found


IMAGES: dict[str, Image] = discover()


def service_keys(path: Path = LAB_VERSIONS) -> dict[str, str]:
    """Lab image name -> versions.yaml key, for every pin of versions.lab.yaml that names a lab image.

    Those images are pushed to the lab registry (lab.up) under the name the pin gives.
    """
    pins = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    keys = {}
    for key, value in pins.items():
        if isinstance(value, str) and "/keybuzz-lab/" in value:
            keys[value.split("/keybuzz-lab/", 1)[1].split(":", 1)[0]] = key
    return keys


LAB_AUTHORIZED_FILE = "/etc/ssh/lab_authorized_keys"
HOST_RUN_ARGS = [
    "--cap-add=ALL", "--cap-drop=SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined",
    "--security-opt", "apparmor=unconfined",
    "--device-cgroup-rule=a *:* rwm",
    "--cgroupns=host",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs", "/run", "--tmpfs", "/run/lock",
]
# Per host, the lab adds:  -v <host dir>/docker:/var/lib/docker  -v <pubkey>:{LAB_AUTHORIZED_FILE}:ro
#                          --hostname <name> --network <lab net> --ip <addr>


def _sources(suite: str) -> list[str]:
    return [f"deb {MIRROR} {suite} main", f"deb {MIRROR} {suite}-updates main",
            f"deb {SECURITY_MIRROR} {suite}-security main"]


def _base_recipe() -> tuple[list[str], list[str]]:
    """The mmdebstrap options and `docker import --change`s of a base: with the suite and its
    sources, what its tag hashes, so that any change to them makes a new base."""
    include = ["--include=" + ",".join(BASE_PACKAGES)] if BASE_PACKAGES else []
    options = ["--variant=apt", *include, *(f"--dpkgopt={o}" for o in BASE_DPKG_OPTS),
               f"--customize-hook={BASE_CUSTOMIZE}", *(f"--hook-dir={d}" for d in BASE_HOOKS)]
    return options, ['CMD ["/bin/bash"]', "ENV LANG=C.UTF-8"]


def _digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big") + p)  # length-prefixed: no ambiguity between parts
    return h.hexdigest()[:12]


def _dir_parts(path: Path) -> Iterable[bytes]:
    for f in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        yield f.relative_to(path).as_posix().encode()
        yield f.read_bytes()
        yield b"x" if os.access(f, os.X_OK) else b"-"  # COPY keeps the mode bit


def image_ref(name: str) -> str:
    """The local tag of `name`, computed from content alone (nothing is built or asked of docker).

    Example::

        image_ref("redis")
        # -> 'keybuzz-lab/redis:3f1c0a9b2d4e'
    """
    if name.startswith("base-"):
        suite = _suite(name)
        if suite not in SUITES:
            raise KeyError(name)
        options, changes = _base_recipe()
        parts = [suite, *_sources(suite), "--", *options, "--", *changes]
        return f"{PREFIX}/{name}:{_digest(p.encode() for p in parts)}"
    image = IMAGES[name]
    return f"{PREFIX}/{name}:{_digest([image_ref(image.parent).encode(), *_dir_parts(IMAGES_DIR / name)])}"


def _exists(ref: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode == 0


def _run_logged(cmd: list[str], what: str) -> None:
    """Run a long command with its output in a temp file; on failure raise with its last lines."""
    with tempfile.TemporaryFile("w+") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, "DOCKER_BUILDKIT": "0"}).returncode
        if rc:
            log.seek(0)
            tail = "".join(log.readlines()[-25:])
            raise BuildError(f"{what} failed (exit {rc}); last lines:\n{tail}")


def build_base(suite: str, progress: Callable[[str], None] = print) -> str:
    """mmdebstrap a Debian `suite` root and docker-import it; returns its ref (cached)."""
    name = f"base-{suite}"
    ref = image_ref(name)
    if _exists(ref):
        progress(f"{name}: cached")
        return ref
    progress(f"building {name} (≈30 s)…")
    options, changes = _base_recipe()
    with tempfile.TemporaryDirectory(prefix="keybuzz-lab-") as tmp:
        tar = Path(tmp) / "root.tar"
        _run_logged(["mmdebstrap", *options, suite, str(tar), *_sources(suite)], f"mmdebstrap {suite}")
        _run_logged(["docker", "import", *(f"--change={c}" for c in changes), str(tar), ref],
                    f"docker import {name}")
    return ref


def build(name: str, progress: Callable[[str], None] = print) -> str:
    """Build lab/images/<name>/ (and its base if missing); returns its ref (cached)."""
    if name.startswith("base-"):
        return build_base(_suite(name), progress)
    image = IMAGES[name]
    parent = image_ref(image.parent)
    if not _exists(parent):  # a cached base goes unmentioned: one progress line per image
        build(image.parent, progress)
    ref = image_ref(name)
    if _exists(ref):
        progress(f"{name}: cached")
        return ref
    progress(f"building {name} (≈{image.seconds} s)…")
    with tempfile.TemporaryDirectory(prefix=f"keybuzz-lab-{name}-") as tmp:
        context = _build_context(IMAGES_DIR / name, Path(tmp))
        cmd = ["docker", "build", "--force-rm", "--build-arg", f"BASE={parent}", "-t", ref,
               "--label", f"org.keybuzz.lab.parent={parent}", str(context)]
        try:
            _run_logged(cmd, f"docker build {name}")
        except BuildError as e:
            # The legacy builder shares untagged intermediate images between builds of the same steps;
            # a concurrent `docker rmi` elsewhere can delete one mid-build. Once more, from scratch.
            if "unknown parent image" not in str(e):
                raise
            _run_logged([*cmd[:2], "--no-cache", *cmd[2:]], f"docker build {name}")
    return ref


def _build_context(source: Path, tmp: Path) -> Path:
    """The directory docker builds from: `source` itself, or, when it has a requirements.txt, a copy of it
    with `wheels/` holding those exact packages, fetched here (containers reach Debian's mirror, not PyPI)."""
    requirements = source / REQUIREMENTS
    if not requirements.is_file():
        return source
    context = tmp / source.name
    shutil.copytree(source, context)
    _run_logged([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                 "-d", str(context / "wheels"), "-r", str(requirements)], f"pip download for {source.name}")
    return context


def build_all(progress: Callable[[str], None] = print) -> dict[str, str]:
    """Build every lab image (bases first), skipping those already present; returns name -> ref."""
    return {name: build(name, progress) for name in IMAGES}


def lab_image_names(path: Path = LAB_VERSIONS) -> dict[str, str]:
    """name -> `keybuzz-lab/<name>:<version>-<suite>` as pinned in versions.lab.yaml (registry part cut)."""
    pins = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {name: pins[key].split("/", 1)[1] for name, key in service_keys(path).items()}


def push_to_registry(registry_addr: str, names: Iterable[str] | None = None,
                     progress: Callable[[str], None] = print) -> dict[str, str]:
    """Tag the service images under their versions.lab.yaml names at `registry_addr` and push them.

    The outer dockerd must see `registry_addr` as insecure: 127.0.0.1:<published port> is, by default.
    Returns name -> pushed ref.
    """
    wanted = lab_image_names()
    pushed = {}
    for name in wanted if names is None else names:
        target = f"{registry_addr}/{wanted[name]}"
        ref = image_ref(name)
        subprocess.run(["docker", "tag", ref if _exists(ref) else build(name, progress), target], check=True)
        progress(f"pushing {target}…")
        _run_logged(["docker", "push", target], f"docker push {target}")
        # the registry has it now: drop the local alias (one per registry port otherwise piles up)
        subprocess.run(["docker", "rmi", target], capture_output=True)
        pushed[name] = target
    return pushed


def main(argv: list[str]) -> int:
    names = argv or list(IMAGES)
    unknown = [n for n in names if n not in IMAGES and _suite(n) not in SUITES]
    if unknown:
        print(f"unknown image(s): {', '.join(unknown)}; known: {', '.join(IMAGES)}", file=sys.stderr)
        return 2
    try:
        refs = {n: build(n, lambda m: print(m, file=sys.stderr)) for n in names}
    except BuildError as e:
        print(e, file=sys.stderr)
        return 1
    for n, ref in refs.items():
        print(f"{n} {ref}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
