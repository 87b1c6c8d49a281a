"""versions.yaml: the single source of pinned versions (design §F), validated before any work.

Layers, in order: versions.yaml, then $KEYBUZZ_VERSIONS (an override with a subset of the same keys: the lab,
an air-gapped site), then $KEYBUZZ_VERSIONS_LOCK (a lock file of digests written by `invoke versions.check
--lock FILE`: each image pin becomes `name:tag@sha256:...`, the exact content the registry served).

Every pin names an exact release: an image tag carries major.minor.patch digits (PostgreSQL: major.minor, its
numbering since 10), a MinIO `RELEASE.` stamp, or is followed by a digest; `latest`, `stable`, `lts`, `edge`,
`alpine`, `3-management`, `16` ... move when a new release is published and are refused, with file and line.
`registry_mirror` (host[:port]) and `insecure_registries` (host:port list) land in /etc/docker/daemon.json, in
image names and unquoted in root scripts and ExecStart lines: only host names, IPv4 addresses and ports pass.
`docker_engine_package` is `docker.io=<Debian version>`, optionally ending in one `*` (apt's version glob).

Example:
    >>> v = load_versions(ROOT / "versions.yaml", override="", lock="")
    >>> v["redis_image"]
    'redis:7.2.5-alpine'

The registry client (`check_images`, used by `invoke versions.check`) asks each image's registry, or the
mirror, for the manifest digest over the Docker Registry HTTP API v2 (HEAD /v2/<name>/manifests/<tag>, with the
anonymous bearer-token flow of Docker Hub, Quay, GHCR).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from keybuzz import ROOT
from keybuzz.errors import InputError

DIGEST = r"sha256:[0-9a-f]{64}"
# image reference: [registry[:port]/]name[/name...]:tag[@sha256:<64 hex>] — tag mandatory
_IMAGE = re.compile(r"^(?P<name>(?:[a-z0-9.-]+(?::\d+)?/)?[a-z0-9._-]+(?:/[a-z0-9._-]+)*)"
                    r":(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127})(?:@(?P<digest>" + DIGEST + r"))?$")
_LIST_KEYS = {"insecure_registries"}
_MAY_BE_EMPTY = {"registry_mirror"}

# tag words that follow whatever is newest: never an exact release
_FLOATING_WORDS = {"latest", "stable", "lts", "edge", "mainline", "current", "nightly", "rolling", "master", "main"}
_THREE_PART = re.compile(r"(?:^|[^0-9.])v?\d+\.\d+\.\d+(?![0-9])")  # 7.2.5, v3.5.15, 10.11.6-debian-12-r0
_MINIO_STAMP = re.compile(r"^RELEASE\.\d{4}-\d{2}-\d{2}T[0-9-]+Z")  # exact form: keybuzz.minio.settings.preflight
# images whose project numbers releases major.minor: PostgreSQL since 10 (16.4 is an exact release)
_TWO_PART_RELEASES = {"postgres": re.compile(r"^\d{2,}\.\d+(?![0-9.])")}
_VERSION = re.compile(r"^v?\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]+)?$")  # k3s v1.30.4+k3s1, chart 4.11.2

_HOST = r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
_HOST_PORT = re.compile(rf"^(?P<host>{_HOST})(?::(?P<port>\d{{1,5}}))?$")
# Debian package version pin: docker.io=[epoch:]upstream-revision, optionally one trailing `*` (apt's glob)
_DOCKER_PACKAGE = re.compile(r"^docker\.io=(?P<version>(?:\d+:)?(?P<upstream>\d+\.\d+\.\d+[0-9A-Za-z.+~]*)"
                             r"-[0-9A-Za-z.+~]*[0-9A-Za-z.+~]\*?)$")


def versions_path() -> Path:
    return ROOT / "versions.yaml"


def _read(path: Path) -> tuple[dict, dict]:
    """Load a YAML mapping and the line of each top-level key."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(path, 0, f"cannot read versions file ({e.strerror})") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", -1) + 1
        raise InputError(path, line, f"invalid YAML ({getattr(e, 'problem', e)}); fix the syntax") from None
    if not isinstance(data, dict):
        raise InputError(path, 1, "expected a mapping of `key: value` pins")
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value} if node is not None else {}
    return data, lines


