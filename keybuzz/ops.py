"""Operations shared by the layers: secret files that never leak, and services run as containers
under systemd (so `systemctl reload haproxy` works, and a changed definition is noticed).

Pattern (install / configure / activate, as chatmail's cmdeploy): each layer uploads its config
and unit files, collects the OperationMeta of each, and restarts a service only when one of
its own files changed (`restart_if`), one host at a time where the layer needs it.

Example::

    conf = secret_file(name="redis.conf", dest="/opt/keybuzz/redis/conf/redis.conf",
                       content=HiddenValue(text), user="999", group="1000")
    unit = container_unit(name="redis", image="redis:7.2.5-alpine", run_args=["--user", "999:1000"],
                          command="redis-server /conf/redis.conf")
    restart_if("redis", conf, *unit)
"""

from __future__ import annotations

import hashlib
import posixpath
import shlex
from fnmatch import fnmatchcase
from io import BytesIO

from pyinfra import host
from pyinfra.api import FileUploadCommand, HiddenValue, OperationError, StringCommand, operation
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import File, Sha256File
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from keybuzz import ROOT
from keybuzz.facts import ServiceActive
from keybuzz.render import render


def _raw(content) -> bytes:
    text = content.unmask() if isinstance(content, HiddenValue) else content
    return text.encode() if isinstance(text, str) else text


STAGING_DIR_NAME = ".keybuzz-staging"  # root 0700, at the root of the mount holding a secret file's destination


def _staging_mount_probe(directory: str) -> str:
    """Shell printing the mount point of `directory`, or of its nearest existing ancestor (an earlier operation of
    the same run may create the directory)."""
    return (f"p={shlex.quote(directory)}; while [ ! -d \"$p\" ]; do p=$(dirname -- \"$p\"); done; "
            "stat -c %m -- \"$p\"")


def _fail(message: str) -> str:
    return f"{{ echo {shlex.quote('keybuzz: ' + message)} >&2; exit 1; }}"


def _steps(*steps: str) -> StringCommand:
    """One shell command running `steps` in order, stopping at the first that fails (each one grouped, so that a
    `check || fail` step never mixes with its neighbours' && / ||)."""
    return StringCommand(" && ".join(f"{{ {step}; }}" for step in steps))


