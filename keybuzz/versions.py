"""versions.yaml: the single source of pinned versions (design §F), validated before any work.

Example:
    >>> v = load_versions(ROOT / "versions.yaml")   # without a path: overlaid by $KEYBUZZ_VERSIONS if set
    >>> v["redis_image"]
    'redis:7.2.5-alpine'
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from keybuzz import ROOT
from keybuzz.errors import InputError

# image reference: [registry[:port]/]name[/name...]:tag — tag mandatory, never `latest`
_IMAGE = re.compile(r"^(?:[a-z0-9.-]+(?::\d+)?/)?[a-z0-9._-]+(?:/[a-z0-9._-]+)*:([A-Za-z0-9_][A-Za-z0-9_.+-]{0,127})$")
_LIST_KEYS = {"insecure_registries"}
_MAY_BE_EMPTY = {"registry_mirror"}


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


def check_pin(path, line, key, value) -> None:
    """Refuse an empty value, `latest`, or an image without a tag.

    >>> check_pin("versions.yaml", 3, "redis_image", "redis")
    Traceback (most recent call last):
    keybuzz.errors.InputError: versions.yaml:3: redis_image 'redis' has no tag or is malformed; pin an exact ...
    """
    if key in _LIST_KEYS:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise InputError(path, line, f"{key} must be a list of host:port strings")
        return
    if value is None or (isinstance(value, str) and not value.strip()):
        if key in _MAY_BE_EMPTY:
            return
        raise InputError(path, line, f"{key} is empty; pin an exact version")
    if not isinstance(value, str):
        raise InputError(path, line, f"{key} must be a quoted string, e.g. \"1.2.3\"")
    if re.search(r"(^|[:=/\s])latest$", value, re.IGNORECASE):
        raise InputError(path, line, f"{key} uses 'latest' ({value}); design §F requires an exact version")
    if key.endswith("_image"):
        m = _IMAGE.match(value)
        if not m:
            raise InputError(path, line, f"{key} {value!r} has no tag or is malformed; "
                             "pin an exact version like name:1.2.3")


def load_versions(path: str | os.PathLike | None = None, override: str | os.PathLike | None = None) -> dict:
    """Load versions.yaml, overlay the override file ($KEYBUZZ_VERSIONS), validate every pin."""
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
    for k, v in data.items():
        check_pin(*where[k], k, v)
    return data


def pin_location(key: str, path: str | os.PathLike | None = None,
                 override: str | os.PathLike | None = None) -> tuple[Path, int]:
    """(file, line) that pins `key`: the override file ($KEYBUZZ_VERSIONS) when it sets it, else versions.yaml.

    >>> pin_location("redis_image", ROOT / "versions.yaml", override="")[1] > 0
    True
    """
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
