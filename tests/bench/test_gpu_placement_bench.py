"""bench/gpu_placement.py: skips cleanly without CUDA; its code path runs on the CPU with a tiny expert."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the benchmark would run")
def test_python_m_bench_skips_without_cuda():
    done = subprocess.run([sys.executable, "-m", "bench", "gpu_placement"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["== gpu_placement", "no CUDA device: skipped"]


def test_benchmark_code_path_on_cpu(capsys):
    sys.path.insert(0, str(REPO_ROOT))
    from bench import gpu_placement

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert gpu_placement.main(["--device", "cpu", "--tiny", "--blocks", "2", "--steps", "1",
                                   "--resolutions", "tiny"]) == 0
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("placement benchmark on CPU: tiny expert, 2 blocks")
    for line, placement in zip(lines[1:], ("resident", "swap", "stream")):
        assert f"{placement}  2 blocks: " in line and "s/step" in line and "peak RAM" in line, line
