"""WanMoEModelFromComfy in the real ComfyUI: core MODELs (UNETLoader, LoraLoaderModelOnly, a patch node) sampled by
our MoE sampler, against the same files through our own loader.

The tiny experts are stored in fp32: core UNETLoader keeps fp32 weights on a CPU (model_management.unet_dtype), our
loader's "auto" keeps them too, so both sides compute in fp32. The two DiT implementations then differ only by
round-off: ComfyUI's sinusoidal timestep embedding is computed in float32, ours in float64 as the official code
(measured per forward: ~1.5e-5 on outputs of magnitude ~4). 1e-4 on the final latent bounds that round-off through
4 steps of guidance 4 / 3.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.client import output_files
from wan_core.testing.tiny import dit as tiny_dit
from wan_core.testing.tiny import t5 as tiny_t5

pytestmark = pytest.mark.comfy

HIGH, LOW = "fromcomfy_high_fp32.safetensors", "fromcomfy_low_fp32.safetensors"
HIGH_MERGED = "fromcomfy_high_lora_merged_fp32.safetensors"
LORA, TE = "fromcomfy_high_lora.safetensors", "fromcomfy_umt5.safetensors"
W, H, FRAMES, STEPS = 64, 48, 5, 4  # 4 steps at shift 12: 3 high-noise + 1 low-noise
LATENT_SHAPE = (1, 16, 2, H // 8, W // 8)
LORA_RANK, LORA_ALPHA = 4, 2.0
LORA_LAYERS = ("blocks.0.self_attn.q", "blocks.1.cross_attn.o", "blocks.1.ffn.0")


def tiny_lora(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(a LoRA in the Lightning / Comfy-Org layout for a few layers, the expert's weights with it merged at scale 1)."""
    gen = torch.Generator().manual_seed(5)
    lora, merged = {}, dict(sd)
    for layer in LORA_LAYERS:
        out_features, in_features = sd[f"{layer}.weight"].shape
        down = torch.randn(LORA_RANK, in_features, generator=gen) / in_features ** 0.5
        up = torch.randn(out_features, LORA_RANK, generator=gen) * 0.5
        lora[f"diffusion_model.{layer}.lora_down.weight"] = down
        lora[f"diffusion_model.{layer}.lora_up.weight"] = up
        lora[f"diffusion_model.{layer}.alpha"] = torch.tensor(LORA_ALPHA)
        merged[f"{layer}.weight"] = sd[f"{layer}.weight"] + (LORA_ALPHA / LORA_RANK) * (up @ down)
    return lora, merged


