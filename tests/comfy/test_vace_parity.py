"""Our VACE pieces against ComfyUI's own code, run in the harness's ComfyUI (a subprocess; no server needed).

  * the DiT: one tiny random merged VACE file loaded by comfy.sd.load_diffusion_model (detected as VaceWanModel)
    and by our loader; the same inputs, integer timestep, fp32, one and two control streams;
  * the model side: WAN21_Vace.extra_conds (per-chunk latent normalisation, mask concatenated) vs interop's context;
  * the node side: core WanVaceToVideo (core VAE) vs our control.prepare_vace (our VAE) on the same tiny VAE file and
    the same control video (other size, fewer frames), masks and reference image.
Bounds: fp32 vs fp32 on both sides; 1e-4 is round-off of two implementations of the same matmuls and convolutions
(measured: DiT ~1e-5, VAE ~2e-6); the mask packing and everything without a VAE in it must be exact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.comfy_server import find_comfyui
from wan_core.control.vace_latents import prepare_vace
from wan_core.dit.loader import load_dit
from wan_core.dit.vace import VaceInput
from wan_core.interop import conditioning_to_control, image_to_video, latent_to_comfy
from wan_core.testing.tiny import dit as tiny_dit
from wan_core.testing.tiny import vae as tiny_vae
from wan_core.vae.loader import load_vae

pytestmark = pytest.mark.comfy

STRENGTHS = (0.7, 1.3)
T = 613.0  # an integer timestep, as the official loop (and our sampler) feeds it

_PRELUDE = r"""
import json, sys
import torch
args = sys.argv[1:]
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
from safetensors.torch import load_file, save_file
"""

_DIT_SIDE = _PRELUDE + r"""
import comfy.sd
merged, inputs, out = args
d = load_file(inputs)
m = comfy.sd.load_diffusion_model(merged, model_options={"dtype": torch.float32})
dm = m.model.diffusion_model
results = {}
with torch.no_grad():
    for n in (1, 2):
        vace = torch.stack([d[f"vace{j}"] for j in range(n)], dim=1)  # [B, streams, 96, T, h, w]
        results[f"y{n}"] = dm(d["x"], d["t"], d["context"], vace_context=vace,
                              vace_strength=d["strength"][:n].tolist()).contiguous()
    extra = m.model.extra_conds(noise=d["x"], device=torch.device("cpu"), vace_frames=[d["frames0"], d["frames1"]],
                                vace_mask=[d["mask0"], d["mask1"]], vace_strength=[0.5, 2.0])
results["vace_context"] = extra["vace_context"].cond.contiguous()
save_file(results, out)
print("INFO " + json.dumps({"model": type(dm).__name__, "mapping": {str(k): v for k, v in dm.vace_layers_mapping.items()},
                            "dtype": str(next(dm.parameters()).dtype), "strength": extra["vace_strength"].cond}))
"""

_NODE_SIDE = _PRELUDE + r"""
import comfy.sd, comfy.utils
from comfy_extras.nodes_wan import WanVaceToVideo
vae_path, inputs, out = args
d = load_file(inputs)
vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(vae_path))  # what core VAELoader does
text = [[torch.zeros(1, 512, 4096), {"pooled_output": None}]]
results, info = {}, {}
cases = {"video": dict(control_video=d["video"]),
         "masked_reference": dict(control_video=d["video"], control_masks=d["masks"], reference_image=d["reference"]),
         "nothing": {}}
for name, extra in cases.items():
    pos, neg, latent, trim = WanVaceToVideo.execute(text, text, vae, 32, 16, 9, 2, 0.8, **extra).args
    results[f"{name}_frames"] = pos[0][1]["vace_frames"][0].contiguous()
    results[f"{name}_mask"] = pos[0][1]["vace_mask"][0].contiguous()
    info[name] = {"trim": trim, "latent": list(latent["samples"].shape), "strength": pos[0][1]["vace_strength"],
                  "same_negative": all(torch.equal(a, b) for a, b in zip(pos[0][1]["vace_frames"], neg[0][1]["vace_frames"]))}
info["vae_dtype"] = str(vae.vae_dtype)
save_file(results, out)
print("INFO " + json.dumps(info))
"""


def comfy_run(script: str, *args: str) -> dict:
    """Run `script` in the harness's ComfyUI; its INFO line as a dict."""
    comfy = find_comfyui()
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=comfy, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(comfy)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("INFO "))[5:])


