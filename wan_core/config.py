"""Official Wan2.2-T2V-A14B sampling defaults (Wan-Video/Wan2.2 wan/configs/wan_t2v_A14B.py, shared_config.py)."""

from __future__ import annotations

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
}
