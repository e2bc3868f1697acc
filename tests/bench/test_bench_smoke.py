"""bench/reference_cpu.py: the --tiny run prints one row per component with finite ratios (no timing assertions)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ("DiT forward", "VAE decode", "umT5 encoder", "MoE sampler")


def test_tiny_reference_benchmark_prints_a_row_per_component():
    done = subprocess.run([sys.executable, "-m", "bench.reference_cpu", "--tiny"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=900)  # a hang guard, not a timing: a loaded 2-core machine took 300 s
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {}
    for line in done.stdout.splitlines():
        for component in COMPONENTS:
            if line.startswith(component):
                rows.setdefault(component, []).append(line)
    assert set(rows) == set(COMPONENTS), done.stdout
    for line in sum(rows.values(), []):
        # ... <ours> s <ref> s <time ratio> <ours> MiB <ref> MiB <memory ratio> <max|diff|>
        fields = line.split()
        time_ratio, memory_ratio, diff = float(fields[-7]), float(fields[-2]), float(fields[-1])
        assert fields[-8] == "s" and fields[-3] == "MiB", line
        assert all(math.isfinite(v) for v in (time_ratio, memory_ratio, diff)), line
        assert time_ratio > 0 and diff < 1e-3, line