@pytest.fixture(scope="module")
def files(comfy_server, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("fromcomfy")
    high = tiny_dit.random_state_dict(tiny_dit.TINY_DIT_CONFIG, seed=21)
    low = tiny_dit.random_state_dict(tiny_dit.TINY_DIT_CONFIG, seed=22)
    lora, merged = tiny_lora(high)
    for name, sd in ((HIGH, high), (LOW, low), (HIGH_MERGED, merged)):
        comfy_server.add_model("diffusion_models", tiny_dit.write_single_file(folder / name, sd))
    save_file(lora, str(folder / LORA))
    comfy_server.add_model("loras", folder / LORA)
    comfy_server.add_model("text_encoders", tiny_t5.write_comfy_file(folder / TE, "t5", seed=4))


def unet(name: str) -> dict:
    return {"class_type": "UNETLoader", "inputs": {"unet_name": name, "weight_dtype": "default"}}


def from_comfy(high: list, low: list) -> dict:
    return {"class_type": "WanMoEModelFromComfy", "inputs": {"high_noise_model": high, "low_noise_model": low,
                                                             "boundary": 0.875}}


def ours(high: str) -> dict:
    return {"class_type": "WanMoEModelLoader", "inputs": {"high_noise_model": high, "low_noise_model": LOW,
            "weight_dtype": "auto", "placement": "auto", "attention": "sdpa", "boundary": 0.875}}


def sample(comfy_server, comfy_client, prefix: str, model_nodes: dict, **sampler_inputs) -> torch.Tensor:
    """The MoE sampler on the WANMOE_MODEL of node "1" (given with the nodes feeding it); the saved latent."""
    return sample_run(comfy_server, comfy_client, prefix, model_nodes, **sampler_inputs)[0]


def sample_run(comfy_server, comfy_client, prefix: str, model_nodes: dict, **sampler_inputs) -> tuple[torch.Tensor, str]:
    """(the saved latent, the sampler's summary text) of one run."""
    prompt = {
        **model_nodes,
        "2": {"class_type": "WanMoETextEncoderLoader", "inputs": {"text_encoder": TE, "device": "cpu", "dtype": "auto"}},
        "3": {"class_type": "WanMoETextEncode", "inputs": {"text_encoder": ["2", 0], "positive": "A red fox in snow.",
                                                            "negative": "blurry, low quality"}},
        "4": {"class_type": "WanMoEEmptyLatent", "inputs": {"width": W, "height": H, "length": FRAMES, "batch_size": 1}},
        "6": {"class_type": "WanMoESampler", "inputs": {"model": ["1", 0], "positive": ["3", 0], "negative": ["3", 1],
              "latent": ["4", 0], "seed": 5, "steps": STEPS, "cfg_high": 4.0, "cfg_low": 3.0, "shift": 12.0,
              "sampler": "unipc", "denoise": 1.0, **sampler_inputs}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": f"fromcomfy/{prefix}"}},
    }
    outputs = comfy_client.run(prompt, timeout=240)
    (entry,) = output_files({"9": outputs["9"]})
    latent = load_file(str(comfy_server.output_path(entry)))["latent_tensor"]
    assert tuple(latent.shape) == LATENT_SHAPE and torch.isfinite(latent).all()
    return latent, outputs["6"]["text"][0]


@pytest.fixture(scope="module")
def ours_plain(comfy_server, comfy_client, files) -> torch.Tensor:
    return sample(comfy_server, comfy_client, "ours", {"1": ours(HIGH)})


CORE_MODELS = {"10": unet(HIGH), "11": unet(LOW), "1": from_comfy(["10", 0], ["11", 0])}


@pytest.fixture(scope="module")
def core_run(comfy_server, comfy_client, files) -> tuple[torch.Tensor, str]:
    """(the latent of UNETLoader x2 -> WanMoEModelFromComfy -> WanMoESampler, the server log of that run)."""
    mark = len(comfy_server.log_text())
    latent = sample(comfy_server, comfy_client, "unet", CORE_MODELS)
    return latent, comfy_server.log_text()[mark:]


@pytest.fixture(scope="module")
def core_plain(core_run) -> torch.Tensor:
    return core_run[0]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_unet_loaders_through_the_node_match_our_loader_within_1e_4(core_run, ours_plain):
    core, log = core_run
    diff = max_diff(core, ours_plain)
    print(f"UNETLoader x2 -> WanMoEModelFromComfy vs WanMoEModelLoader: max |diff| {diff:.2e} "
          f"(latent max {ours_plain.abs().max().item():.2f})")
    assert diff <= 1e-4
    # ComfyUI's model management loaded the two core models; our cache loaded no expert for this run.
    assert log.count("Requested to load WAN21") >= 2, log[-2000:]
    assert "model cache: loaded dit" not in log


def test_lora_loader_between_matches_our_loader_on_the_merged_weights(comfy_server, comfy_client, ours_plain):
    lora = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["10", 0], "lora_name": LORA,
                                                              "strength_model": 1.0}}
    mark = len(comfy_server.log_text())
    core = sample(comfy_server, comfy_client, "lora", {"10": unet(HIGH), "12": lora, "11": unet(LOW),
                                                       "1": from_comfy(["12", 0], ["11", 0])})
    assert "lora key not loaded" not in comfy_server.log_text()[mark:]
    merged = sample(comfy_server, comfy_client, "merged", {"1": ours(HIGH_MERGED)})
    diff, effect = max_diff(core, merged), max_diff(core, ours_plain)
    print(f"UNETLoader -> LoraLoaderModelOnly -> node vs our loader on merged weights: max |diff| {diff:.2e}; "
          f"the LoRA moves the latent by {effect:.3g}")
    assert effect > 1e-2  # the LoRA was applied (it changes the high-noise expert's output)
    assert diff <= 1e-4


def test_a_patch_node_for_comfys_own_sampling_changes_nothing(comfy_server, comfy_client, core_plain):
    # ModelSamplingSD3 sets ComfyUI's own shift; the MoE sampler brings its schedule (shift input), so the result
    # equals the unpatched models' exactly: the patched MODEL runs, and the official timesteps are what the DiT sees.
    plain = core_plain
    shift = {"class_type": "ModelSamplingSD3", "inputs": {"model": ["10", 0], "shift": 5.0}}
    patched = sample(comfy_server, comfy_client, "shift_patched", {"10": unet(HIGH), "13": shift, "11": unet(LOW),
                                                                    "1": from_comfy(["13", 0], ["11", 0])})
    assert torch.equal(plain, patched)


def test_step_cache_is_not_applied_to_core_models_and_the_summary_says_so(comfy_server, comfy_client, core_plain):
    # Step caching skips our DiT's block stack; ComfyUI's WanModel is one opaque forward, so the run computes every
    # step (the same latent bit for bit) and the sampler's text box tells the user.
    latent, summary = sample_run(comfy_server, comfy_client, "unet_step_cache", CORE_MODELS, step_cache=0.5)
    assert torch.equal(latent, core_plain)
    assert summary.endswith("\nstep_cache 0.5 not applied: it needs the pack's own DiT (Wan2.2 MoE Model Loader); "
                            "models from WanMoEModelFromComfy compute every step"), summary
