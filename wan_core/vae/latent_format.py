"""The two Wan2.1 latent conventions: normalised (what the DiT and the official VAE use) and raw (ComfyUI's LATENT).

The official VAE's encode returns (mu - mean) / std and its decode expects that; ComfyUI keeps LATENT samples
un-normalised (mu) and normalises them only around the model (comfy/latent_formats.py Wan21 process_in/out).
Converting at the node boundary keeps our LATENTs interchangeable with core's VAEEncode/VAEDecode/KSampler.
"""

from __future__ import annotations

import torch

# Per-channel statistics of the Wan2.1 VAE latent (official wan/modules/vae2_1.py, also in ComfyUI and diffusers).
WAN21_LATENT_MEAN: tuple[float, ...] = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_LATENT_STD: tuple[float, ...] = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)


def _stats(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if like.ndim != 5 or like.shape[1] != len(WAN21_LATENT_MEAN):
        raise ValueError(f"expected a Wan2.1 latent [B, 16, T, H, W], got shape {tuple(like.shape)}")
    shape = (1, len(WAN21_LATENT_MEAN), 1, 1, 1)
    mean = torch.tensor(WAN21_LATENT_MEAN, dtype=torch.float32, device=like.device).view(shape)
    std = torch.tensor(WAN21_LATENT_STD, dtype=torch.float32, device=like.device).view(shape)
    return mean, std


def normalize(raw: torch.Tensor) -> torch.Tensor:
    """ComfyUI LATENT samples (raw VAE mean) -> the normalised latent the DiT and the official VAE decode use."""
    mean, std = _stats(raw)
    return ((raw.float() - mean) / std).to(raw.dtype)


def denormalize(latent: torch.Tensor) -> torch.Tensor:
    """Normalised latent -> ComfyUI LATENT samples (raw VAE mean)."""
    mean, std = _stats(latent)
    return (latent.float() * std + mean).to(latent.dtype)
