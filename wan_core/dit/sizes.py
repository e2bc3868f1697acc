"""How big a Wan DiT is, from its configuration: tokens of a latent, parameter counts, weight bytes at a storage
dtype, the block-streaming footprint and the activation estimate. One owner for these numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch
import torch.nn as nn

from .model import DiTConfig, WanDiT


def token_count(config: DiTConfig, latent_shape: Sequence[int]) -> int:
    """Video tokens of one item of a latent [B, C, T, H, W] (or [C, T, H, W]) after the patch embedding."""
    t, h, w = latent_shape[-3:]
    return math.prod(size // patch for size, patch in zip((t, h, w), config.patch_size))


def activation_bytes(config: DiTConfig, tokens: int, batch: int = 1) -> int:
    """Rough peak activation bytes of one forward besides the weights (bench/gpu_placement.py measures the real one).

    About eight float32 copies of the token stream (residual, norms, q/k/v, float64 RoPE) plus the FFN
    hidden layer twice in a 2-byte compute dtype.
    """
    return int(tokens * batch * (config.dim * 4 * 8 + config.ffn_dim * 2 * 2))


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of a WanDiT shape: all, one block, the 2-D weights of the blocks' attention and FFN Linears
    (VACE blocks included: what fp8 quantizes), the largest VACE block and all of them (0 without VACE)."""

    total: int
    block: int
    block_linear: int
    vace_block: int = 0
    vace_total: int = 0


@lru_cache(maxsize=8)
def param_counts(config: object) -> ParamCounts:
    """Counts of a DiTConfig, from a meta-device model built once per config (about 0.8 s at the A14B size)."""
    with torch.device("meta"):
        model = WanDiT(config)
    vace = getattr(model, "vace_blocks", None) or nn.ModuleList()
    return ParamCounts(total=sum(p.numel() for p in model.parameters()),
                       block=sum(p.numel() for p in model.blocks[0].parameters()),
                       block_linear=sum(p.numel() for blocks in (model.blocks, vace)
                                        for name, p in blocks.named_parameters()
                                        if p.dim() == 2 and "_proj." not in name),
                       vace_block=max((sum(p.numel() for p in b.parameters()) for b in vace), default=0),
                       vace_total=sum(p.numel() for p in vace.parameters()))


def stream_bytes_for(config: object, bytes_per_param: float) -> int:
    """Streaming footprint of a WanDiT shape at `bytes_per_param`: the non-block weights plus two blocks (three with
    VACE blocks, which stream as their own list: the running block and one prefetched per list)."""
    counts = param_counts(config)
    other = counts.total - counts.block * config.num_layers - counts.vace_total
    largest = max(counts.block, counts.vace_block)
    return int((other + (3 if counts.vace_total else 2) * largest) * bytes_per_param)


def weight_bytes(config: DiTConfig, weight_dtype: torch.dtype | None, *, stored_bytes: int,
                 stored_dtype: torch.dtype) -> int:
    """Bytes an expert's weights take once loaded: as stored (None), or at `weight_dtype` (fp8: the block Linear
    weights in fp8, everything else as stored but at least 2 bytes per element)."""
    counts = param_counts(config)
    if weight_dtype is None:
        return stored_bytes
    if weight_dtype.itemsize == 1:
        return counts.block_linear + (counts.total - counts.block_linear) * max(stored_dtype.itemsize, 2)
    return counts.total * weight_dtype.itemsize
