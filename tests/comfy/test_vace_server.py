"""VACE control in the real ComfyUI: core WanVaceToVideo -> WanMoESampler -> TrimVideoLatent on tiny checkpoints,
our WanMoEVaceControl and VACE module files, a control video made by core image nodes, and the refusals.

The control video is core EmptyImage / ImageCompositeMasked / RepeatImageBatch (a white rectangle on black, 5 frames)
through WanMoEControlPreprocess (Canny). The in-process run rebuilds the same frames with torch and calls the engine
(api.encode_prompts, api.vace_control, api.sample) on the same files. Core WanVaceToVideo encodes with core's VAE,
ours with our VAE (fp32 both; control latents 1.8e-7 apart, tests/comfy/test_vace_parity.py): 1e-4 bounds what that
becomes after 4 steps of a tiny DiT; runs through the same code must agree exactly.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from harness.client import PromptFailed
from nodes_testing import log_mark, log_since
from test_interop_server import latent_of, save_latent
from wan_core import api
from wan_core.testing.tiny import dit as tiny_dit
from wan_core.testing.tiny import t5 as tiny_t5
from wan_core.testing.tiny import vae as tiny_vae

pytestmark = pytest.mark.comfy

TAG = "wanmoe_vace"
W, H, FRAMES, STEPS, SEED = 64, 48, 5, 4, 5
POSITIVE, NEGATIVE = "A white box slides over a dark floor.", "blurry"
NAMES = {role: f"{TAG}_{role}.safetensors" for role in
         ("vace_high", "vace_low", "high", "low", "module_high", "module_low", "module_wide", "fp8_high", "t5", "vae")}


@pytest.fixture(scope="module")
def models(comfy_server, tmp_path_factory) -> dict[str, str]:
    """Merged VACE experts, the same weights as plain experts + module files, a module of another width, an fp8
    plain expert, text encoder and VAE (under this test's own names)."""
    folder = tmp_path_factory.mktemp("vace_models")
    paths = {}
    for role in ("high", "low"):
        sd = {k: v.half() for k, v in tiny_dit.random_state_dict(tiny_dit.TINY_VACE_CONFIG, seed=61 + len(role)).items()}
        base, _ = tiny_dit.split_vace(sd)
        paths[f"vace_{role}"] = tiny_dit.write_single_file(folder / NAMES[f"vace_{role}"], sd)
        paths[role] = tiny_dit.write_single_file(folder / NAMES[role], base)
        paths[f"module_{role}"] = tiny_dit.write_vace_module_file(folder / NAMES[f"module_{role}"], sd, torch.float16)
    wide = tiny_dit.random_state_dict(replace(tiny_dit.TINY_VACE_CONFIG, dim=384, num_heads=3), seed=3)
    paths["module_wide"] = tiny_dit.write_vace_module_file(folder / NAMES["module_wide"], wide, torch.float16)
    paths["fp8_high"] = tiny_dit.write_scaled_fp8_file(folder / NAMES["fp8_high"], tiny_dit.split_vace(
        tiny_dit.random_state_dict(tiny_dit.TINY_VACE_CONFIG, seed=9))[0])
    paths["t5"] = tiny_t5.write_comfy_file(folder / NAMES["t5"], "t5", seed=4)
    paths["vae"] = tiny_vae.write_comfy_file(folder / NAMES["vae"], "vae", seed=8)
    folders = {"t5": "text_encoders", "vae": "vae"}
    for role, path in paths.items():
        comfy_server.add_model(folders.get(role, "diffusion_models"), path)
    return {role: str(comfy_server.models_dir / folders.get(role, "diffusion_models") / NAMES[role]) for role in paths}


def loader(high: str, low: str, **modules: str) -> dict:
    return {"class_type": "WanMoEModelLoader", "inputs": {
        "high_noise_model": NAMES[high], "low_noise_model": NAMES[low], "weight_dtype": "auto", "placement": "auto",
        "attention": "sdpa", "boundary": 0.875, **{k: NAMES[v] for k, v in modules.items()}}}


def control_prompt(*, node: str = "core", model: dict | None = None, latent: list | None = None) -> dict:
    """Loaders, text, a core-made control video (Canny), WanVaceToVideo or WanMoEVaceControl, sampler, trim, save."""
    control_inputs = {"positive": ["3", 0], "negative": ["3", 1], "width": W, "height": H, "length": FRAMES,
                      "batch_size": 1, "strength": 1.0, "control_video": ["24", 0], "reference_image": ["22", 0]}
    if node == "core":
        control = {"class_type": "WanVaceToVideo", "inputs": {**control_inputs, "vae": ["11", 0]}}
    else:
        control = {"class_type": "WanMoEVaceControl", "inputs": {
            **control_inputs, "vae": ["12", 0], "start_percent_high": 0.0, "end_percent_high": 1.0,
            "start_percent_low": 0.0, "end_percent_low": 1.0}}
    return {
        "1": model or loader("vace_high", "vace_low"),
        "2": {"class_type": "WanMoETextEncoderLoader", "inputs": {"text_encoder": NAMES["t5"], "device": "cpu",
                                                                  "dtype": "auto"}},
        "3": {"class_type": "WanMoETextEncode", "inputs": {"text_encoder": ["2", 0], "positive": POSITIVE,
                                                            "negative": NEGATIVE}},
        "11": {"class_type": "VAELoader", "inputs": {"vae_name": NAMES["vae"]}},
        "12": {"class_type": "WanMoEVAELoader", "inputs": {"vae": NAMES["vae"], "dtype": "fp32"}},
        "20": {"class_type": "EmptyImage", "inputs": {"width": W, "height": H, "batch_size": 1, "color": 0}},
        "21": {"class_type": "EmptyImage", "inputs": {"width": 24, "height": 16, "batch_size": 1, "color": 0xFFFFFF}},
        "22": {"class_type": "ImageCompositeMasked", "inputs": {"destination": ["20", 0], "source": ["21", 0],
                                                                "x": 16, "y": 16, "resize_source": False}},
        "23": {"class_type": "RepeatImageBatch", "inputs": {"image": ["22", 0], "amount": FRAMES}},
        "24": {"class_type": "WanMoEControlPreprocess", "inputs": {
            "images": ["23", 0], "mode": "canny", "low_threshold": 100.0, "high_threshold": 200.0, "blur": 2.0,
            "width": W, "height": H, "length": FRAMES, "pad": "grey"}},
        "30": control,
        "6": {"class_type": "WanMoESampler", "inputs": {
            "model": ["1", 0], "positive": ["30", 0], "negative": ["30", 1], "latent": latent or ["30", 2], "seed": SEED,
            "steps": STEPS, "cfg_high": 4.0, "cfg_low": 3.0, "shift": 12.0, "sampler": "unipc", "denoise": 1.0}},
        "40": {"class_type": "TrimVideoLatent", "inputs": {"samples": ["6", 0], "trim_amount": ["30", 3]}},
        "9": save_latent(["40", 0], f"{TAG}/{node}"),
    }


def sampled(comfy_server, comfy_client, prompt: dict) -> torch.Tensor:
    return latent_of(comfy_server, comfy_client.run(prompt, timeout=300), "9")


def core_made_control() -> torch.Tensor:
    """What nodes 20-23 make: a white 24x16 rectangle at (16, 16) on black, 5 frames."""
    frame = torch.zeros(1, H, W, 3)
    frame[:, 16:32, 16:40] = 1.0
    return frame.expand(FRAMES, -1, -1, -1).clone()


def in_process(models: dict[str, str]) -> torch.Tensor:
    """The same run through the engine directly (our VAE for the control latents)."""
    cpu = torch.device("cpu")
    prompts = api.encode_prompts(api.TextEncoderRequest(models["t5"], "cpu", "auto"), POSITIVE, NEGATIVE,
                                 compute_device=cpu)
    frame = core_made_control()
    control = api.preprocess_control(frame, "canny", low_threshold=100.0, high_threshold=200.0, blur=2.0, width=W,
                                     height=H, length=FRAMES, pad="grey").images
    vace = api.vace_control(api.VAERequest(models["vae"], "fp32"), prompts.positive, prompts.negative, width=W,
                            height=H, length=FRAMES, batch=1, strength=1.0, ranges={"high": (0, 1), "low": (0, 1)},
                            device=cpu, out_device=cpu, control_video=control, reference_image=frame[:1])
    model = api.ModelRequest(models["vace_high"], models["vace_low"], "auto", "auto", "sdpa", 0.875)
    schedule = api.plan_sampling(model, steps=STEPS, shift=12.0, solver="unipc", denoise=1.0, cfg_high=4.0, cfg_low=3.0)
    out = api.sample(model, schedule, positive=vace.positive, negative=vace.negative, latent=vace.latent, seed=SEED,
                     device=cpu)
    return out.latent["samples"][:, :, vace.trim_latent:]


@pytest.fixture(scope="module")
def core_path(comfy_server, comfy_client, models) -> torch.Tensor:
    return sampled(comfy_server, comfy_client, control_prompt())


def test_core_wan_vace_to_video_into_our_sampler_equals_the_in_process_run(core_path, models):
    assert tuple(core_path.shape) == (1, 16, 2, H // 8, W // 8)  # the reference frame trimmed off
    ours = in_process(models)
    diff = (core_path - ours).abs().max().item()
    print(f"core WanVaceToVideo in ComfyUI vs engine in-process: max |diff| {diff:.2e}")
    assert diff <= 1e-4


def test_our_vace_control_node_equals_core_wan_vace_to_video(comfy_server, comfy_client, core_path):
    ours = sampled(comfy_server, comfy_client, control_prompt(node="ours"))
    assert (ours - core_path).abs().max().item() <= 1e-4


def test_the_control_steers_the_video(comfy_server, comfy_client, core_path):
    weak = control_prompt()
    weak["30"]["inputs"]["strength"] = 0.0
    weak["9"] = save_latent(["40", 0], f"{TAG}/strength0")
    assert (sampled(comfy_server, comfy_client, weak) - core_path).abs().max().item() > 1e-2


def test_vace_module_files_on_plain_experts_equal_the_merged_experts(comfy_server, comfy_client, core_path):
    model = loader("high", "low", vace_module_high="module_high", vace_module_low="module_low")
    attached = sampled(comfy_server, comfy_client, control_prompt(model=model))
    assert torch.equal(attached, core_path)


def failure(comfy_client, prompt: dict) -> str:
    with pytest.raises(PromptFailed) as caught:
        comfy_client.run(prompt, timeout=300)
    return str(caught.value)


@pytest.mark.parametrize("case, expected", [
    ("plain experts", "the high-noise expert wanmoe_vace_high.safetensors has no VACE blocks"),
    ("module of another size", "belongs to another model size"),
    ("module of another precision", "must be of the expert's precision family (fp8)"),
    ("latent of another size", "but the latent being sampled is 2 latent frames of 4x4 (5 frames at 32x32 px)"),
])
def test_bad_input_fails_with_a_clear_message_and_the_next_prompt_runs(comfy_server, comfy_client, core_path, case,
                                                                       expected):
    prompt = {
        "plain experts": lambda: control_prompt(model=loader("high", "low")),
        "module of another size": lambda: control_prompt(model=loader("high", "low", vace_module_high="module_wide")),
        "module of another precision": lambda: control_prompt(model=loader("fp8_high", "low",
                                                                           vace_module_high="module_high")),
        "latent of another size": lambda: {**control_prompt(latent=["50", 0]), "50": {
            "class_type": "WanMoEEmptyLatent", "inputs": {"width": 32, "height": 32, "length": FRAMES, "batch_size": 1}}},
    }[case]()
    prompt["9"] = save_latent(["40", 0], f"{TAG}/bad")
    message = failure(comfy_client, prompt)
    assert "WanMoESampler" in message and expected in message, message
    again = control_prompt()
    again["6"]["inputs"]["seed"] = SEED + 1
    again["9"] = save_latent(["40", 0], f"{TAG}/after_{case.replace(' ', '_')}")
    assert torch.isfinite(sampled(comfy_server, comfy_client, again)).all()


def test_fitting_a_control_video_of_another_size_and_length_is_reported(comfy_server, comfy_client, core_path):
    prompt = control_prompt(node="ours")
    prompt["30"]["inputs"]["control_video"] = ["23", 0]  # 64x48 frames into a 48x32 control of 9 frames
    prompt["30"]["inputs"].update(width=48, height=32, length=9)
    prompt["30"]["inputs"].pop("reference_image")
    prompt["9"] = save_latent(["40", 0], f"{TAG}/fitted")
    mark = log_mark(comfy_server)
    assert tuple(sampled(comfy_server, comfy_client, prompt).shape) == (1, 16, 3, 4, 6)
    log = log_since(comfy_server, mark)
    assert "control_video: resized from 64x48 to 48x32 (centre crop to the aspect ratio, bilinear)" in log
    assert "control_video: padded from 5 to 9 frames with value 0.5" in log
