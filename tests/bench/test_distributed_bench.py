"""bench/distributed.py --tiny on 2 gloo ranks: a row per call batch, with its layout, finite speed-up and the same output."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^ 480p +16 tok (cfg>1 \(batch 2\)|cfg 1 \(batch 1\)): 1 rank ([\d.]+) s, 2 ranks ([\d.]+) s "
                 r"\((\d) CFG x (\d) Ulysses\), speed-up ([\d.]+)x; .* per rank \S+ [MG]iB \S+ [MG]iB; max\|diff\| (\S+)$")


def test_tiny_distributed_benchmark_prints_both_layouts():
    done = subprocess.run([sys.executable, "-m", "bench.distributed", "--tiny", "--ranks", "2", "--device", "cpu",
                           "--repeats", "1"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    rows = [m.groups() for m in map(ROW.match, done.stdout.splitlines()) if m]
    assert [(r[0], r[3], r[4]) for r in rows] == [("cfg>1 (batch 2)", "2", "1"), ("cfg 1 (batch 1)", "1", "2")], done.stdout
    for _, one, many, _, _, speedup, diff in rows:
        assert float(one) > 0 and float(many) > 0 and math.isfinite(float(speedup))
        assert float(diff) < 1e-5  # the same expert, split: fp32 summation order only
