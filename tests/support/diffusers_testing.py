"""diffusers' Wan DiT as a reference: the model at one of our configs holding our weights, and its time sinusoid
in float64 (as the official code and ours compute it) for comparisons that isolate that one precision choice."""

from __future__ import annotations

import math

import torch
from diffusers import WanTransformer3DModel

from wan_core.dit.keys import official_to_diffusers
from wan_core.dit.model import DiTConfig


def reference_model(config: DiTConfig, sd: dict[str, torch.Tensor]) -> WanTransformer3DModel:
    """diffusers' model at `config`, holding the same weights renamed to its keys (strict load)."""
    model = WanTransformer3DModel(
        patch_size=config.patch_size, num_attention_heads=config.num_heads, attention_head_dim=config.head_dim,
        in_channels=config.in_dim, out_channels=config.out_dim, text_dim=config.text_dim, freq_dim=config.freq_dim,
        ffn_dim=config.ffn_dim, num_layers=config.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=config.eps, rope_max_seq_len=1024)
    model.load_state_dict({official_to_diffusers(k): v for k, v in sd.items()}, strict=True)
    return model.eval()


def sinusoid_float64(timesteps, embedding_dim, flip_sin_to_cos=False, downscale_freq_shift=1, scale=1, max_period=10000):
    """diffusers' get_timestep_embedding computed in float64 as the official sinusoidal_embedding_1d does."""
    half = embedding_dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / (half - downscale_freq_shift))
    angles = scale * timesteps.to(torch.float64)[:, None] * freqs[None]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    return torch.cat([emb[:, half:], emb[:, :half]], dim=-1) if flip_sin_to_cos else emb
