#!/usr/bin/env bash
# The local lab on a fresh Debian 12 machine, as root: `bash scripts/lab.sh up|down|status`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/invoke "lab.${1:-up}" "${@:2}"