def _host_port(value: str, port_required: bool) -> bool:
    m = _HOST_PORT.match(value)
    if not m or len(m.group("host")) > 253 or (port_required and not m.group("port")):
        return False
    return not m.group("port") or 1 <= int(m.group("port")) <= 65535


def _release_problem(name: str, tag: str) -> str | None:
    """Why `tag` of image `name` does not name one exact release, or None."""
    words = set(re.split(r"[-_.+]", tag.lower()))
    if words & _FLOATING_WORDS:
        return f"tag {tag!r} is a floating tag ({', '.join(sorted(words & _FLOATING_WORDS))})"
    if _MINIO_STAMP.match(tag) or _THREE_PART.search(tag):
        return None
    two_part = _TWO_PART_RELEASES.get(name.rsplit("/", 1)[-1])
    if two_part and two_part.match(tag):
        return None
    return f"tag {tag!r} names no exact release (it moves when a new release is published)"


def check_pin(path, line, key, value) -> None:
    """Refuse an empty value, `latest`, an image without an exact release tag, an unsafe registry setting or an
    unpinned Docker Engine package.

    >>> check_pin("versions.yaml", 3, "redis_image", "redis")
    Traceback (most recent call last):
    keybuzz.errors.InputError: versions.yaml:3: redis_image 'redis' has no tag or is malformed; pin an exact ...
    >>> check_pin("versions.yaml", 3, "redis_image", "redis:alpine")
    Traceback (most recent call last):
    keybuzz.errors.InputError: versions.yaml:3: redis_image 'redis:alpine': tag 'alpine' names no exact release ...
    """
    if key in _LIST_KEYS:
        if not isinstance(value, list) or not all(isinstance(v, str) and _host_port(v, True) for v in value):
            raise InputError(path, line, f"{key} must be a list of \"host:port\" strings (lowercase host name or "
                             "IPv4 address, port 1-65535), e.g. [\"172.30.0.2:5000\"]")
        return
    if value is None or (isinstance(value, str) and not value.strip()):
        if key in _MAY_BE_EMPTY:
            return
        raise InputError(path, line, f"{key} is empty; pin an exact version")
    if key == "registry_mirror" and not (isinstance(value, str) and _host_port(value, False)):
        raise InputError(path, line, f"{key} {value!r} is not a host or host:port (lowercase host name or IPv4 "
                         "address, port 1-65535, no scheme, path, space or quote), e.g. \"mirror.internal:5000\"; "
                         "it is written unquoted into root scripts and unit files")
    if not isinstance(value, str):
        raise InputError(path, line, f"{key} must be a quoted string, e.g. \"1.2.3\"")
    if re.search(r"(^|[:=/\s])latest$", value, re.IGNORECASE):
        raise InputError(path, line, f"{key} uses 'latest' ({value}); design §F requires an exact version")
    if key == "registry_mirror":
        return
    if key == "docker_engine_package":
        if not _DOCKER_PACKAGE.match(value):
            raise InputError(path, line, f"{key} {value!r} is not a pinned Debian package: write "
                             "docker.io=<upstream>-<Debian revision>, optionally ending in one `*` for Debian's later "
                             "rebuilds and security updates, e.g. docker.io=20.10.24+dfsg1-1+deb12u* "
                             "(`apt-cache madison docker.io` lists the versions)")
        return
    if key.endswith("_image"):
        m = _IMAGE.match(value)
        if not m:
            raise InputError(path, line, f"{key} {value!r} has no tag or is malformed; "
                             "pin an exact version like name:1.2.3 (or name:1.2.3@sha256:<64 hex digits>)")
        problem = _release_problem(m.group("name"), m.group("tag"))
        if problem:
            raise InputError(path, line, f"{key} {value!r}: {problem}; pin an exact release, e.g. "
                             "redis:7.2.5-alpine, or add its digest (`invoke versions.check --lock FILE`)")
        return
    if key.endswith(("_version", "_chart")) and not _VERSION.match(value):
        raise InputError(path, line, f"{key} {value!r} names no exact release; pin major.minor.patch, e.g. "
                         "\"v1.30.4+k3s1\" or \"4.11.2\"")