@pytest.fixture(scope="module")
def dit_run(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("vace_dit")
    sd = tiny_dit.random_state_dict(tiny_dit.TINY_VACE_CONFIG, seed=41)
    merged = tiny_dit.write_single_file(folder / "wan2.2_fun_vace_high_noise_14B_fp32.safetensors", sd)
    gen = torch.Generator().manual_seed(0)
    context = torch.zeros(1, 512, 4096)
    context[0, :9] = torch.randn(9, 4096, generator=gen)
    inputs = {"x": torch.randn(1, 16, 2, 6, 8, generator=gen), "t": torch.tensor([T]), "context": context,
              "strength": torch.tensor(STRENGTHS),
              **{f"vace{j}": torch.randn(1, 96, 2, 6, 8, generator=gen) for j in range(2)},
              **{f"frames{j}": torch.randn(1, 32, 2, 6, 8, generator=gen) for j in range(2)},
              "mask0": torch.ones(1, 64, 2, 6, 8), "mask1": (torch.rand(1, 64, 2, 6, 8, generator=gen) > 0.5).float()}
    save_file(inputs, str(folder / "inputs.safetensors"))
    info = comfy_run(_DIT_SIDE, str(merged), str(folder / "inputs.safetensors"), str(folder / "out.safetensors"))
    return {"info": info, "inputs": inputs, "out": load_file(str(folder / "out.safetensors")), "model": load_dit(merged)}


def test_comfyui_reads_the_tiny_merged_file_as_its_vace_model(dit_run):
    info = dit_run["info"]
    assert info["model"] == "VaceWanModel" and info["dtype"] == "torch.float32"
    assert info["mapping"] == {"0": 0, "2": 1} and dit_run["model"].config.vace_layers == 2


@pytest.mark.parametrize("streams", [1, 2])
@torch.no_grad()
def test_our_vace_dit_equals_comfyui_native_vace_model(dit_run, streams):
    d, model = dit_run["inputs"], dit_run["model"]
    control = VaceInput(tuple(d[f"vace{j}"] for j in range(streams)),
                        tuple(torch.tensor([s]) for s in STRENGTHS[:streams]))
    ours = model(d["x"], d["t"], [d["context"][0, :9]], control=control)
    theirs = dit_run["out"][f"y{streams}"]
    diff = (ours - theirs).abs().max().item()
    print(f"{streams} stream(s): max |ours - ComfyUI| = {diff:.2e} (output max {theirs.abs().max().item():.2f})")
    assert diff <= 1e-4
    assert (model(d["x"], d["t"], [d["context"][0, :9]]) - theirs).abs().max().item() > 1e-1  # control matters


def test_our_vace_context_equals_comfyui_extra_conds(dit_run):
    d = dit_run["inputs"]
    conditioning = [[torch.zeros(1, 512, 4096), {"vace_frames": [d["frames0"], d["frames1"]],
                                                 "vace_mask": [d["mask0"], d["mask1"]], "vace_strength": [0.5, 2.0]}]]
    streams = conditioning_to_control(conditioning, "positive")
    theirs = dit_run["out"]["vace_context"]  # [B, streams, 96, T, h, w]
    assert theirs.shape == (1, 2, 96, 2, 6, 8)
    for j, stream in enumerate(streams):
        assert (stream.context - theirs[:, j]).abs().max().item() <= 1e-6  # the same (x - mean) / std in fp32
    assert [s.strength for s in streams] == dit_run["info"]["strength"] == [0.5, 2.0]


@pytest.fixture(scope="module")
def node_run(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("vace_node")
    vae_path = tiny_vae.write_comfy_file(folder / "wan_2.1_vae.safetensors", "vae", seed=6)
    gen = torch.Generator().manual_seed(1)
    inputs = {"video": torch.rand(6, 20, 48, 3, generator=gen),  # 48x20 -> 32x16 (crop), 6 -> 9 frames (grey)
              "masks": (torch.rand(4, 24, 40, generator=gen) > 0.4).float(),  # another size again, 4 -> 9 (ones)
              "reference": torch.rand(1, 40, 40, 3, generator=gen)}
    save_file(inputs, str(folder / "inputs.safetensors"))
    info = comfy_run(_NODE_SIDE, str(vae_path), str(folder / "inputs.safetensors"), str(folder / "out.safetensors"))
    vae = load_vae(vae_path, dtype="fp32")

    def encode(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return latent_to_comfy(vae.encode(image_to_video(images), tiling="off"))["samples"]

    cases = {"video": dict(control_video=inputs["video"]), "nothing": {},
             "masked_reference": dict(control_video=inputs["video"], control_masks=inputs["masks"],
                                      reference_image=inputs["reference"])}
    ours = {name: prepare_vace(encode, width=32, height=16, length=9, **extra) for name, extra in cases.items()}
    return {"info": info, "theirs": load_file(str(folder / "out.safetensors")), "ours": ours}


@pytest.mark.parametrize("case", ["video", "masked_reference", "nothing"])
def test_our_latent_preparation_equals_core_wan_vace_to_video(node_run, case):
    ours, theirs, info = node_run["ours"][case], node_run["theirs"], node_run["info"][case]
    assert node_run["info"]["vae_dtype"] == "torch.float32"
    assert ours.frames.shape == theirs[f"{case}_frames"].shape
    diff = (ours.frames - theirs[f"{case}_frames"]).abs().max().item()
    print(f"{case}: max |ours - core| vace_frames = {diff:.2e}")
    assert diff <= 1e-4
    assert torch.equal(ours.mask, theirs[f"{case}_mask"])
    assert ours.trim == info["trim"] == (1 if case == "masked_reference" else 0)
    assert [2, *ours.latent_shape] == info["latent"] and info["strength"] == [0.8] and info["same_negative"]
