#!/usr/bin/env bash
# The second test environment (idempotent): ComfyUI 0.8.0 from the local source snapshot, in its own virtualenv
# with 0.8.0's requirements (comfy-kitchen ...), comfyui-frontend-package 1.58.1 from PyPI (ComfyUI is started
# with --front-end-root pointing at its static folder) and the pack's runtime + test dependencies.
# Everything lives in .comfy08/ (venv/, comfyui/). Prints the folder's paths as shell assignments on the last lines
# (COMFY08_PYTHON=..., COMFY08_DIR=..., COMFY08_FRONTEND_ROOT=...) for scripts/run_tests_comfy08.sh.
# Exit 3 (and nothing built) when the snapshot is absent: PyPI only carries ComfyUI 0.3.75.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SNAPSHOT=${WANMOE_COMFYUI_SNAPSHOT:-$ROOT/../shared/comfyui/comfyui-0.8.0.tar.xz}
ENV_DIR="$ROOT/.comfy08"
VENV="$ENV_DIR/venv"
COMFY_DIR="$ENV_DIR/comfyui"
# The tested frontend (the newest on PyPI when written); WANMOE_FRONTEND_SPEC=comfyui-frontend-package tries the newest.
FRONTEND=${WANMOE_FRONTEND_SPEC:-comfyui-frontend-package==1.58.1}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

log() { printf '[setup-comfy08 %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
pip_q() { "$VENV/bin/pip" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
report() {
  local static
  static=$("$VENV/bin/python" -c 'import comfyui_frontend_package as f, pathlib; print(pathlib.Path(f.__file__).parent / "static")')
  echo "COMFY08_PYTHON=$VENV/bin/python"
  echo "COMFY08_DIR=$COMFY_DIR"
  echo "COMFY08_FRONTEND_ROOT=$static"
}

if [ ! -f "$SNAPSHOT" ]; then
  log "no ComfyUI 0.8.0 source snapshot at $SNAPSHOT (CI keeps it in ../shared/comfyui/ beside the repository; or set WANMOE_COMFYUI_SNAPSHOT): nothing set up"
  exit 3
fi

snapshot_id=$(stat -c '%s-%Y' "$SNAPSHOT")
stamp_inputs=$( (cat requirements.txt pyproject.toml scripts/setup_comfy08.sh; echo "$snapshot_id $FRONTEND") | sha1sum | cut -c1-12)
STAMP="$ENV_DIR/.setup-$stamp_inputs"
if [ -f "$STAMP" ] && [ -f "$COMFY_DIR/main.py" ] && [ -x "$VENV/bin/python" ]; then
  log "environment up to date ($ENV_DIR)"
  report
  exit 0
fi

mkdir -p "$ENV_DIR"
if [ ! -f "$COMFY_DIR/main.py" ] || [ "$(cat "$COMFY_DIR/.snapshot" 2>/dev/null)" != "$snapshot_id" ]; then
  log "unpacking ComfyUI 0.8.0 from $SNAPSHOT"
  rm -rf "$COMFY_DIR" "$ENV_DIR/unpack"
  mkdir -p "$ENV_DIR/unpack"
  tar -xJf "$SNAPSHOT" -C "$ENV_DIR/unpack"
  mv "$ENV_DIR/unpack/comfy" "$COMFY_DIR"  # the archive's top folder is comfy/
  rm -rf "$ENV_DIR/unpack"
  echo "$snapshot_id" > "$COMFY_DIR/.snapshot"
fi
grep -q '^__version__ = "0.8.0"' "$COMFY_DIR/comfyui_version.py" \
  || { log "$COMFY_DIR/comfyui_version.py does not say 0.8.0"; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
  pip_q install -q --upgrade pip
fi

# The same torch as the main environment (local wheels on these machines); ComfyUI needs torchvision.
log "installing torch/torchvision"
pip_q install -q "torch==2.14.1" "torchvision==0.29.1"

log "installing ComfyUI 0.8.0's requirements (its frontend pin and torchaudio left out)"
grep -vE '^(torch|torchvision|torchaudio)[[:space:]]*$|^comfyui-frontend-package' "$COMFY_DIR/requirements.txt" \
  > "$ENV_DIR/comfy-requirements.txt"
pip_q install -q -r "$ENV_DIR/comfy-requirements.txt" requests

log "installing the pack's runtime + test dependencies and $FRONTEND"
test_extra=$("$VENV/bin/python" - <<'PY'
import tomllib
print("\n".join(r for r in tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["test"]
                if not r.startswith("comfyui-frontend-package")))
PY
)
# shellcheck disable=SC2086
pip_q install -q -r requirements.txt $(echo "$test_extra" | sed "s/.*/'&'/" | xargs)
pip_q install -q --upgrade "$FRONTEND"
if pip_q show -q opencv-python-headless >/dev/null 2>&1; then
  pip_q uninstall -y -q opencv-python-headless
  pip_q install -q --force-reinstall --no-deps opencv-python
fi

rm -f "$ENV_DIR"/.setup-*
touch "$STAMP"
log "done: $("$VENV/bin/python" -c 'import torch, importlib.metadata as m; print("torch", torch.__version__, "frontend", m.version("comfyui-frontend-package"))')"
report
