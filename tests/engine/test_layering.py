"""The engine's import rules are enforced, not only written: docs/architecture.md's layer order and nodes/ holding no math.

Layers: each wan_core component (a subpackage or a top-level module) may import only components on lower lines of
the `layers` block in docs/architecture.md; components on one line are siblings and do not import each other.
Nodes: nodes/ imports only wan_core.api and wan_core.config, and calls no torch function but dtype/device names.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURE = REPO_ROOT / "docs" / "architecture.md"
# torch attributes a node may name: types and device/dtype handling, never computation.
ALLOWED_TORCH = {"device", "dtype", "Tensor", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2",
                 "int64", "uint8", "no_grad", "inference_mode", "Generator"}
NODE_IMPORTS = {"wan_core.api", "wan_core.config"}
MATH_METHODS = {"sum", "mean", "max", "min", "any", "all", "unbind", "permute", "reshape", "view", "clamp", "matmul",
                "mul", "mul_", "add_", "div", "div_", "sub", "softmax", "einsum"}


def layers(text: str) -> list[list[str]]:
    """The component lines of the first ```layers block (bottom first)."""
    match = re.search(r"```layers\n(.*?)```", text, re.S)
    if match is None:
        raise AssertionError(f"{ARCHITECTURE} has no ```layers block")
    rows = [line.split("#")[0].split() for line in match.group(1).splitlines()]
    return [row for row in reversed([r for r in rows if r])]  # the block lists the top first


def component(module: str) -> str | None:
    """'wan_core.dit.loader' -> 'dit'; names outside wan_core -> None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "wan_core" and len(parts) > 1 else None


def imported_modules(path: Path, package_root: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in a file, relative imports resolved against its package."""
    rel = path.relative_to(package_root.parent).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            if node.module is None:  # from . import x: each name may be a module of its own
                found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, module))
    return found


def _file_line(problem: str) -> tuple[str, int]:
    where = problem.split(" ")[0].rstrip(":").split(":")
    return where[0], int(where[1]) if len(where) > 1 else 0


def layer_violations(package_root: Path, order: list[list[str]]) -> list[str]:
    """`file:line imports X` for imports that reach a sibling or a higher layer, or name an unlisted component."""
    level = {name: i for i, row in enumerate(order) for name in row}
    problems = []
    for path in sorted(package_root.rglob("*.py")):
        rel = path.relative_to(package_root)
        own = rel.parts[0].removesuffix(".py") if rel.parts[0] != "__init__.py" else None
        if own is None:
            continue
        if own not in level:
            problems.append(f"{rel}: component '{own}' is not in the layers block of docs/architecture.md")
            continue
        for line, module in imported_modules(path, package_root):
            target = component(module)
            if target is None or target == own:
                continue
            if target not in level:
                problems.append(f"{rel}:{line} imports unlisted component '{target}'")
            elif level[target] >= level[own]:
                how = "a sibling" if level[target] == level[own] else "a higher layer"
                problems.append(f"{rel}:{line} imports {module} ({how}: '{target}' vs '{own}')")
    return sorted(problems, key=_file_line)


def node_violations(nodes_root: Path) -> list[str]:
    """`file:line ...` for tensor calls and engine imports other than the front door in nodes/."""
    problems = []
    for path in sorted(nodes_root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                chain, func = [], node.func
                while isinstance(func, ast.Attribute):
                    chain.append(func.attr)
                    func = func.value
                named = ".".join([func.id, *reversed(chain)]) if isinstance(func, ast.Name) else None
                if named and func.id in ("torch", "F", "np") and not (func.id == "torch" and chain == [chain[0]]
                                                                      and chain[0] in ALLOWED_TORCH):
                    problems.append(f"{path.name}:{node.lineno} calls {named}")
                elif isinstance(node.func, ast.Attribute) and node.func.attr in MATH_METHODS:
                    problems.append(f"{path.name}:{node.lineno} calls .{node.func.attr}() (tensor math)")
            elif isinstance(node, ast.ImportFrom) and node.level and (node.module or "").startswith("wan_core"):
                names = {node.module} if node.module != "wan_core" else {f"wan_core.{a.name}" for a in node.names}
                if not names <= NODE_IMPORTS:
                    problems.append(f"{path.name}:{node.lineno} imports {node.module} (nodes use wan_core.api and config)")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in ("numpy", "einops", "kornia", "cv2"):
                        problems.append(f"{path.name}:{node.lineno} imports {alias.name} (math belongs in wan_core)")
    return sorted(problems, key=_file_line)


def test_the_layers_block_names_every_component_once():
    order = layers(ARCHITECTURE.read_text())
    names = [name for row in order for name in row]
    assert len(names) == len(set(names)), f"a component is listed twice: {names}"
    components = {p.name.removesuffix(".py") for p in (REPO_ROOT / "wan_core").iterdir()
                  if p.name != "__init__.py" and p.name != "__pycache__" and (p.suffix == ".py" or p.is_dir())}
    assert components == set(names), f"wan_core has {sorted(components)}, the layers block {sorted(names)}"


def test_wan_core_imports_follow_the_layer_order():
    problems = layer_violations(REPO_ROOT / "wan_core", layers(ARCHITECTURE.read_text()))
    assert problems == [], "imports against docs/architecture.md's order:\n" + "\n".join(problems)


def test_nodes_hold_no_tensor_math_and_use_the_front_door():
    problems = node_violations(REPO_ROOT / "nodes")
    assert problems == [], "nodes/ must pass ComfyUI objects to wan_core.api:\n" + "\n".join(problems)


def test_the_checks_catch_what_they_forbid(tmp_path):
    root = tmp_path / "wan_core"
    for sub in ("low", "mid", "side", "high"):
        (root / sub).mkdir(parents=True)
        (root / sub / "__init__.py").write_text("")
    (root / "low" / "a.py").write_text("from ..mid import x\n")  # upward
    (root / "mid" / "b.py").write_text("from ..side.c import y\nfrom ..low import a\n")  # sibling, then fine
    (root / "high" / "d.py").write_text("from wan_core.mid.b import z\nimport wan_core.low.a\n")  # fine
    (root / "stray.py").write_text("")
    order = [["low"], ["mid", "side"], ["high"]]
    assert layer_violations(root, order) == [
        "low/a.py:1 imports wan_core.mid (a higher layer: 'mid' vs 'low')",
        "mid/b.py:1 imports wan_core.side.c (a sibling: 'side' vs 'mid')",
        "stray.py: component 'stray' is not in the layers block of docs/architecture.md",
    ]
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    (nodes / "n.py").write_text("import torch\nfrom ..wan_core.vae import model\nfrom ..wan_core import api\n"
                                "x = torch.zeros(3)\ny = torch.device('cpu')\nz = torch.Tensor.add(x, x)\n"
                                "w = x.sum(dim=0)\n")
    assert node_violations(nodes) == ["n.py:2 imports wan_core.vae (nodes use wan_core.api and config)",
                                      "n.py:4 calls torch.zeros", "n.py:6 calls torch.Tensor.add",
                                      "n.py:7 calls .sum() (tensor math)"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
