"""Small helpers shared by tests (no fixtures here: see conftest.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# The design's sections the tests compare the product with, kept verbatim in the repository (the design file
# itself lives outside it): tests/fixtures/design/section_<letter>.md. tests/test_design_fixtures.py checks that
# they still equal the design's text whenever the design file is there.
DESIGN_FIXTURES = ROOT / "tests" / "fixtures" / "design"
DESIGN_FILES = (ROOT.parent / "shared" / "spec" / "design-definitif.md", Path("/tmp/shared/spec/design-definitif.md"))


def design_file() -> Path | None:
    """The design document: $KEYBUZZ_DESIGN_FILE, else the first of DESIGN_FILES that exists, else None."""
    if os.environ.get("KEYBUZZ_DESIGN_FILE"):
        return Path(os.environ["KEYBUZZ_DESIGN_FILE"])
    return next((p for p in DESIGN_FILES if p.is_file()), None)


def design_section(text: str, letter: str) -> str:
    r"""Section `letter` of the design's Markdown: from its `## <letter>. ` heading to the `---` rule ending it.

    >>> design_section("# T\n## A. One\nx\n\n---\n## B. Two\ny\n---\n", "B")
    '## B. Two\ny\n'
    """
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"## {letter}. "))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].strip() == "---"), len(lines))
    return "\n".join(lines[start:end]).strip("\n") + "\n"


def design_text(letter: str) -> str:
    """The kept copy of the design's section `letter`."""
    return (DESIGN_FIXTURES / f"section_{letter}.md").read_text(encoding="utf-8")


def design_blocks(letter: str, lang: str) -> list[str]:
    """The fenced ```<lang> code blocks of the design's section `letter`, in order, each without its fence
    and without the indentation of its fence (a block inside a list item is indented).

    >>> design_blocks("D", "haproxy")[0].splitlines()[:2]
    ['backend be_rabbitmq', '    mode tcp']
    """
    blocks = []
    for m in re.finditer(rf"^([ \t]*)```{lang}\n(.*?)^[ \t]*```$", design_text(letter), re.MULTILINE | re.DOTALL):
        indent = m.group(1)
        blocks.append("".join(line.removeprefix(indent) for line in m.group(2).splitlines(keepends=True)))
    return blocks


# design §D: the HAProxy layer must render exactly this block from the production plan
DESIGN_D_BLOCK = design_blocks("D", "haproxy")[0]


def run(args, env=None, cwd=ROOT, timeout=300, input=None) -> subprocess.CompletedProcess:
    """Run a project command (venv binaries first on PATH); output captured as text."""
    full_env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", **(env or {})}
    return subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, input=input)


def tracked_files() -> list[Path]:
    """Files git tracks plus new files it does not ignore (so a check also covers uncommitted work)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [ROOT / p for p in out.splitlines() if (ROOT / p).is_file()]


def write_tsv(path: Path, rows) -> Path:
    """Write a servers.tsv with the standard header and `rows` (tuples of columns)."""
    lines = ["hostname\tprivate_ip\trole\tnote"] + ["\t".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def docker_time(iso: str) -> float:
    """Docker's StartedAt (RFC 3339, nanoseconds, Z) as epoch seconds.

    >>> docker_time("2026-11-26T15:56:52.827076165Z") - docker_time("2026-11-26T15:56:45.480899202Z")
    7.34...
    """
    from datetime import datetime

    stamp, _, frac = iso.rstrip("Z").partition(".")
    return datetime.fromisoformat(stamp + "+00:00").timestamp() + float("0." + (frac or "0"))


def roles_until_replica_of(client, master_ip: str, seconds: float, every: float = 0.05) -> list[str]:
    """Poll `ROLE` on a returning old master (a redis-py client without retries) every `every` s until it is a
    connected replica of `master_ip`, at most `seconds`; return every role it answered, in order.

    Before its first answer it is not accepting connections yet (errors are waited out); after it, every poll
    must answer (an error is raised): a node that answered once and then vanished is a finding, not noise.
    """
    import time

    roles: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            role = client.execute_command("ROLE")
        except Exception:  # noqa: BLE001 - redis.RedisError or OSError: not accepting connections yet
            if roles:
                raise
            time.sleep(every)
            continue
        roles.append(role[0])
        if role[0] == "slave" and role[1] == master_ip and role[3] == "connected":
            break
        time.sleep(every)
    return roles


def while_watching(watch, action):
    """Run `action()` while `watch(stop)` polls in a thread (it must return once the threading.Event `stop` is
    set, or by its own bound); returns (what action returned, what watch returned)."""
    import threading

    stop, seen = threading.Event(), []
    watcher = threading.Thread(target=lambda: seen.append(watch(stop)), daemon=True)
    watcher.start()
    try:
        result = action()
    finally:
        stop.set()
        watcher.join(timeout=30)
    assert seen, "the watcher did not return within 30 s of the end of the action"
    return result, seen[0]