def lock_path(lock: str | os.PathLike | None = None) -> Path | None:
    """The lock file in use: `lock` if given ("" = none), else $KEYBUZZ_VERSIONS_LOCK."""
    lock = lock if lock is not None else os.environ.get("KEYBUZZ_VERSIONS_LOCK")
    return Path(lock) if lock else None


def _apply_lock(data: dict, where: dict, lock: Path) -> None:
    extra, lines = _read(lock)
    for k, v in extra.items():
        line = lines.get(k, 0)
        if k not in data:
            raise InputError(lock, line, f"unknown key {k!r}: a lock may only pin image keys of versions.yaml")
        if not k.endswith("_image"):
            raise InputError(lock, line, f"{k}: a lock holds only image pins (keys ending in _image)")
        m = _IMAGE.match(v) if isinstance(v, str) else None
        if not m or not m.group("digest"):
            raise InputError(lock, line, f"{k} has no digest or is malformed; a lock entry is "
                             "name:tag@sha256:<64 hex digits>: re-run `invoke versions.check --lock FILE`")
        pinned = str(data[k]).split("@", 1)[0]
        if m.group(0).split("@", 1)[0] != pinned:
            raise InputError(lock, line, f"{k} is stale: the lock has {v.split('@', 1)[0]}, the pin is {pinned}; "
                             f"re-run `invoke versions.check --lock {lock}`")
        data[k] = v
        where[k] = (lock, line)


def load_versions(path: str | os.PathLike | None = None, override: str | os.PathLike | None = None,
                  lock: str | os.PathLike | None = None) -> dict:
    """Load versions.yaml, overlay the override file ($KEYBUZZ_VERSIONS), apply the lock file of digests
    ($KEYBUZZ_VERSIONS_LOCK), validate every pin. `override=""` / `lock=""`: none, whatever the environment."""
    base_path = Path(path) if path else versions_path()
    data, lines = _read(base_path)
    where = {k: (base_path, lines.get(k, 0)) for k in data}
    override = override if override is not None else os.environ.get("KEYBUZZ_VERSIONS")
    if override:
        opath = Path(override)
        extra, olines = _read(opath)
        for k, v in extra.items():
            if k not in data:
                raise InputError(opath, olines.get(k, 0), f"unknown key {k!r}: an override may only "
                                 f"change keys of {base_path.name}")
            data[k] = v
            where[k] = (opath, olines.get(k, 0))
    locked = lock_path(lock)
    if locked:
        _apply_lock(data, where, locked)
    for k, v in data.items():
        check_pin(*where[k], k, v)
    return data


def pin_location(key: str, path: str | os.PathLike | None = None,
                 override: str | os.PathLike | None = None, lock: str | os.PathLike | None = None) -> tuple[Path, int]:
    """(file, line) that pins `key`: the lock file when it pins it, else the override file ($KEYBUZZ_VERSIONS) when
    it sets it, else versions.yaml.

    >>> pin_location("redis_image", ROOT / "versions.yaml", override="", lock="")[1] > 0
    True
    """
    locked = lock_path(lock)
    if locked:
        extra, llines = _read(locked)
        if key in extra:
            return locked, llines.get(key, 0)
    override = override if override is not None else os.environ.get("KEYBUZZ_VERSIONS")
    if override:
        extra, olines = _read(Path(override))
        if key in extra:
            return Path(override), olines.get(key, 0)
    base_path = Path(path) if path else versions_path()
    return base_path, _read(base_path)[1].get(key, 0)


