"""Interop in the real ComfyUI: our CONDITIONING through core conditioning nodes (b); our LATENT and IMAGE through
core VAELoader / VAEDecode / VAEEncode (c).

Tiny random checkpoints under names of their own (interop_*) sit in the shared server's model folders; the VAE
file is one file read by both our WanMoEVAELoader and core VAELoader (which takes the VAE width from the weights).
Our VAE runs in fp32 here because core's VAE does on a CPU (model_management.vae_dtype), so the comparison is
fp32 vs fp32 and 1e-4 bounds round-off of two implementations of the same convolutions (measured ~2e-6).
Outputs come back losslessly where ComfyUI has a lossless saver (SaveLatent: float .latent files). Images only
have 8-bit savers, so the float check of the decode runs in the graph (core ImageBlend difference -> threshold
1e-4 -> SaveImage of the failure mask) and again in a ComfyUI subprocess on the same latent, which reports the
max difference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from harness.client import output_files
from wan_core.testing.tiny import dit as tiny_dit
from wan_core.testing.tiny import t5 as tiny_t5
from wan_core.testing.tiny import vae as tiny_vae

pytestmark = pytest.mark.comfy

REPO = Path(__file__).resolve().parents[2]
HIGH, LOW = "interop_tiny_high.safetensors", "interop_tiny_low.safetensors"
TE, VAE = "interop_tiny_umt5.safetensors", "interop_tiny_vae.safetensors"
W, H, FRAMES, STEPS = 64, 48, 5, 4  # 2 latent frames of 6x8; 4 steps at shift 12 = 3 high-noise + 1 low-noise
LATENT_SHAPE = (1, 16, 2, H // 8, W // 8)
POSITIVE = "A red sports car drives along a coastal road at sunset, waves crash on the rocks."
NEGATIVE = "blurry details, subtitles, worst quality, low quality"


@pytest.fixture(scope="module")
def models(comfy_server, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("interop_models")
    for name, role in ((HIGH, "high"), (LOW, "low")):
        comfy_server.add_model("diffusion_models", tiny_dit.write_comfy_file(folder / name, role, fp8=False, seed=3))
    comfy_server.add_model("text_encoders", tiny_t5.write_comfy_file(folder / TE, "t5", seed=3))
    comfy_server.add_model("vae", tiny_vae.write_comfy_file(folder / VAE, "vae", seed=5))


def t2v_nodes(seed: int = 7) -> dict:
    """Our loaders + text encode + empty latent + sampler; node "6" is the sampler (positive "3":0, negative "3":1)."""
    return {
        "1": {"class_type": "WanMoEModelLoader", "inputs": {"high_noise_model": HIGH, "low_noise_model": LOW,
              "weight_dtype": "auto", "placement": "auto", "attention": "sdpa", "boundary": 0.875}},
        "2": {"class_type": "WanMoETextEncoderLoader", "inputs": {"text_encoder": TE, "device": "cpu", "dtype": "auto"}},
        "3": {"class_type": "WanMoETextEncode", "inputs": {"text_encoder": ["2", 0], "positive": POSITIVE,
                                                            "negative": NEGATIVE}},
        "4": {"class_type": "WanMoEEmptyLatent", "inputs": {"width": W, "height": H, "length": FRAMES, "batch_size": 1}},
        "6": {"class_type": "WanMoESampler", "inputs": {"model": ["1", 0], "positive": ["3", 0], "negative": ["3", 1],
              "latent": ["4", 0], "seed": seed, "steps": STEPS, "cfg_high": 4.0, "cfg_low": 3.0, "shift": 12.0,
              "sampler": "unipc", "denoise": 1.0}},
    }


def save_latent(source: list, prefix: str) -> dict:
    return {"class_type": "SaveLatent", "inputs": {"samples": source, "filename_prefix": prefix}}


def saved(comfy_server, outputs: dict, node_id: str) -> list[Path]:
    return [comfy_server.output_path(f) for f in output_files({node_id: outputs[node_id]})]


def latent_of(comfy_server, outputs: dict, node_id: str) -> torch.Tensor:
    (path,) = saved(comfy_server, outputs, node_id)
    return load_file(str(path))["latent_tensor"]


def sampled(comfy_server, comfy_client, prefix: str, **edits) -> torch.Tensor:
    """Run t2v_nodes with `edits` (node id -> node, or input patches as (node id, input) -> value); the LATENT."""
    prompt = t2v_nodes()
    for key, value in edits.items():
        node_id, _, name = key.partition("__")
        if name:
            prompt[node_id]["inputs"][name] = value
        else:
            prompt[node_id] = value
    prompt["9"] = save_latent(["6", 0], f"interop_b/{prefix}")
    return latent_of(comfy_server, comfy_client.run(prompt, timeout=180), "9")


# --- (b) our CONDITIONING through core conditioning nodes ---------------------------------------------------
@pytest.fixture(scope="module")
def plain(comfy_server, comfy_client, models) -> torch.Tensor:
    return sampled(comfy_server, comfy_client, "plain")


def test_sampler_output_is_a_video_latent(plain):
    assert tuple(plain.shape) == LATENT_SHAPE and plain.dtype == torch.float32 and torch.isfinite(plain).all()


def test_core_conditioning_zero_out_on_the_negative_runs_and_changes_the_video(comfy_server, comfy_client, plain):
    zeroed = sampled(comfy_server, comfy_client, "zeroed_negative",
                     **{"7": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["3", 1]}},
                        "6__negative": ["7", 0]})
    assert zeroed.shape == plain.shape and torch.isfinite(zeroed).all()
    change = (zeroed - plain).abs().max().item()
    print(f"zeroed negative vs text negative: max |diff| {change:.3g}")
    assert change > 1e-2  # a zero context is a different negative (cfg 4/3 amplifies it)


def test_core_conditioning_concat_runs_reading_the_first_512_tokens(comfy_server, comfy_client, plain):
    # Concat makes [1, 1024, 4096]; Wan2.2 reads 512 tokens, so the sampler keeps the first 512 (with a warning):
    # exactly the un-concatenated positive.
    concat = sampled(comfy_server, comfy_client, "concat_positive",
                     **{"7": {"class_type": "ConditioningConcat", "inputs": {"conditioning_to": ["3", 0],
                                                                            "conditioning_from": ["3", 1]}},
                        "6__positive": ["7", 0]})
    assert torch.equal(concat, plain)
    assert "non-padding token(s) after token 512 are dropped" in comfy_server.log_text()


def test_core_timestep_range_runs_and_is_reported_as_ignored(comfy_server, comfy_client, plain):
    ranged = sampled(comfy_server, comfy_client, "timestep_range_positive",
                     **{"7": {"class_type": "ConditioningSetTimestepRange",
                              "inputs": {"conditioning": ["3", 0], "start": 0.0, "end": 0.5}},
                        "6__positive": ["7", 0]})
    assert torch.equal(ranged, plain)  # the prompt applies at every step; the user is told so
    assert "sets start_percent, end_percent; this sampler applies the prompt" in comfy_server.log_text()


# --- (c) our LATENT / IMAGE through core VAELoader + VAEDecode / VAEEncode -----------------------------------
def decode_both_prompt() -> dict:
    """Sample, then decode with ours and core; save both 8-bit, a float difference mask, and both encodes."""
    p = t2v_nodes(seed=11)
    p.update({
        "10": save_latent(["6", 0], "interop_c/sampled"),
        "11": {"class_type": "WanMoEVAELoader", "inputs": {"vae": VAE, "dtype": "fp32"}},
        "12": {"class_type": "WanMoEVAEDecode", "inputs": {"vae": ["11", 0], "samples": ["6", 0], "tiling": "off",
                                                           "tile_size": 0, "tile_overlap": 0}},
        "13": {"class_type": "VAELoader", "inputs": {"vae_name": VAE}},
        "14": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["13", 0]}},
        "15": {"class_type": "SaveImage", "inputs": {"images": ["12", 0], "filename_prefix": "interop_c/ours"}},
        "16": {"class_type": "SaveImage", "inputs": {"images": ["14", 0], "filename_prefix": "interop_c/core"}},
        # float check in the graph: max(ours - core, core - ours) per channel, summed, > 1e-4 -> white pixel
        "20": {"class_type": "ImageBlend", "inputs": {"image1": ["12", 0], "image2": ["14", 0], "blend_factor": 1.0,
                                                      "blend_mode": "difference"}},
        "21": {"class_type": "ImageBlend", "inputs": {"image1": ["14", 0], "image2": ["12", 0], "blend_factor": 1.0,
                                                      "blend_mode": "difference"}},
        "22": {"class_type": "ImageBlend", "inputs": {"image1": ["20", 0], "image2": ["21", 0], "blend_factor": 1.0,
                                                      "blend_mode": "screen"}},
        **{f"2{3 + i}": {"class_type": "ImageToMask", "inputs": {"image": ["22", 0], "channel": c}}
           for i, c in enumerate(("red", "green", "blue"))},
        "26": {"class_type": "MaskComposite", "inputs": {"destination": ["23", 0], "source": ["24", 0], "x": 0, "y": 0,
                                                         "operation": "add"}},
        "27": {"class_type": "MaskComposite", "inputs": {"destination": ["26", 0], "source": ["25", 0], "x": 0, "y": 0,
                                                         "operation": "add"}},
        "28": {"class_type": "ThresholdMask", "inputs": {"mask": ["27", 0], "value": 1e-4}},
        "29": {"class_type": "MaskToImage", "inputs": {"mask": ["28", 0]}},
        "30": {"class_type": "SaveImage", "inputs": {"images": ["29", 0], "filename_prefix": "interop_c/over_1e-4"}},
        # the other direction: our frames encoded by ours and by core
        "31": {"class_type": "WanMoEVAEEncode", "inputs": {"vae": ["11", 0], "image": ["12", 0], "tiling": "off",
                                                           "tile_size": 0, "tile_overlap": 0}},
        "32": {"class_type": "VAEEncode", "inputs": {"pixels": ["12", 0], "vae": ["13", 0]}},
        "33": save_latent(["31", 0], "interop_c/enc_ours"),
        "34": save_latent(["32", 0], "interop_c/enc_core"),
    })
    return p


@pytest.fixture(scope="module")
def decoded(comfy_server, comfy_client, models) -> dict:
    return comfy_client.run(decode_both_prompt(), timeout=240)


def frames(paths: list[Path]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in sorted(paths)])


def test_core_vae_decode_reads_our_latent_within_1e_4_in_float(comfy_server, decoded):
    masks = frames(saved(comfy_server, decoded, "30"))
    assert masks.shape == (FRAMES, H, W, 3)
    assert masks.max() == 0, f"{int((masks[..., 0] > 0).sum())} pixels differ by more than 1e-4"


def test_core_vae_decode_png_frames_equal_ours_within_one_level(comfy_server, decoded):
    ours, core = frames(saved(comfy_server, decoded, "15")), frames(saved(comfy_server, decoded, "16"))
    assert ours.shape == core.shape == (FRAMES, H, W, 3)
    assert np.abs(ours - core).max() <= 1  # float values within 1e-4 can round to neighbouring 8-bit levels
    assert 0 < ours.mean() < 255 and ours.std() > 1  # not a saturated / flat decode


def test_core_vae_encode_of_our_frames_equals_our_encode_within_1e_4(comfy_server, decoded):
    ours, core = latent_of(comfy_server, decoded, "33"), latent_of(comfy_server, decoded, "34")
    assert ours.shape == core.shape == LATENT_SHAPE
    diff = (ours - core).abs().max().item()
    print(f"encode: max |ours - core| = {diff:.2e} (latent max {core.abs().max().item():.2f})")
    assert diff <= 1e-4


_DECODE_SIDE = r"""
import asyncio, json, os, sys
pack, vae_path, latent_path = sys.argv[1:4]
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
from safetensors.torch import load_file
import folder_paths
folder_paths.add_model_folder_path("vae", os.path.dirname(vae_path), is_default=True)
import comfy.sd, comfy.utils, nodes, execution
raw = load_file(latent_path)["latent_tensor"].float()
core_vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(vae_path))  # what core VAELoader does
core = nodes.VAEDecode().decode(core_vae, {"samples": raw})[0]
assert asyncio.run(nodes.load_custom_node(pack))
async def run(node, **inputs):
    res, _, _, _ = await execution.get_output_data("interop", "1", nodes.NODE_CLASS_MAPPINGS[node], {k: [v] for k, v in inputs.items()})
    return [r[0] for r in res]
