"""bench/vace_overhead.py: the --tiny run prints our row and ComfyUI's with finite times (no timing assertions)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^(ours|ComfyUI native)\s+([\d.]+) s\s+([\d.]+) s\s+([+-][\d.]+)%$")


def test_tiny_vace_benchmark_prints_both_rows_and_agrees_with_comfyui():
    done = subprocess.run([sys.executable, "-m", "bench.vace_overhead", "--tiny"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {m.group(1): [float(v) for v in m.groups()[1:]] for line in done.stdout.splitlines()
            if (m := ROW.match(line.strip()))}
    assert set(rows) == {"ours", "ComfyUI native"}, done.stdout
    assert all(v > 0 and math.isfinite(v) for name in rows for v in rows[name][:2]), done.stdout
    diff = float(re.search(r"max\|diff\| ([\d.e+-]+)", done.stdout).group(1))
    assert diff < 1e-4, done.stdout  # the same VACE forward: fp32 round-off only (tests/comfy/test_vace_parity.py)
