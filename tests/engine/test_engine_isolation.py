"""wan_core is an engine usable without ComfyUI: it imports and runs with ComfyUI's modules absent and blocked."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
WAN_CORE = REPO_ROOT / "wan_core"
# ComfyUI's top-level modules a custom node might reach for; none may be imported by the engine.
FORBIDDEN = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "comfy_api_nodes", "comfy_config",
             "folder_paths", "server", "nodes", "execution", "latent_preview", "node_helpers", "comfyui_version"}

# Runs in a fresh interpreter: blocks ComfyUI's modules, imports every wan_core module, reports what happened.
_PROBE = r"""
import importlib, importlib.abc, json, pkgutil, sys
forbidden = set(json.loads(sys.argv[1]))
attempts = []

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in forbidden:
            attempts.append(name)
            raise ImportError(f"{name} is ComfyUI's; wan_core must not import it")
        return None

sys.meta_path.insert(0, Block())
import wan_core
imported, failed = [], {}
for info in pkgutil.walk_packages(wan_core.__path__, "wan_core."):
    try:
        importlib.import_module(info.name)
        imported.append(info.name)
    except Exception as err:
        failed[info.name] = f"{type(err).__name__}: {err}"
loaded = sorted(m for m in sys.modules if m.split(".")[0] in forbidden)
print(json.dumps({"imported": imported, "failed": failed, "attempts": attempts, "loaded": loaded}))
"""


def run_probe() -> dict:
    """Import all of wan_core in a subprocess that has only the repo root on its path."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(sorted(FORBIDDEN))],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, f"importing wan_core failed:\n{result.stderr[-4000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_every_wan_core_module_imports_without_comfyui():
    report = run_probe()
    assert report["failed"] == {}, f"wan_core modules that fail to import without ComfyUI: {report['failed']}"
    assert report["attempts"] == [], f"wan_core tried to import ComfyUI modules: {report['attempts']}"
    assert report["loaded"] == []
    expected = {".".join(("wan_core", *p.relative_to(WAN_CORE).with_suffix("").parts)).removesuffix(".__init__")
                for p in WAN_CORE.rglob("*.py") if p.parent != WAN_CORE or p.stem != "__init__"}
    assert expected <= set(report["imported"]), f"not imported: {sorted(expected - set(report['imported']))}"


def forbidden_imports(path: Path) -> list[str]:
    """`file:line module` for each import in `path` that names a ComfyUI module or leaves the wan_core package."""
    depth = len(path.relative_to(WAN_CORE).parts) - 1  # how many package levels below wan_core the file sits
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        elif isinstance(node, ast.ImportFrom):
            names = [f"{'.' * node.level}{node.module or ''}"] if node.level > depth + 1 else []
        else:
            continue
        for name in names:
            if name.startswith(".") or name.split(".")[0] in FORBIDDEN:
                found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {name}")
    return found


def test_wan_core_source_names_no_comfyui_module():
    sources = sorted(WAN_CORE.rglob("*.py"))
    assert sources, f"no Python files under {WAN_CORE}"
    offenders = [hit for path in sources for hit in forbidden_imports(path)]
    assert offenders == [], "wan_core must not import ComfyUI or the nodes package:\n" + "\n".join(offenders)


def test_static_scan_catches_a_comfy_import(tmp_path, monkeypatch):
    fake_root = tmp_path / "wan_core"
    (fake_root / "sub").mkdir(parents=True)
    bad = fake_root / "sub" / "bad.py"
    bad.write_text("import torch\nfrom comfy import model_management\nfrom ...nodes import x\nfrom ..checkpoint import y\n")
    monkeypatch.setattr(sys.modules[__name__], "WAN_CORE", fake_root)
    monkeypatch.setattr(sys.modules[__name__], "REPO_ROOT", tmp_path)
    assert forbidden_imports(bad) == ["wan_core/sub/bad.py:2 comfy", "wan_core/sub/bad.py:3 ...nodes"]