(vae,) = asyncio.run(run("WanMoEVAELoader", vae=os.path.basename(vae_path), dtype="fp32"))
(ours,) = asyncio.run(run("WanMoEVAEDecode", vae=vae, samples={"samples": raw}, tiling="off", tile_size=0, tile_overlap=0))
unsaturated = ((core > 0) & (core < 1)).float().mean().item()
print("INFO " + json.dumps({"shape": list(ours.shape), "core_shape": list(core.shape), "core_dtype": str(core_vae.vae_dtype),
                           "max_diff": (ours - core).abs().max().item(), "unsaturated": unsaturated}))
"""


def test_float_decode_difference_measured_in_process(comfy_server, decoded):
    """The same sampled latent, decoded in a ComfyUI subprocess by core's VAE and by our node, compared in float."""
    (latent_path,) = saved(comfy_server, decoded, "10")
    proc = subprocess.run([sys.executable, "-c", _DECODE_SIDE, str(comfy_server.base_dir / "custom_nodes" / "ComfyUI-WanMoE"),
                           str(comfy_server.models_dir / "vae" / VAE), str(latent_path)],
                          cwd=comfy_server.comfy_dir, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": str(comfy_server.comfy_dir)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("INFO "))[5:])
    print(f"decode: max |ours - core| = {info['max_diff']:.2e}, core VAE dtype {info['core_dtype']}, "
          f"{info['unsaturated']:.1%} of values inside (0, 1)")
    assert info["shape"] == info["core_shape"] == [FRAMES, H, W, 3]
    assert info["unsaturated"] > 0.5  # the comparison is not between clamped 0/1 values
    assert info["max_diff"] <= 1e-4
