"""Operations shared by the layers: secret files that never leak, and services run as containers
under systemd (so `systemctl reload haproxy` works, and a changed definition is noticed).

Pattern (install / configure / activate, as chatmail's cmdeploy): each layer uploads its config
and unit files, collects the OperationMeta of each, and restarts a service only when one of
its own files changed (`restart_if`), one host at a time where the layer needs it.

Example:
    >>> conf = secret_file(name="redis.conf", dest="/opt/keybuzz/redis/conf/redis.conf",
    ...                    content=HiddenValue(text), user="999", group="1000")
    >>> unit = container_unit(name="redis", image="redis:7.2.5-alpine", run_args=["--user", "999:1000"],
    ...                       command="redis-server /conf/redis.conf")
    >>> restart_if("redis", conf, *unit)
"""

from __future__ import annotations

import hashlib
import shlex
from io import BytesIO

from pyinfra import host
from pyinfra.api import FileUploadCommand, HiddenValue, StringCommand, operation
from pyinfra.facts.files import Sha256File
from pyinfra.facts.server import Command
from pyinfra.operations import files, server, systemd
from pyinfra.operations.util import any_changed

from keybuzz.render import render


def _raw(content) -> bytes:
    text = content.unmask() if isinstance(content, HiddenValue) else content
    return text.encode() if isinstance(text, str) else text


@operation()
def secret_file(dest: str, content, user: str = "root", group: str = "root", mode: str = "600"):
    """Write a file whose content is secret: never printed, never world-readable, even for an instant.

    Compares sha256 only (facts print the hash, not the content; no --diff output), uploads into a
    0600 temporary file beside `dest`, then moves it into place.

    + dest: remote path
    + content: HiddenValue (or str/bytes) with the full file content
    + user, group, mode: final ownership and mode (numeric ids are fine)

    Example:
        secret_file(name="Write redis.conf", dest="/opt/keybuzz/redis/conf/redis.conf",
                    content=HiddenValue(text), user="999", group="1000")
    """
    data = _raw(content)
    want = hashlib.sha256(data).hexdigest()
    # names and numeric ids both, so that user="999" matches a uid that has no name on the host
    owner = (host.get_fact(Command, command=f"stat -c '%U %u %G %g %a' {shlex.quote(dest)} 2>/dev/null || true")
             or "").split()
    same = (
        len(owner) == 5
        and str(user) in owner[0:2]
        and str(group) in owner[2:4]
        and owner[4] == mode.lstrip("0")
        and host.get_fact(Sha256File, path=dest) == want
    )
    if same:
        host.noop(f"{dest} is up to date")
        return
    tmp = f"{dest}.keybuzz-new"
    yield StringCommand("install", "-m", "600", "-o", "root", "-g", "root", "/dev/null", tmp)
    yield FileUploadCommand(BytesIO(data), tmp)
    yield StringCommand("chown", f"{user}:{group}", tmp, "&&", "chmod", mode, tmp, "&&", "mv", "-f", tmp, dest)


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
):
    """Install `/etc/systemd/system/<name>.service` running `image` as container `<name>` (host network).

    The unit file holds the whole `docker run` line, so any change of image or arguments changes
    the file, and `restart_if` restarts the service. Secrets never go on the command line: pass
    `--env-file` of a `secret_file` instead. The image is pulled at deploy time, so a restart
    never depends on the registry.

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
        ).encode()),
        dest=f"/etc/systemd/system/{name}.service",
        mode="644",
    )
    return (unit,)


def restart_if(service: str, *changed, serial: bool = False):
    """Enable `service` and start it; restart it only if one of `changed` (OperationMeta) changed.

    Example:
        restart_if("redis", conf_op, *unit_ops, serial=True)   # one host at a time
    """
    systemd.daemon_reload(name="systemd daemon-reload", _if=any_changed(*changed))
    systemd.service(name=f"Enable and start {service}", service=service, running=True, enabled=True)
    server.shell(
        name=f"Restart {service} (its definition changed)",
        commands=[f"systemctl restart {shlex.quote(service)}"],
        _if=any_changed(*changed),
        _serial=serial,
    )