def image(versions: dict, key: str) -> str:
    """The image reference for `key`, through the registry mirror when one is set.

    >>> image({"redis_image": "redis:7.2.5-alpine", "registry_mirror": "mirror:5000"}, "redis_image")
    'mirror:5000/redis:7.2.5-alpine'
    """
    ref = versions[key]
    mirror = versions.get("registry_mirror") or ""
    first = ref.split("/", 1)[0]
    has_registry = "/" in ref and ("." in first or ":" in first)
    return f"{mirror}/{ref}" if mirror and not has_registry else ref


def package_pin(versions: dict) -> tuple[str, str]:
    """(package, apt version pattern) of `docker_engine_package`; the pattern may end in `*` (apt's glob, also
    what `Pin: version` of /etc/apt/preferences.d takes). Match an installed version with fnmatch.fnmatchcase.

    >>> package_pin({"docker_engine_package": "docker.io=20.10.24+dfsg1-1+deb12u*"})
    ('docker.io', '20.10.24+dfsg1-1+deb12u*')
    """
    name, _, pattern = versions["docker_engine_package"].partition("=")
    return name, pattern


# --------------------------------------------------------------------------------------------------------------
# registry client: Docker Registry HTTP API v2, what `invoke versions.check` asks

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
)
DOCKER_HUB = "registry-1.docker.io"
_USER_AGENT = "keybuzz-infra versions.check"


@dataclass(frozen=True)
class Reference:
    registry: str  # host[:port] contacted
    repository: str  # name inside that registry (Docker Hub: library/<name> for official images)
    tag: str
    digest: str | None = None


def parse_reference(ref: str) -> Reference:
    """Split an image reference the way Docker does (docker.io and its `library/` prefix are implied).

    >>> parse_reference("redis:7.2.5-alpine")
    Reference(registry='registry-1.docker.io', repository='library/redis', tag='7.2.5-alpine', digest=None)
    """
    name, _, digest = ref.partition("@")
    slash, colon = name.rfind("/"), name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, rest
    else:
        registry, repository = "docker.io", name
    if registry in ("docker.io", "index.docker.io"):
        registry = DOCKER_HUB
        if "/" not in repository:
            repository = f"library/{repository}"
    return Reference(registry, repository, tag, digest or None)


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """(scheme, parameters) of a WWW-Authenticate header.

    >>> parse_challenge('Bearer realm="https://ghcr.io/token",service="ghcr.io"')
    ('bearer', {'realm': 'https://ghcr.io/token', 'service': 'ghcr.io'})
    """
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'([A-Za-z_]+)="([^"]*)"', rest)}
    return scheme.lower(), params


@dataclass(frozen=True)
class Resolved:
    key: str
    image: str  # what the hosts pull (through the mirror when one is set)
    digest: str | None
    status: str  # "found" | "not found" | "unreachable"
    detail: str = ""

    def line(self) -> str:
        answer = self.digest if self.status == "found" else self.status
        return f"{self.key}  {self.image}  -> {answer}{f' ({self.detail})' if self.detail else ''}"


class _Answer(Exception):
    def __init__(self, status: str, detail: str = ""):
        self.status, self.detail = status, detail
        super().__init__(f"{status} {detail}")


def _request(method: str, url: str, headers: dict, timeout: float) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, method=method, headers={"User-Agent": _USER_AGENT, **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) URL built here
            return response.status, dict(response.headers.items()), response.read() if method == "GET" else b""
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers.items()) if e.headers else {}, b""
    except urllib.error.URLError as e:
        raise _Answer("unreachable", str(getattr(e, "reason", e))) from None
    except (OSError, ValueError) as e:  # timeouts, TLS, a malformed URL
        raise _Answer("unreachable", str(e) or type(e).__name__) from None