@operation()
def secret_file(dest: str, content, user: str = "root", group: str = "root", mode: str = "600",
                only_if_absent: bool = False):
    """Write a file whose content is secret: never printed, never world-readable, even for an instant, and never
    written through a symlink, even in a directory a container can write (/opt/keybuzz/<layer>/conf).

    Compares sha256 only (facts print the hash, not the content; no --diff output). The temporary file is staged
    in `.keybuzz-staging` (root:root 0700) at the root of the mount that holds `dest` (`stat -c %m`): no other user
    can plant or swap anything there, and the final `mv -T` is a single rename on one mount. Ownership is set with
    `chown -h` on that file, then `mv -T` replaces `dest` (a symlink planted at `dest` is replaced, not followed;
    a directory at `dest` fails the operation). The mount point must be root's (not writable by group or others
    unless sticky), and an existing `.keybuzz-staging` that is not a root 0700 directory fails the operation.
    `only_if_absent`: a bootstrap file that its service rewrites afterwards (sentinel.conf): written when missing,
    never compared or replaced.

    + dest: remote path (its directory must exist when the operation runs)
    + content: HiddenValue (or str/bytes) with the full file content
    + user, group, mode: final ownership and mode (numeric ids are fine)
    + only_if_absent: write only when `dest` does not exist

    Example::

        secret_file(name="Write redis.conf", dest="/opt/keybuzz/redis/conf/redis.conf",
                    content=HiddenValue(text), user="999", group="1000")
    """
    if only_if_absent and host.get_fact(File, path=dest):
        host.noop(f"{dest} exists and belongs to its service now")
        return
    data = _raw(content)
    want = hashlib.sha256(data).hexdigest()
    # names and numeric ids both, so that user="999" matches a uid that has no name on the host; %F last: the file
    # type ("regular file", "symbolic link"): a symlink at dest is rewritten, its target never read
    owner = (host.get_fact(Command, command=f"stat -c '%U %u %G %g %a %F' {shlex.quote(dest)} 2>/dev/null || true")
             or "").split()
    same = (
        not only_if_absent
        and len(owner) >= 6
        and " ".join(owner[5:]) == "regular file"
        and str(user) in owner[0:2]
        and str(group) in owner[2:4]
        and owner[4] == mode.lstrip("0")
        and host.get_fact(Sha256File, path=dest) == want
    )
    if same:
        host.noop(f"{dest} is up to date")
        return
    directory = posixpath.dirname(dest.rstrip("/")) or "/"
    mount = host.get_fact(Command, command=_staging_mount_probe(directory)) or ""
    if not mount.startswith("/"):
        raise OperationError(f"cannot find the mount point of {directory}")
    staging = posixpath.join(mount, STAGING_DIR_NAME)
    tmp = posixpath.join(staging, f"{posixpath.basename(dest)}.{hashlib.sha256(dest.encode()).hexdigest()[:12]}.new")
    q = {k: shlex.quote(v) for k, v in
         {"m": mount, "s": staging, "t": tmp, "d": directory, "dest": dest, "owner": f"{user}:{group}",
          "mode": mode}.items()}
    same_mount = (f"[ \"$(stat -c %m -- {q['d']})\" = {q['m']} ] || "
                  + _fail(f"{directory} is not on the mount {mount} (missing, or moved)"))
    # the mount point must be root's alone: owned by root, not writable by group or others unless sticky (/tmp)
    yield _steps(
        same_mount,
        f"[ \"$(stat -c %u -- {q['m']})\" = 0 ] || "
        + _fail(f"{mount} is not owned by root: no safe staging directory"),
        f"a=$(stat -c %a -- {q['m']})",
        "{ [ $((0$a & 022)) -eq 0 ] || [ $((0$a & 01000)) -ne 0 ]; } || "
        + _fail(f"{mount} is writable by group or others: no safe staging directory"),
        f"mkdir -m 700 -- {q['s']} 2>/dev/null || true",
        f"[ -d {q['s']} ] && [ ! -L {q['s']} ] && [ \"$(stat -c %u:%g:%a -- {q['s']})\" = 0:0:700 ] || "
        + _fail(f"{staging} is not a directory owned by root with mode 0700; remove it (it is recreated)"),
        f"rm -f -- {q['t']}",
        f"install -m 600 -o root -g root /dev/null {q['t']}",
    )
    yield FileUploadCommand(BytesIO(data), tmp)
    # `mv -n` for a bootstrap file: if the service created it meanwhile, its own version wins
    move = (f"{{ mv -n -T -- {q['t']} {q['dest']} || [ -e {q['dest']} ]; }} && rm -f -- {q['t']}" if only_if_absent
            else f"mv -f -T -- {q['t']} {q['dest']}")
    yield _steps(
        f"chown -h -- {q['owner']} {q['t']}",
        f"chmod -- {q['mode']} {q['t']}",
        same_mount,
        move,
    )


@operation()
def owned_directory(path: str, uid: str, gid: str, mode: str):
    """A directory owned by numeric ids that may have no name on the host (the containers' users).

    pyinfra's files.directory compares owner *names* (`stat -c %U`, "UNKNOWN" for a nameless uid), so it
    would chown again on every run; this compares `uid:gid:mode` numerically and changes only what differs.

    Example::

        owned_directory(name="Create /opt/keybuzz/redis/data", path="/opt/keybuzz/redis/data",
                        uid="999", gid="1000", mode="750")
    """
    quoted = shlex.quote(path)
    current = host.get_fact(Command, command=f"stat -c '%u:%g:%a' {quoted} 2>/dev/null || echo absent")
    if current == f"{uid}:{gid}:{mode.lstrip('0') or '0'}":
        host.noop(f"{path} is {uid}:{gid} {mode}")
        return
    yield f"mkdir -p {quoted} && chown {uid}:{gid} {quoted} && chmod {mode} {quoted}"


