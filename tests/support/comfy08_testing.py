"""ComfyUI 0.8.0's source as a test reference: find the release tarball, unpack it, run its quantisation code.

The tarball is `shared/comfyui/comfyui-0.8.0.tar.xz` beside the checkout (CI lays shared/ next to the clone; a
git worktree finds it beside the main checkout); WANMOE_COMFYUI_080 may point at the tarball instead. Missing
means the test environment is broken, so tests fail rather than skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TARBALL = Path("comfyui") / "comfyui-0.8.0.tar.xz"
SCRIPT = Path(__file__).resolve().parent / "comfy08_quant.py"


def _git_common_root() -> Path | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out).parent if out else None


def find_tarball() -> Path:
    """The ComfyUI 0.8.0 release tarball; AssertionError naming the places looked at when it is nowhere."""
    candidates = [Path(os.environ["WANMOE_COMFYUI_080"])] if os.environ.get("WANMOE_COMFYUI_080") else []
    roots = [REPO_ROOT, REPO_ROOT.parent] + [p.parent for p in [_git_common_root()] if p is not None]
    candidates += [root / "shared" / TARBALL for root in roots] + [root.parent / "shared" / TARBALL for root in roots[2:]]
    for path in candidates:
        if path.is_file():
            return path
    raise AssertionError("ComfyUI 0.8.0's source tarball is needed as the quantisation reference; looked in "
                         + ", ".join(map(str, candidates)) + ". Set WANMOE_COMFYUI_080 to comfyui-0.8.0.tar.xz.")


def unpack(target: Path) -> Path:
    """Unpack the tarball under `target`; returns the folder holding comfy/ and comfyui_version.py."""
    with tarfile.open(find_tarball()) as tar:
        tar.extractall(target, filter="data")
    root = next(p.parent for p in target.rglob("comfyui_version.py"))
    assert json.loads(json.dumps((root / "comfyui_version.py").read_text().split('"')[1])) == "0.8.0"
    return root


def quantise(root: Path, src: Path, out_dir: Path, formats: list[str]) -> dict:
    """Run comfy08_quant.py in a fresh interpreter: ComfyUI writes out_dir/<fmt>.safetensors for each format and
    dequantises each into out_dir/<fmt>_dequant.safetensors."""
    result = subprocess.run([sys.executable, str(SCRIPT), str(root), str(src), str(out_dir), *formats],
                            capture_output=True, text=True, timeout=600, cwd=root,
                            env={**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, f"ComfyUI 0.8.0's quantisation failed:\n{result.stderr[-4000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])
