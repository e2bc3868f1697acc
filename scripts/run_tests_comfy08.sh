#!/usr/bin/env bash
# The ComfyUI- and canvas-facing tests against ComfyUI 0.8.0 with comfyui-frontend-package 1.58.1
# (--front-end-root), in the second environment scripts/setup_comfy08.sh builds (.comfy08/): tests/browser and
# tests/comfy except the files whose subject is the engine behind a prompt rather than ComfyUI's API (the worker
# pool, memory refusals and RSS, cancel inside long calls, the LoRA cache's re-use, VACE and long-video runs: the
# same engine code either way; their ComfyUI surfaces - schema, validation, workflows, canvas, core models, core
# LoRA and VACE parity - stay in) and test_demo.py (no ComfyUI in it). This keeps all of .ci/run inside CI's time.
# The engine tests (tests/engine) do not touch ComfyUI and run once, in `make test`. Extra arguments go to pytest.
# Needs the 0.8.0 source snapshot (../shared/comfyui/comfyui-0.8.0.tar.xz beside the repository, or
# $WANMOE_COMFYUI_SNAPSHOT): without it this fails with a message, unless WANMOE_SKIP_COMFY08=1 says to skip.
set -euo pipefail
cd "$(dirname "$0")/.."
SUBSET=(tests/comfy tests/browser --ignore=tests/comfy/test_demo.py --ignore=tests/comfy/test_nodes_multi_gpu.py
        --ignore=tests/comfy/test_nodes_limits.py --ignore=tests/comfy/test_nodes_cancel_large.py
        --ignore=tests/comfy/test_lora_server.py --ignore=tests/comfy/test_vace_server.py
        --ignore=tests/comfy/test_nodes_longvideo.py)
started=$(date +%s)
if [ -n "${WANMOE_SKIP_COMFY08:-}" ]; then
  echo "[run_tests_comfy08] WANMOE_SKIP_COMFY08 is set: the ComfyUI 0.8.0 tests were skipped on purpose"
  exit 0
fi
rc=0
paths=$(bash scripts/setup_comfy08.sh) || rc=$?
if [ "$rc" -eq 3 ]; then
  echo "[run_tests_comfy08] FAILED: no ComfyUI 0.8.0 source snapshot, so the 0.8.0 + frontend 1.58.1 tests cannot run." >&2
  echo "  Expected ${WANMOE_COMFYUI_SNAPSHOT:-$(cd .. && pwd)/shared/comfyui/comfyui-0.8.0.tar.xz} (../shared/comfyui/ beside the" >&2
  echo "  repository, as in CI). Put the archive there, set WANMOE_COMFYUI_SNAPSHOT to it, or set WANMOE_SKIP_COMFY08=1" >&2
  echo "  to skip these tests on purpose (make test alone covers ComfyUI 0.3.75)." >&2
  exit 1
elif [ "$rc" -ne 0 ]; then
  exit "$rc"
fi
eval "$(echo "$paths" | grep -E '^COMFY08_[A-Z_]+=')"
export WANMOE_COMFYUI_DIR="$COMFY08_DIR" WANMOE_FRONTEND_ROOT="$COMFY08_FRONTEND_ROOT"
echo "[run_tests_comfy08] setup $(( $(date +%s) - started )) s; ComfyUI $WANMOE_COMFYUI_DIR, frontend $("$COMFY08_PYTHON" -c 'import importlib.metadata as m; print(m.version("comfyui-frontend-package"))') at $WANMOE_FRONTEND_ROOT"
set +e
"$COMFY08_PYTHON" -m pytest "${SUBSET[@]}" --durations=10 "$@"
rc=$?
set -e
echo "[run_tests_comfy08] pytest exit $rc after $(( $(date +%s) - started )) s (setup included)"
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
