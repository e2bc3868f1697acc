"""Loading keeps one copy of the weights in RAM: peak RSS of a fresh process, measured around load_dit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wan_core.dit.model import DiTConfig
from wan_core.testing.tiny import dit as tiny

REPO = Path(__file__).resolve().parents[3]
# About 78M parameters: 313 MB in fp32, large enough that interpreter noise is small against it.
BIG = DiTConfig(dim=1024, ffn_dim=4096, num_heads=8, num_layers=4)

# Runs in a fresh interpreter. A warm-up load of the 13 MB tiny file first pages in the torch/safetensors code the
# load runs (about 100 MB of shared-library pages, which are no weight copy); then the baseline RSS, the load, and
# the kernel's RSS high-water mark of this address space (VmHWM, which no sampling can miss). The increment is
# compared with the loaded tensors' size. (ru_maxrss would not do: Linux carries the forking pytest's peak over exec.)
PROBE = """
import gc, json, re, sys
from wan_core.dit.loader import load_dit
def kib(field):
    return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
warm = load_dit(sys.argv[3], weight_dtype=sys.argv[2])
del warm
gc.collect()
base = kib("VmRSS")
model = load_dit(sys.argv[1], weight_dtype=sys.argv[2])
peak = kib("VmHWM")
tensors = list(model.parameters()) + list(model.buffers())
print(json.dumps({"base": base, "peak": peak, "bytes": sum(t.numel() * t.element_size() for t in tensors)}))
"""


@pytest.fixture(scope="module")
def big_files(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("big")
    sd = tiny.random_state_dict(BIG, seed=0)
    files = {"fp32": tiny.write_single_file(directory / "fp32.safetensors", sd, prefix="model.diffusion_model."),
             "fp16_folder": tiny.write_official_folder(directory / "fp16", {k: v.half() for k, v in sd.items()}, BIG, shards=3),
             "tiny": tiny.write_single_file(directory / "tiny.safetensors", tiny.random_state_dict(tiny.TINY_DIT_CONFIG))}
    del sd
    return files


@pytest.mark.parametrize("source,weight_dtype", [("fp32", "auto"), ("fp16_folder", "fp32"), ("fp16_folder", "fp8_e4m3fn")])
def test_peak_rss_of_a_load_is_one_copy_of_the_weights(big_files, source, weight_dtype):
    result = subprocess.run([sys.executable, "-c", PROBE, str(big_files[source]), weight_dtype, str(big_files["tiny"])], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    ratio = (figures["peak"] - figures["base"]) / figures["bytes"]
    print(f"{source} -> {weight_dtype}: {figures['bytes'] / 1e6:.0f} MB loaded, peak RSS increment "
          f"{(figures['peak'] - figures['base']) / 1e6:.0f} MB, ratio {ratio:.3f}")
    assert figures["bytes"] > 60e6
    assert ratio <= 1.15
