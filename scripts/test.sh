#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine, as root: installs what it needs (scripts/bootstrap.sh),
# builds the lab images (cached by content), then runs ruff and pytest. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not lab"` or `bash scripts/test.sh tests/test_servers.py`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
echo "==> ruff"
.venv/bin/ruff check .
echo "==> lab images (cached by content)"
.venv/bin/python -m keybuzz.lab.images
echo "==> pytest"
exec .venv/bin/pytest -v --durations=15 "$@"
