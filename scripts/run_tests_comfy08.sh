#!/usr/bin/env bash
# The ComfyUI- and browser-backed tests (tests/comfy, tests/browser) against ComfyUI 0.8.0 with the newest
# comfyui-frontend-package (--front-end-root), in the second environment scripts/setup_comfy08.sh builds (.comfy08/).
# Extra arguments go to pytest. Without the 0.8.0 snapshot (../shared/comfyui/comfyui-0.8.0.tar.xz, or
# $WANMOE_COMFYUI_SNAPSHOT) it says so and exits 0: PyPI only carries ComfyUI 0.3.75, which `make test` covers.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
rc=0
paths=$(bash scripts/setup_comfy08.sh) || rc=$?
if [ "$rc" -eq 3 ]; then
  echo "[run_tests_comfy08] no ComfyUI 0.8.0 snapshot: the 0.8.0 + newest-frontend tests did not run"
  exit 0
elif [ "$rc" -ne 0 ]; then
  exit "$rc"
fi
eval "$(echo "$paths" | grep -E '^COMFY08_[A-Z_]+=')"
export WANMOE_COMFYUI_DIR="$COMFY08_DIR" WANMOE_FRONTEND_ROOT="$COMFY08_FRONTEND_ROOT"
echo "[run_tests_comfy08] ComfyUI $WANMOE_COMFYUI_DIR, frontend $("$COMFY08_PYTHON" -c 'import importlib.metadata as m; print(m.version("comfyui-frontend-package"))') at $WANMOE_FRONTEND_ROOT"
set +e
"$COMFY08_PYTHON" -m pytest tests/comfy tests/browser --durations=10 "$@"
rc=$?
set -e
echo "[run_tests_comfy08] pytest exit $rc after $(( $(date +%s) - started )) s"
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
