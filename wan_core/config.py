"""The engine's constants in one place: the official Wan2.2-T2V-A14B defaults, the public file names, and every
option table a setting is chosen from (nodes build their dropdowns from these; the engine validates with `choice`).

Defaults: Wan-Video/Wan2.2 wan/configs/wan_t2v_A14B.py and shared_config.py. Imports nothing of the engine.
"""

from __future__ import annotations

from typing import Sequence

import torch

STEPS = 40
SHIFT = 12.0
BOUNDARY = 0.875  # high-noise expert while t >= BOUNDARY * NUM_TRAIN_TIMESTEPS
NUM_TRAIN_TIMESTEPS = 1000
GUIDE_HIGH = 4.0  # high-noise expert
GUIDE_LOW = 3.0  # low-noise expert
WIDTH, HEIGHT, FRAMES, FPS = 1280, 720, 81, 16
TEXT_LEN = 512
VAE_STRIDE = (4, 8, 8)
LATENT_CHANNELS = 16

# Substituted by the official code when the negative prompt is empty (wan/text2video.py L261-262).
NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，"
    "多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

# Public file names users download (Comfy-Org repackaged files and the official checkpoint folder).
COMFY_FILES = {
    "high_fp16": "wan2.2_t2v_high_noise_14B_fp16.safetensors",
    "low_fp16": "wan2.2_t2v_low_noise_14B_fp16.safetensors",
    "high_fp8": "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
    "low_fp8": "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors",
    "t5_fp16": "umt5_xxl_fp16.safetensors",
    "t5_fp8": "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
    "vae": "wan_2.1_vae.safetensors",
    # Wan2.2-VACE-Fun-A14B merged into each expert (control: Canny, depth, pose, reference images)
    "vace_high_fp8": "wan2.2_fun_vace_high_noise_14B_fp8_scaled.safetensors",
    "vace_low_fp8": "wan2.2_fun_vace_low_noise_14B_fp8_scaled.safetensors",
}

# The Lightning 4-step distillation LoRA pair (ModelTC/Wan2.2-Lightning V1.1, Comfy-Org's repackaged names) and the
# settings it was distilled for: 4 Euler steps at shift 5, guidance 1 on both experts (t = 1000, 937.5 | 833.3, 625).
LIGHTNING_LORAS = {
    "high": "wan2.2_t2v_lightx2v_4steps_lora_v1.1_high_noise.safetensors",
    "low": "wan2.2_t2v_lightx2v_4steps_lora_v1.1_low_noise.safetensors",
}
LIGHTNING_STEPS, LIGHTNING_SHIFT, LIGHTNING_CFG = 4, 5.0, 1.0
NO_LORA = "None"  # the LoRA loader's entry for "no LoRA on this expert"


# --- option tables ------------------------------------------------------------------------------------------
# DiT weight storage: "auto" keeps each file's stored precision (scaled fp8 included).
WEIGHT_DTYPES: dict[str, torch.dtype | None] = {
    "auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
    "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2,
}
WEIGHT_DTYPE_OPTIONS = ("auto", "bf16", "fp16", "fp8_e4m3fn", "fp8_e5m2")  # offered in the loader node
COMPUTE_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PLACEMENTS = ("auto", "resident", "swap", "stream")
# DiT matmul precision: auto = bf16 on a GPU, fp32 on the CPU (bf16 on the CPU: faster matmuls, a measured difference).
COMPUTE_OPTIONS = ("auto", "fp32", "bf16", "fp16")
# What the model loader offers: the cache's policies, and "shard" (each block split over the GPUs of a multi-GPU run).
MODEL_PLACEMENTS = (*PLACEMENTS, "shard")
MAX_GPUS = 8  # GPUs of one machine a run can use (wan_core.parallel)
SOLVERS = ("unipc", "dpm++", "euler")
# Sigma grids (sampling/schedule.py): "official" is the solver's own (unipc -> unipc_grid, dpm++ / euler -> dpm_grid);
# simple / beta are ComfyUI's schedulers of those names on a discrete-flow model with the run's shift.
SCHEDULES = ("official", "unipc_grid", "dpm_grid", "simple", "beta")
# Where the high-noise expert hands over: at the model's boundary timestep (official), or at a step index.
SWITCH_MODES = ("boundary", "step")
# Context windows (sampling/windows.py): window length and overlap in pixel frames, and how overlaps are blended.
WINDOW_FRAMES, WINDOW_OVERLAP = 81, 16
FUSE_METHODS = ("pyramid", "linear")
CFG_BATCH_MODES = ("auto", "on", "off")
# Text encoder: where it runs, and its precision (fp8_e4m3fn keeps scaled fp8 storage, computed in bf16).
TEXT_DEVICES = ("gpu", "cpu")
ENCODER_DTYPES = ("auto", "bf16", "fp16", "fp32", "fp8_e4m3fn")
ENCODER_STORAGE = ("auto", "fp32", "bf16", "fp16", "fp8")  # the engine's names (fp8: scaled e4m3fn, bf16 compute)
VAE_DTYPES = ("bf16", "fp16", "fp32")
TILING = ("auto", "on", "off")
# Upscaler: how a different aspect ratio fits an exact size, and the resampling filters.
UPSCALE_MODES = ("scale", "exact size")
UPSCALE_FITS = ("crop", "pad", "stretch")
RESAMPLES = ("lanczos", "bicubic", "bilinear")
# Control preprocessing (WanMoEControlPreprocess) and the VACE control's step ranges (WanMoEVaceControl).
CONTROL_MODES = ("canny", "soft edges", "tile", "grayscale", "none")
CONTROL_PADS = ("grey", "repeat last frame")


def choice(name: str, value: str, options: Sequence[str]) -> str:
    """`value` if it is one of `options`; else a ValueError naming the setting, the value and the options."""
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(str, options))}; got {value!r}")
    return value


class InputRefused(ValueError):
    """A run refused for a value the user gave (a setting or an input that cannot work), worded for the user.

    Raised where a problem can only be seen when a node runs (values from linked inputs, a null widget); the test
    harness tells these apart from bugs in ComfyUI's log."""
