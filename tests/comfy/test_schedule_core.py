"""Our `simple` and `beta` grids are ComfyUI's own schedulers of those names on a shifted flow model, bit for bit.

ComfyUI side, in a subprocess with the harness's ComfyUI on sys.path: the model sampling object core
ModelSamplingSD3 installs (ModelSamplingDiscreteFlow + CONST, `set_parameters(shift, multiplier=1000)`) and core
`comfy.samplers.calculate_sigmas` (what BasicScheduler calls) and `beta_scheduler` (BetaSamplingScheduler's defaults).
Our side: wan_core.sampling.schedule.full_sigmas. The whole chain through the server (UNETLoader -> ModelSamplingSD3
-> BasicScheduler -> WanMoESampler.sigmas) is in tests/comfy/test_nodes_schedule.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from wan_core.sampling.schedule import full_sigmas

pytestmark = pytest.mark.comfy
SHIFTS = (1.0, 5.0, 8.0, 12.0)
STEPS = [*range(1, 101), 150, 200]  # the sampler's steps go up to 200

_COMFY_SIDE = r"""
import json, sys
shifts, steps = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import comfy.model_sampling, comfy.samplers

class ModelSamplingAdvanced(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
    pass  # what comfy_extras/nodes_model_advanced.py ModelSamplingSD3.patch builds

out = {}
for shift in shifts:
    sampling = ModelSamplingAdvanced()
    sampling.set_parameters(shift=shift, multiplier=1000)
    for n in steps:
        out[f"simple {shift} {n}"] = comfy.samplers.calculate_sigmas(sampling, "simple", n).tolist()
        out[f"beta {shift} {n}"] = comfy.samplers.beta_scheduler(sampling, n, alpha=0.6, beta=0.6).tolist()
print("SIGMAS " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def core_sigmas() -> dict[str, list[float]]:
    from harness.comfy_server import find_comfyui

    comfy_dir = find_comfyui()
    proc = subprocess.run([sys.executable, "-c", _COMFY_SIDE, json.dumps(SHIFTS), json.dumps(STEPS)],
                          cwd=comfy_dir, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(comfy_dir)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("SIGMAS "))[7:])


@pytest.mark.parametrize("grid", ["simple", "beta"])
def test_grid_equals_comfyui_scheduler_bit_for_bit(core_sigmas, grid):
    differ = [(shift, n) for shift in SHIFTS for n in STEPS
              if full_sigmas(n, shift, "unipc", grid) != core_sigmas[f"{grid} {shift} {n}"]]
    assert differ == []


def test_beta_merges_repeated_indices_as_comfyui_does(core_sigmas):
    # At 150 steps beta's ppf hits the same table index twice near the top; ComfyUI keeps one, so do we (149 steps).
    ours = full_sigmas(150, 12.0, "unipc", "beta")
    assert len(ours) - 1 == 149 and ours == core_sigmas["beta 12.0 150"]
