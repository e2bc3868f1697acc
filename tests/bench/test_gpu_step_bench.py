"""bench/gpu_step.py: skips cleanly without CUDA; its code path runs on the CPU with a tiny expert."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the benchmark would run")
def test_gpu_step_skips_without_cuda():
    done = subprocess.run([sys.executable, "-m", "bench", "gpu_step"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["== gpu_step", "no CUDA device: skipped"]


def test_gpu_step_code_path_on_cpu(capsys):
    sys.path.insert(0, str(REPO_ROOT))
    from bench import gpu_step

    # sdpa only and no fp8 matmul rows' cost concerns: the CPU's _scaled_mm is an emulation (seconds per tiny call)
    assert gpu_step.main(["--device", "cpu", "--tiny", "--repeats", "1", "--attention", "sdpa"]) == 0
    lines = capsys.readouterr().out.splitlines()
    labels = ["ours bf16 sdpa", "ours fp8 sdpa", "ours fp8 fp8-matmul sdpa", "diffusers WanTransformer3DModel bf16"]
    rows = [line for line in lines if "s/step" in line]
    assert [next(label for label in labels if f" {label} " in line) for line in rows] == labels
    assert all("TFLOP/s" in line and "-> 40 steps + decode" in line for line in rows)
    assert lines[-1].startswith("tiny VAE decode 1 latent frames")