def missing_packages(wanted, installed: dict) -> list[str]:
    """Packages of `wanted` ("name", "name=version" or "name=version*", apt's glob) not installed at a matching
    version.

    >>> missing_packages(["socat", "docker.io=20.10.24"], {"socat": ["1.7"], "docker.io": ["20.10.25"]})
    ['docker.io=20.10.24']
    >>> missing_packages(["docker.io=20.10.24+dfsg1-1+deb12u*"], {"docker.io": ["20.10.24+dfsg1-1+deb12u1+b6"]})
    []
    """
    missing = []
    for spec in wanted:
        name, _, version = spec.partition("=")
        have = installed.get(name) or []
        if not have or (version and not any(fnmatchcase(v, version) for v in have)):
            missing.append(spec)
    return missing


def apt_packages(packages: list[str], what: str, **kwargs):
    """Install Debian `packages` ("name", "name=version", or "name=version*": the newest build matching apt's
    glob, kept there by an /etc/apt/preferences.d pin so that security rebuilds are taken and other versions
    never are). The package lists are updated only when one is missing: a second run changes nothing.
    `kwargs` go to apt.packages.

    Example::

        apt_packages(["redis-tools", "socat"], "redis-cli and socat for redis-update-master.sh")
        apt_packages(["docker.io=20.10.24+dfsg1-1+deb12u*"], "Docker Engine")
    """
    missing = missing_packages(packages, host.get_fact(DebPackages))
    if missing:
        apt.update(name="Update the apt package lists")
    plain = [p for p in packages if "*" not in p]
    if plain:
        apt.packages(name=f"Install {what}", packages=plain, **kwargs)
    for spec in (p for p in packages if "*" in p):
        name, _, pattern = spec.partition("=")
        template("common/apt-pin.pref.j2", f"/etc/apt/preferences.d/keybuzz-{name}", package=name, pattern=pattern)
        if spec in missing:
            server.shell(name=f"Install {name} {pattern} (the newest matching build)", commands=[
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --allow-downgrades "
                + shlex.quote(spec)])


def template(src: str, dest: str, mode: str = "644", user: str = "root", group: str = "root", **context):
    """Install templates/<src> at `dest`: a `.j2` is rendered with `context`, any other file copied byte for byte.

    No secret here (its content is shown by --diff): secrets go through secret_file.

    Example::

        template("redis/keybuzz-redis-settings", "/usr/local/sbin/keybuzz-redis-settings", mode="700")
        template("rabbitmq/rabbitmq.conf.j2", f"{CONF}/rabbitmq.conf", peers=peers, private_ip=ip)
    """
    if src.endswith(".j2"):
        data = BytesIO(render(src, **context).encode())
    elif context:
        raise ValueError(f"templates/{src} is copied as is: it takes no variables (name it .j2 to render)")
    else:
        data = BytesIO((ROOT / "templates" / src).read_bytes())
    return files.put(name=f"Install {dest}", src=data, dest=dest, mode=mode, user=user, group=group)


