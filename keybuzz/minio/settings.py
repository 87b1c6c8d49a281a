"""Settings of the MinIO layer (design §B, §F). The deploy does not exist yet; what exists is the check of
its pin, run by keybuzz.inventory.preflight before any host is contacted.

MinIO tags its releases `RELEASE.YYYY-MM-DDTHH-MM-SSZ` (UTC time of the release, `-` instead of `:`), e.g.
`RELEASE.2024-10-02T17-50-41Z`. The design's `minio/minio:RELEASE.2024-10-02T10-00Z` lacks the seconds: no such
tag exists, so versions.yaml keeps the design's line and this preflight refuses it with the fix (an override
file named by KEYBUZZ_VERSIONS pinning the release of that day).

    >>> preflight({"minio_image": "minio/minio:RELEASE.2024-10-02T17-50-41Z"})
    >>> preflight({"minio_image": "minio/minio:RELEASE.2024-10-02T10-00Z"})
    Traceback (most recent call last):
    keybuzz.errors.PinRefused: minio_image: minio_image 'minio/minio:RELEASE.2024-10-02T10-00Z': ...
"""

from __future__ import annotations

import re
from datetime import datetime

from keybuzz.errors import PinRefused

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
