#!/usr/bin/env bash
# Runs the whole suite; pytest's exit 5 ("no tests collected") counts as a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
set +e
.venv/bin/python -m pytest tests "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
