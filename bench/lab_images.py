"""Benchmark (not a test): how long `build_all` takes when every lab image is already built (the cache check
alone: hashing each image's build context and asking Docker for its tag). tests/test_lab_images.py checks that
nothing is rebuilt; the figure lives here (it used to be a `< 20 s` assert there, a target on a shared machine).

    .venv/bin/python bench/lab_images.py --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from keybuzz.lab import images  # noqa: E402

TARGET_S = 20  # the figure the test used to assert


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, choices=range(1, 21), metavar="1-20")
    args = parser.parse_args()
    built = images.build_all(progress=print)  # the first call may build: not measured
    seconds = []
    for _ in range(args.runs):
        lines: list[str] = []
        start = time.monotonic()
        again = images.build_all(progress=lines.append)
        seconds.append(time.monotonic() - start)
        rebuilt = [line for line in lines if line.startswith("building")]
        if again != built or rebuilt:
            print(f"a cached build_all built again: {rebuilt}", file=sys.stderr)
            return 1
    print(f"cached build_all of {len(built)} images, {args.runs} runs: median {statistics.median(seconds):.1f} s, "
          f"max {max(seconds):.1f} s (target {TARGET_S} s: {'met' if max(seconds) < TARGET_S else 'NOT met'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
