#!/usr/bin/env bash
# Runs the whole suite (extra arguments go to pytest); pytest's exit 5 ("no tests collected") counts as a failure.
# The slowest tests and the shared harnesses' costs (ComfyUI boot, Chromium launch) are printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
set +e
.venv/bin/python -m pytest tests --durations=15 "$@"
rc=$?
set -e
echo "[run_tests] pytest exit $rc after $(( $(date +%s) - started )) s"
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
