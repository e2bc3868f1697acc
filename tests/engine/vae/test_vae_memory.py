"""Wan2.1 VAE decode memory, measured in a fresh process: independent of the clip length, bounded by the tile.

What is measured: the kernel's RSS high-water mark (VmHWM, reset through /proc/self/clear_refs after a warm-up
decode) minus the RSS before the decode minus the decoded output's own bytes, i.e. the decode's working memory.
The probe runs with a fixed glibc mmap threshold (MALLOC_MMAP_THRESHOLD_=1 MiB) so freed tensors go back to the
kernel and the figure is the tensors actually live; with glibc's default adaptive threshold heap fragmentation
adds +-20% noise between runs that has nothing to do with the number of frames.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

PROBE = """
import gc, json, re, sys, torch
torch.set_num_threads(1)
from wan_core.testing.tiny import vae as tiny
from wan_core.vae.model import WanVAE
def kib(field):
    return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
frames, size, tile = (int(a) for a in sys.argv[1:4])
model = WanVAE(dim=tiny.TINY_VAE_DIM)
model.load_state_dict(tiny.random_state_dict(seed=0))
latent = torch.randn(1, 16, frames, size, size, generator=torch.Generator().manual_seed(0))
model.decode(torch.randn(1, 16, 2, 4, 4))  # warm-up: page in the kernels' code
gc.collect()
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
base = kib("VmRSS")
video = model.decode(latent, tiling="on" if tile else "off", tile_size=tile or None, tile_overlap=tile // 4 or None)
print(json.dumps({"working": kib("VmHWM") - base - video.nbytes, "output": video.nbytes,
                  "estimate": model.estimate_peak_bytes(tile or size, tile or size)}))
"""


def _working(frames: int, size: int, tile: int = 0) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", PROBE, str(frames), str(size), str(tile)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")


def test_peak_does_not_grow_with_the_number_of_frames():
    # 32x32 latent px: the working set (~60 MiB since the streamed convs keep no windows, 2-8 frames within 1.02-1.04x
    # in three runs) leaves allocator noise (a few MiB, independent of the frame count) under the 10% margin.
    short, long = _working(2, 32), _working(8, 32)
    print(f"2 latent frames: {short['working'] / 2**20:.1f} MiB working; 8: {long['working'] / 2**20:.1f} MiB "
          f"(outputs {short['output'] / 2**20:.1f} / {long['output'] / 2**20:.1f} MiB); "
          f"estimate {short['estimate'] / 2**20:.1f} MiB")
    assert long["working"] <= 1.10 * short["working"]


def test_tiled_peak_is_bounded_by_the_tile():
    one_tile, tiled = _working(2, 16), _working(2, 32, tile=16)
    print(f"16x16 latent untiled: {one_tile['working'] / 2**20:.1f} MiB; 32x32 in 16-px tiles: "
          f"{tiled['working'] / 2**20:.1f} MiB")
    assert tiled["working"] <= 1.5 * one_tile["working"]
