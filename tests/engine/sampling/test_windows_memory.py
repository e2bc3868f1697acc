"""Context windows keep a step's memory to the window: at 4x the frames, peak RSS grows by the solver's latents only.

Measured in fresh processes (as tests/engine/vae/test_vae_memory.py): the kernel's RSS high-water mark (VmHWM, reset
through /proc/self/clear_refs after a warm-up run of the same size) minus the RSS before the run, the least of two
runs, with a fixed glibc mmap threshold (64 KiB) so freed tensors go back to the kernel and the figure is what is live.
Tiny DiT (64 wide, so a window's activations are small beside the latent and the figure is not lost in their
jitter), 32x32 latent (256 tokens a frame), 3 steps (UniPC reaches its order-2 history), windows of 5 latent frames
(17 px) sharing at least 1 (4 px); 10 latent frames (3 windows) vs 40 (4x, 10 windows).

What still grows with the video is the solver's whole-latent state, nothing else: the windows' velocities are blended
window by window and each frame range is stepped in place as soon as no later window reads it (windows.stream), so
no velocity, x0 estimate or new x of the whole latent exists. Euler keeps x alone: the run grows by at most the
latent's size (measured 0.747-0.752 of the 40-frame latent, i.e. its 30 frames more). A multistep solver cannot
step a frame without its history: DPM++ 2M keeps x and the last x0 estimate (measured 1.475-1.478 latents), UniPC
x, the predictor's start and two x0 estimates (measured 2.94-2.99). An unwindowed run would instead grow by its
activations (the engine's estimate, printed), which the bounds exclude.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
# whole-latent tensors each solver keeps across steps, x included
LATENT_BUFFERS = {"euler": 1, "dpm++": 2, "unipc": 4}
FRAMES = (10, 40)
SLACK = 0.1  # of the 40-frame latent: the windows' shared frames (1-2 frames here) and page rounding
REPEATS = 2  # runs per process, the least counts: a run can page in a little more than it needs

PROBE = """
import gc, json, re, sys, torch
torch.set_num_threads(1)
from wan_core.dit.model import DiTConfig, WanDiT
from wan_core.requests import ContextWindows
from wan_core.sampling.experts import ResidentExperts
from wan_core.sampling.sampler import sample_moe
def kib(field):
    return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
frames, solver = int(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
cfg = DiTConfig(dim=64, ffn_dim=128, num_heads=1, num_layers=2, text_dim=64, text_len=32)
experts = ResidentExperts(WanDiT(cfg).eval(), WanDiT(cfg).eval())
g = torch.Generator().manual_seed(3)
pos, neg = torch.randn(7, 64, generator=g), torch.randn(5, 64, generator=g)
run = dict(steps=3, shift=5.0, seed=1, cfg_batch="off", windows=ContextWindows(17, 4), solver=solver)
sample_moe(experts, [pos], [neg], shape=(1, 16, frames, 32, 32), **run)  # warm-up: kernels and allocator pools in place
working = []
for _ in range(int(sys.argv[3])):
    gc.collect()
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM := current RSS
    base = kib("VmRSS")
    out = sample_moe(experts, [pos], [neg], shape=(1, 16, frames, 32, 32), **run)
    working.append(kib("VmHWM") - base)
    del out
print(json.dumps({"working": sorted(working), "latent": 16 * frames * 32 * 32 * 4}))
"""

def _measure(frames: int, solver: str) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 16), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE, str(frames), solver, str(REPEATS)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"working": min(result["working"]), "latent": result["latent"]}


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("solver", ["euler", "dpm++", "unipc"])
def test_peak_rss_at_4x_the_frames_grows_by_the_solvers_latents_not_by_activations(solver):
    from wan_core.dit.model import DiTConfig
    from wan_core.dit.sizes import activation_bytes, token_count

    one, four = _measure(FRAMES[0], solver), _measure(FRAMES[1], solver)
    growth = four["working"] - one["working"]
    cfg = DiTConfig(dim=64, ffn_dim=128, num_heads=1, num_layers=2, text_dim=64, text_len=32)
    unwindowed = (activation_bytes(cfg, token_count(cfg, (1, 16, FRAMES[1], 32, 32)), 1)
                  - activation_bytes(cfg, token_count(cfg, (1, 16, FRAMES[0], 32, 32)), 1))
    latent, more = four["latent"], four["latent"] - one["latent"]
    print(f"{solver}: working {one['working'] / 2**20:.2f} MiB at {FRAMES[0]} frames, {four['working'] / 2**20:.2f} "
          f"at {FRAMES[1]}; growth {growth / 2**20:.3f} MiB = {growth / latent:.3f} latents of {latent / 2**20:.2f} MiB "
          f"(unwindowed activations would grow {unwindowed / 2**20:.1f} MiB)")
    bound = LATENT_BUFFERS[solver] * more + SLACK * latent  # the solver's buffers' added frames, no more
    assert growth <= bound
    if solver == "euler":
        assert growth <= latent  # a single-step solver: the growth is within the latent's size
    assert bound < unwindowed / 2  # the bound could not hold without the windows