def _bearer(challenge: dict[str, str], repository: str, insecure: bool, timeout: float) -> str:
    realm = challenge.get("realm", "")
    scheme = urllib.parse.urlsplit(realm).scheme
    if scheme != "https" and not (scheme == "http" and insecure):
        raise _Answer("unreachable", f"token realm {realm!r} is not https")
    query = {"scope": challenge.get("scope") or f"repository:{repository}:pull"}
    if challenge.get("service"):
        query["service"] = challenge["service"]
    status, _, body = _request("GET", f"{realm}?{urllib.parse.urlencode(query)}", {}, timeout)
    if status != 200:
        raise _Answer("unreachable", f"anonymous token refused (HTTP {status})")
    try:
        answer = json.loads(body)
    except ValueError:
        raise _Answer("unreachable", "token answer is not JSON") from None
    granted = answer.get("token") or answer.get("access_token")
    if not granted:
        raise _Answer("unreachable", "token answer has no token")
    return granted


def manifest_digest(ref: Reference, insecure: Iterable[str] = (), timeout: float = 10.0) -> str:
    """The digest the registry serves for `ref` (HEAD, GET when the registry gives no Docker-Content-Digest).
    Raises _Answer("not found" | "unreachable", detail)."""
    insecure = ref.registry in set(insecure) or _is_loopback(ref.registry)
    url = f"{'http' if insecure else 'https'}://{ref.registry}/v2/{ref.repository}/manifests/{ref.digest or ref.tag}"
    headers = {"Accept": ", ".join(MANIFEST_TYPES)}
    status, answer_headers, _ = _request("HEAD", url, headers, timeout)
    if status == 401:
        scheme, challenge = parse_challenge(_header(answer_headers, "WWW-Authenticate"))
        if scheme != "bearer":
            raise _Answer("not found", "the registry wants credentials (not public)")
        headers["Authorization"] = f"Bearer {_bearer(challenge, ref.repository, insecure, timeout)}"
        status, answer_headers, _ = _request("HEAD", url, headers, timeout)
    if status == 405:  # a registry without HEAD on manifests
        status, answer_headers, body = _request("GET", url, headers, timeout)
    else:
        body = None
    if status == 200:
        digest = _header(answer_headers, "Docker-Content-Digest")
        if not re.fullmatch(DIGEST, digest or ""):
            if body is None:
                status, answer_headers, body = _request("GET", url, headers, timeout)
            digest = f"sha256:{hashlib.sha256(body or b'').hexdigest()}"
        if ref.digest and digest != ref.digest:
            raise _Answer("not found", f"the registry serves {digest} for this digest")
        return digest
    if status == 404:
        raise _Answer("not found")
    if status in (401, 403):
        raise _Answer("not found", "or not public")
    raise _Answer("unreachable", f"HTTP {status}")


def _header(headers: dict, name: str) -> str:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), "")


def _is_loopback(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def image_keys(versions: dict) -> list[str]:
    return [k for k in versions if k.endswith("_image")]


def check_images(versions: dict, keys: Iterable[str] | None = None, timeout: float = 10.0) -> list[Resolved]:
    """Ask the registry (or the mirror) for the manifest of every pinned image, as the hosts would pull it."""
    results = []
    for key in keys or image_keys(versions):
        pulled = image(versions, key)
        try:
            digest = manifest_digest(parse_reference(pulled), versions.get("insecure_registries") or (), timeout)
            results.append(Resolved(key, pulled, digest, "found"))
        except _Answer as answer:
            results.append(Resolved(key, pulled, None, answer.status, answer.detail))
    return results


def write_lock(path: str | os.PathLike, results: Iterable[Resolved], versions: dict) -> list[str]:
    """Write the digests found to the lock file at `path` (atomically, 0644); returns the keys locked.
    Entries are the pins of versions.yaml / the override (no mirror prefix) with `@<digest>`."""
    path = Path(path)
    found = [r for r in results if r.status == "found" and r.digest]
    lines = ["# Written by `invoke versions.check --lock`: the digest each image pin resolved to.",
             "# Deploys use it with KEYBUZZ_VERSIONS_LOCK=<this file>; re-run after changing a pin.",
             *(f'{r.key}: "{str(versions[r.key]).split("@", 1)[0]}@{r.digest}"' for r in found)]
    tmp = path.with_name(f".{path.name}.keybuzz-new")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return [r.key for r in found]
