#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine, as root: installs what it needs (scripts/bootstrap.sh),
# builds the lab images (cached by content), then runs ruff and pytest. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not lab"` or `bash scripts/test.sh tests/test_servers.py`.
#
# Without arguments (CI) pytest runs as two processes side by side: the lab's tests (`-m lab`: one lab, one
# test at a time, they mostly wait on deploys and failovers) and all the others (testbeds on their own Docker
# networks, pure tests). Nothing is shared between the halves but the images built above. The lab's half
# prints as it goes; the other half's output follows it (and is in $OTHER_LOG meanwhile). The exit code is
# the first half's that failed; 5 (nothing collected) when either collected nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
echo "==> ruff"
.venv/bin/ruff check .
echo "==> lab images (cached by content)"
.venv/bin/python -m keybuzz.lab.images
if [ "$#" -gt 0 ]; then
    echo "==> pytest"
    exec .venv/bin/pytest -v --durations=15 "$@"
fi

OTHER_LOG=${OTHER_LOG:-$(mktemp /tmp/keybuzz-tests-not-lab.XXXXXX.log)}
echo "==> pytest, two halves side by side: -m lab below; -m \"not lab\" in $OTHER_LOG, printed after"
start=$(date +%s)
# its own cache dir: two pytest processes never write the same .pytest_cache
.venv/bin/pytest -v --durations=15 -m "not lab" -o cache_dir=.pytest_cache/not-lab >"$OTHER_LOG" 2>&1 &
other=$!
# a CI stopped half-way stops both halves
trap 'kill "$other" 2>/dev/null || true' EXIT
set +e
.venv/bin/pytest -v --durations=15 -m lab
lab_rc=$?
echo "==> pytest -m lab: exit $lab_rc after $(( $(date +%s) - start )) s; waiting for -m \"not lab\""
wait "$other"
other_rc=$?
trap - EXIT
echo "==> pytest -m \"not lab\": exit $other_rc, its output:"
cat "$OTHER_LOG"
echo "==> pytest: -m lab exit $lab_rc, -m \"not lab\" exit $other_rc, $(( $(date +%s) - start )) s in all"
for rc in "$lab_rc" "$other_rc"; do [ "$rc" -eq 5 ] && exit 5; done
for rc in "$lab_rc" "$other_rc"; do [ "$rc" -ne 0 ] && exit "$rc"; done
exit 0
