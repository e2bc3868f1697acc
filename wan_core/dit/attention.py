"""Attention behind one small interface: a registry of named backends, "sdpa" by default.

A backend takes q, k, v as [B, L, heads, head_dim] (the official flash-attention layout) in one dtype
and returns [B, Lq, heads, head_dim] in that dtype, softmax scale 1/sqrt(head_dim), no mask (Wan's
T2V attention never masks: video tokens are unpadded and text padding is attended to, as official).
Other kernels (flash-attn, sage, xformers) register themselves with `register_attention`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

_BACKENDS: dict[str, AttentionFn] = {}


def register_attention(name: str, fn: AttentionFn) -> None:
    """Make an attention kernel selectable by name (q, k, v [B, L, H, D] -> [B, Lq, H, D])."""
    _BACKENDS[name] = fn


def get_attention(name: str) -> AttentionFn:
    """The backend registered under `name`; a ValueError lists the available ones."""
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown attention backend '{name}'; available: {', '.join(available_attention())}") from None


def available_attention() -> list[str]:
    """Names of the registered attention backends."""
    return sorted(_BACKENDS)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PyTorch's scaled_dot_product_attention (picks flash / memory-efficient / math kernels itself)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


register_attention("sdpa", sdpa_attention)

from . import attention_backends  # noqa: E402,F401  (registers the pinned SDPA kernels and, when installed, sage)