@operation()
def validated_file(dest: str, content: str, check: str, mode: str = "644", lock: str | None = None):
    """Install `content` at `dest` only after `check <candidate>` accepts it (e.g. haproxy -c); atomic rename.
    A refused candidate fails the operation and the old file stays in place. The candidate has a name of its
    own (another writer's candidate is never touched); `lock`: a flock file another writer of `dest` also
    takes (its directory is created root 0700), held from the check to the rename.

    Example::

        validated_file(name="Install haproxy.cfg", dest=CFG, content=text, check=CHECK_TOOL, lock=UPDATE_LOCK)
    """
    data = content.encode()
    if host.get_fact(Sha256File, path=dest) == hashlib.sha256(data).hexdigest():
        host.noop(f"{dest} is up to date")
        return
    tmp = f"{dest}.keybuzz-new.{hashlib.sha256(data).hexdigest()[:12]}"
    install = f"chmod {mode} {tmp} && {check} {tmp} && mv -f {tmp} {dest}"
    if lock:
        install = (f"install -d -m 700 {shlex.quote(posixpath.dirname(lock))} && "
                   f"flock -w 60 {shlex.quote(lock)} sh -c {shlex.quote(install)}")
    yield FileUploadCommand(BytesIO(data), tmp)
    yield StringCommand(f"{install} || {{ rm -f {tmp}; exit 1; }}")


@operation()
def image_present(image: str):
    """Pull `image` unless the host has it: a second run reports no change (server.shell always does).

    Example:
        image_present(name="Pull redis:7.2.5-alpine", image="redis:7.2.5-alpine")
    """
    quoted = shlex.quote(image)
    probe = f"docker image inspect {quoted} >/dev/null 2>&1 && echo present || echo absent"
    if host.get_fact(Command, command=probe) == "present":
        host.noop(f"{image} is present")
        return
    yield f"docker pull -q {quoted}"


def container_unit(
    name: str,
    image: str,
    command: str = "",
    run_args: list[str] | tuple[str, ...] = (),
    reload: str | None = None,
    description: str = "",
    stop_timeout: int = 30,
    pre_start: list[str] | tuple[str, ...] = (),
):
    """Install `/etc/systemd/system/<name>.service` running `image` as container `<name>` (host network).

    The unit file holds the whole `docker run` line, so any change of image or arguments changes
    the file, and `restart_if` restarts the service. Secrets never go on the command line: pass
    `--env-file` of a `secret_file` instead. The image is pulled at deploy time, so a restart
    never depends on the registry. `pre_start`: commands run before the container starts (ExecStartPre,
    after the old container is removed); one failing fails the start, and systemd tries again.

    Returns the OperationMetas whose change means "restart needed".

    Example:
        unit = container_unit("haproxy", image, run_args=["-v", "/opt/keybuzz/haproxy/conf:/usr/local/etc/haproxy:ro"],
                              reload="/usr/bin/docker kill -s HUP haproxy")
    """
    image_present(name=f"Pull {image}", image=image)
    unit = files.put(
        name=f"Install {name}.service",
        src=BytesIO(render(
            "common/container.service.j2",
            name=name, image=image, command=command, run_args=list(run_args), reload=reload,
            description=description or f"KeyBuzz {name}", stop_timeout=stop_timeout,
            pre_start=list(pre_start),
        ).encode()),
        dest=f"/etc/systemd/system/{name}.service",
        mode="644",
    )
    return (unit,)


def restart_if(service: str, *changed, serial: bool = False, ready: str | None = None):
    """Enable `service` and start it; restart it only if it was already running and one of `changed`
    (OperationMeta) changed: a service this run installs or starts picks its new files up by starting.
    `ready`: a bounded command run right after the restart that succeeds once the service serves again; with
    `serial` the next host restarts only then (`systemctl restart` returns as soon as the container is spawned).

    Example::

        restart_if("haproxy", cfg_op, *unit_ops, serial=True, ready=HAPROXY_READY)   # one host at a time
    """
    was_active = host.get_fact(ServiceActive, service=service)
    systemd.daemon_reload(name="systemd daemon-reload", _if=any_changed(*changed))
    systemd.service(name=f"Enable and start {service}", service=service, running=True, enabled=True)
    server.shell(
        name=f"Restart {service} (its definition changed)",
        commands=[f"systemctl restart {shlex.quote(service)}", *([ready] if ready else [])],
        _if=lambda: was_active and any_changed(*changed)(),
        _serial=serial,
    )
