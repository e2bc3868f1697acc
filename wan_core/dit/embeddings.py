"""Sinusoidal timestep embedding of the Wan DiT (official wan/modules/model.py `sinusoidal_embedding_1d`)."""

from __future__ import annotations

import torch


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[cos | sin] of t·10000^(-i/half) for i < half, in float64 as the official code: [B] -> [B, dim]."""
    half = dim // 2
    t = t.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device).div(half))
    angles = torch.outer(t, freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
