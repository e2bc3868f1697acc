"""LATENT noise_mask: our resize to the latent (interop.noise_mask) is core comfy.utils.reshape_mask's, bit for bit.

Masks as core nodes make them (SetLatentNoiseMask: [N, 1, H, W] pixel masks; a [H, W] mask; a 5-D latent-grid mask
as Wan2.2 Extend Latent writes) resized to Wan video latents, in a subprocess with the harness's ComfyUI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from wan_core.interop import noise_mask

pytestmark = pytest.mark.comfy
CASES = {  # name -> (mask, latent shape)
    "pixel_frames": (torch.rand(5, 1, 48, 64, generator=torch.Generator().manual_seed(1)), (1, 16, 2, 6, 8)),
    "one_image": (torch.rand(48, 64, generator=torch.Generator().manual_seed(2)), (2, 16, 3, 6, 8)),
    "latent_grid": ((torch.arange(4.0) >= 2).float().view(1, 1, 4, 1, 1).expand(1, 1, 4, 6, 8).contiguous(),
                    (1, 16, 4, 6, 8)),
}

_COMFY_SIDE = r"""
import json, sys
from safetensors.torch import load_file, save_file
masks, shapes, out = load_file(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import comfy.utils
save_file({k: comfy.utils.reshape_mask(m, shapes[k]).contiguous() for k, m in masks.items()}, out)
"""


def test_noise_mask_resize_is_core_reshape_mask(tmp_path):
    from harness.comfy_server import find_comfyui

    comfy_dir = find_comfyui()
    save_file({k: m for k, (m, _) in CASES.items()}, str(tmp_path / "masks.safetensors"))
    proc = subprocess.run([sys.executable, "-c", _COMFY_SIDE, str(tmp_path / "masks.safetensors"),
                           json.dumps({k: list(s) for k, (_, s) in CASES.items()}), str(tmp_path / "core.safetensors")],
                          cwd=comfy_dir, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(comfy_dir)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    core = load_file(str(tmp_path / "core.safetensors"))
    for name, (mask, shape) in CASES.items():
        ours = noise_mask({"noise_mask": mask}, shape)
        assert ours.shape == core[name].shape == shape and ours.equal(core[name]), name


def test_no_noise_mask_is_none():
    assert noise_mask({"samples": torch.zeros(1, 16, 2, 6, 8)}, (1, 16, 2, 6, 8)) is None
