"""The engine's size rules are enforced: no function over 80 lines and no class over 300 lines in wan_core/.

Lines are counted as the source spans them (decorators excluded, docstrings and blank lines included), the way a
reader scrolls them.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_FUNCTION, MAX_CLASS = 80, 300


def oversized(root: Path) -> list[str]:
    """'path:line kind name is N lines' for every function or class in `root` over its limit."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            span = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and span > MAX_FUNCTION:
                found.append(f"{path.relative_to(root.parent)}:{node.lineno} function {node.name} is {span} lines")
            elif isinstance(node, ast.ClassDef) and span > MAX_CLASS:
                found.append(f"{path.relative_to(root.parent)}:{node.lineno} class {node.name} is {span} lines")
    return found


def test_no_engine_function_over_80_lines_or_class_over_300():
    found = oversized(REPO_ROOT / "wan_core")
    assert found == [], "split these (rule: functions <= 80 lines, classes <= 300):\n" + "\n".join(found)


def test_the_size_check_counts_what_it_forbids(tmp_path):
    root = tmp_path / "wan_core"
    root.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(79))
    (root / "a.py").write_text(f"def fits():\n{body}\n\n\ndef too_long():\n{body}\n    x = 0\n"
                               "class Big:\n" + "\n".join(f"    y{i} = {i}" for i in range(300)) + "\n")
    assert oversized(root) == ["wan_core/a.py:83 function too_long is 81 lines",
                               "wan_core/a.py:164 class Big is 301 lines"]
