"""Attention behind one small interface: a registry of named backends, "sdpa" by default.

A backend takes q, k, v as [B, L, heads, head_dim] (the official flash-attention layout) in one dtype
and returns [B, Lq, heads, head_dim] in that dtype, softmax scale 1/sqrt(head_dim), no mask (Wan's
T2V attention never masks: video tokens are unpadded and text padding is attended to, as official).
`attend_biased` is the one exception: cross-attention over text whose identical padding rows are kept once, with
the log of their count added to that key's logits (dit.model `_padding_bias`).
Other kernels (flash-attn, sage, xformers) register themselves with `register_attention`.

`attend_in_chunks` runs any backend over chunks of queries (each query's output depends on its own row, k and
v only, so the result is the same), with the run's cancel check before each chunk: memory.pace sizes the chunks
so Cancel is seen within a bounded time however many tokens there are.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..memory.pace import map_rows

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


def attention_flops(q: torch.Tensor, k: torch.Tensor) -> int:
    """Floating-point operations of one query row of attention over [B, L, H, D] q and k (q·kᵀ and the weighted sum)."""
    batch, keys, heads, head_dim = k.shape
    return 4 * batch * keys * heads * head_dim


def attend_in_chunks(attend: AttentionFn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`attend(q, k, v)` over chunks of queries sized by the run's pace, with its cancel check before each chunk."""
    return map_rows(lambda rows: attend(rows, k, v), q, dim=1, work_per_row=attention_flops(q, k))


def attend_biased(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Attention with an additive float32 bias per key ([B, 1, 1, Lk], broadcast over heads and queries), in float32
    whatever the inputs' dtype (a bf16 bias would round log(472) by up to 0.016), over chunks of queries like
    `attend_in_chunks`; returns q's dtype."""
    keys, values = k.float().transpose(1, 2), v.float().transpose(1, 2)

    def rows(part: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(part.float().transpose(1, 2), keys, values, attn_mask=bias)
        return out.transpose(1, 2).to(q.dtype)

    return map_rows(rows, q, dim=1, work_per_row=attention_flops(q, k))


from . import attention_backends  # noqa: E402,F401  (registers the pinned SDPA kernels and, when installed, sage)
