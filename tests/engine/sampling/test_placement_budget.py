"""Issue 7's RAM test: two experts of N MB and a RAM budget of 1.3 N; the MoE run stays inside it.

The run happens in a fresh interpreter (tests/support/cache_testing.py rss) so the peak resident set size is the
run's own: the kernel's VmHWM after a reset (or 1 ms sampling). Experts are real safetensors files, so the
swap policy really drops the idle expert and re-reads it from its memory-mapped file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cache_testing import BIG, expert_bytes, write_experts

HERE = Path(__file__).resolve().parents[2] / "support"


def test_two_experts_run_in_a_ram_budget_of_1_3_experts(tmp_path):
    n = expert_bytes(BIG)
    assert n > 150 * 1024**2  # large enough that interpreter noise cannot hide a second expert
    write_experts(tmp_path, BIG)
    budget = int(1.3 * n)
    done = subprocess.run([sys.executable, str(HERE / "cache_testing.py"), "rss", str(tmp_path), str(budget)],
                          capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    grew = result["peak"] - result["baseline"]
    print(f"expert {n / 2**20:.0f} MiB, budget {budget / 2**20:.0f} MiB, peak RSS growth {grew / 2**20:.0f} MiB; "
          f"{result['plan']}")
    assert result["plan"].startswith("placement swap (idle expert: file)")
    assert result["reference_plan"] == "resident"
    assert result["loads"] == ["high.safetensors", "low.safetensors", "high.safetensors", "low.safetensors"]
    assert grew < budget, f"peak RSS grew {grew / 2**20:.0f} MiB, over the {budget / 2**20:.0f} MiB budget"
    assert result["equal"] and result["equal_again"] and result["finite"]  # bit for bit the unbudgeted output
