"""bench/speed_cpu.py: the --tiny run prints every row with finite ratios and the load average (no timing assertions)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_tiny_speed_benchmark_prints_every_row():
    done = subprocess.run([sys.executable, "-m", "bench.speed_cpu", "--tiny"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=900)  # a hang guard, not a timing
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("speed benchmark on CPU") and "load average" in lines[0]
    assert lines[-1].startswith("end: load average")
    rows = [line for line in lines if line.split()[:2] in (["DiT", "forward"], ["MoE", "sampling"], ["VAE", "decode"])]
    # A14B width, one 1536-wide count; uncached + cached; untiled, untiled at 4x the area, tiled
    assert len(rows) == 2 + 2 + 3, done.stdout
    for line in rows:
        fields = line.split()
        time_ratio, diff = float(fields[-7]), float(fields[-1])
        assert fields[-8] == "s" and fields[-3] == "MiB", line
        assert math.isfinite(time_ratio) and time_ratio > 0 and math.isfinite(diff), line
    cached_vs_ours = next(line for line in lines if line.startswith("  vs ours"))
    assert float(cached_vs_ours.split()[-1]) < 0.05  # the cached latent stays near the uncached one
