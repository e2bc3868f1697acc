"""The engine's front door for the nodes: files + settings in, results out, every model through the shared cache.

Data flows one way: files -> loaders -> cache -> engine -> nodes. Each function here names a file by path
and says how it should run; the cache decides whether that means loading, reusing or moving weights.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from typing import Callable

import torch
import torch.nn as nn

from .memory.cache import CacheKey, get_cache
from .io.checkpoint import file_identity, open_checkpoint
from .dit.model import activation_bytes
from .sampling.placement import CachedExperts, dit_expert_spec
from .text.prompt_cache import DEFAULT_CACHE
from .sampling.sampler import sample_schedule
from .sampling.schedule import Schedule, build_schedule
from .text.encoder import EncodeResult, TextEncoder, encoder_identity, load_text_encoder
from .vae.model import comfy_image_to_video, video_to_comfy_image
from .vae.loader import load_vae

log = logging.getLogger("wan_core.api")
SPATIAL = 8  # VAE pixels per latent pixel

StepCallback = Callable[[int, int, str, torch.Tensor], None]


class _Holder(nn.Module):
    """Lets the cache move and account an object whose weights are one nn.Module (a TextEncoder's `model`)."""

    def __init__(self, module: nn.Module, payload: object) -> None:
        super().__init__()
        self.module = module
        self.payload = payload


def _weight_bytes(path: str | os.PathLike, itemsize: int | None) -> int:
    """Bytes a file's weights take once loaded: as stored, or at `itemsize` bytes per element."""
    return _weight_bytes_of(file_identity(path), itemsize)


@lru_cache(maxsize=32)
def _weight_bytes_of(identity: tuple[str, int, int], itemsize: int | None) -> int:
    """`_weight_bytes` per file identity: the header (or a .pth's mmap) is read once, not at every decode."""
    ckpt = open_checkpoint(identity[0])
    if itemsize is None:
        return ckpt.total_bytes()
    return sum(max(1, _numel(i.shape)) * itemsize for i in ckpt.infos.values())


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


# --- text ----------------------------------------------------------------------------------------------
_ENCODER_ITEMSIZE = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8_e4m3fn": 1, "fp8": 1}


def encode_prompts(path: str | os.PathLike, prompts: list[str], *, device: str, dtype: str,
                   compute_device: torch.device) -> EncodeResult:
    """Embeddings of `prompts` ([L_i, 4096] float32 CPU each); the encoder loads/runs only for uncached prompts.

    `device` is "gpu" (the compute device) or "cpu"; on a GPU the encoder leaves it when done.
    """
    target = compute_device if device == "gpu" else torch.device("cpu")
    encoder_dtype = "fp8" if dtype == "fp8_e4m3fn" else dtype
    identity = encoder_identity(path, encoder_dtype)
    key = CacheKey.for_file("text_encoder", path, dtype=encoder_dtype)
    cache = get_cache()
    held: list[_Holder] = []

    def load_encoder() -> TextEncoder:
        def load(dev: torch.device) -> nn.Module:
            encoder = load_text_encoder(path, device=dev, dtype=encoder_dtype)
            return _Holder(encoder.model, encoder)

        holder = cache.get(key, load, size_bytes=_weight_bytes(path, _ENCODER_ITEMSIZE.get(encoder_dtype)),
                           device=target, lock=True)
        held.append(holder)
        return holder.payload

    try:
        return DEFAULT_CACHE.encode_prompts(prompts, identity, load_encoder)
    finally:
        if held:
            cache.unlock(key)
            if target.type != "cpu":
                cache.offload(key)


# --- sampling ------------------------------------------------------------------------------------------
def schedule_for(*, steps: int, shift: float, solver: str, boundary: float, denoise: float, cfg_high: float,
                 cfg_low: float) -> Schedule:
    """The run's timesteps, expert per step and guidance, known before anything loads."""
    return build_schedule(steps, shift, solver, boundary=boundary, cfg_high=cfg_high, cfg_low=cfg_low, denoise=denoise)


def experts_for(high_path: str, low_path: str, *, weight_dtype: str, placement: str, attention: str,
                device: torch.device, tokens: int = 0, batch: int = 1) -> CachedExperts:
    """The two experts as the sampler's ExpertSource, placed by `placement` (auto/resident/swap/stream)."""
    high = dit_expert_spec(high_path, device=device, weight_dtype=weight_dtype, attention=attention)
    low = dit_expert_spec(low_path, device=device, weight_dtype=weight_dtype, attention=attention)
    config = _dit_config(high_path)
    working = activation_bytes(config, tokens, batch) if tokens else 0
    return CachedExperts(high, low, device=device, placement=placement, working_bytes=working)


def _dit_config(path: str):
    from .dit.loader import inspect_dit

    return inspect_dit(path).config


def sample(model, *, positive: list[torch.Tensor], negative: list[torch.Tensor], latent: torch.Tensor, seed: int,
           schedule: Schedule, device: torch.device, callback: StepCallback | None = None,
           check_cancel: Callable[[], None] | None = None) -> torch.Tensor:
    """Run the MoE sampler on normalised latents [B,16,T,H,W]; `model` names the experts (a loader node's handle)."""
    b, _, t, h, w = latent.shape
    tokens = t * (h // 2) * (w // 2)
    experts = experts_for(model.high_noise_path, model.low_noise_path, weight_dtype=model.weight_dtype,
                          placement=model.placement, attention=model.attention, device=device, tokens=tokens,
                          batch=2 * b)
    log.info("sampling %s with %s", tuple(latent.shape), experts.plan)
    try:
        return sample_schedule(experts, schedule, positive, negative, latent=latent, seed=seed, callback=callback,
                               check_cancel=check_cancel, device=device)
    finally:
        log.info("%s", get_cache().status())


# --- VAE -----------------------------------------------------------------------------------------------
_VAE_DTYPES = {"fp32": 4, "bf16": 2, "fp16": 2}


def _vae(path: str, dtype: str, device: torch.device):
    key = CacheKey.for_file("vae", path, dtype=dtype)
    return get_cache().using(key, lambda dev: load_vae(path, device=dev, dtype=dtype),
                             size_bytes=_weight_bytes(path, _VAE_DTYPES.get(dtype)), device=device,
                             offload_after=device.type != "cpu")


def _tile_args(tile_px: int | None, overlap_px: int | None) -> dict:
    return {"tile_size": tile_px // SPATIAL if tile_px else None,
            "tile_overlap": overlap_px // SPATIAL if overlap_px else None}


def decode(path: str, latent: torch.Tensor, *, dtype: str, device: torch.device, tiling: str = "auto",
           tile_px: int | None = None, overlap_px: int | None = None,
           on_frame: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Normalised latent [B,16,T,h,w] -> core IMAGE [B*F, 8h, 8w, 3] in 0..1 (tile sizes in pixels)."""
    with _vae(path, dtype, device) as vae:
        video = vae.decode(latent.to(device), tiling=tiling, on_frame=on_frame, **_tile_args(tile_px, overlap_px))
    return video_to_comfy_image(video)


def encode(path: str, images: torch.Tensor, *, dtype: str, device: torch.device, tiling: str = "auto",
           tile_px: int | None = None, overlap_px: int | None = None,
           on_frame: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Core IMAGE [F,H,W,3] in 0..1 (F = 4n+1) -> normalised latent [1,16,n+1,H/8,W/8]."""
    with _vae(path, dtype, device) as vae:
        return vae.encode(comfy_image_to_video(images).to(device), tiling=tiling, on_frame=on_frame,
                          **_tile_args(tile_px, overlap_px))
