"""The DiT forward over one rank's share of the tokens, and putting the shares back together.

Every rank embeds the whole latent (patch, time and text embeddings are cheap next to the blocks), pads the
token stream to a multiple of the Ulysses size, keeps its contiguous share of the tokens and of the RoPE
rotations (padding rotates by 1, i.e. not at all), runs the blocks with Ulysses self-attention, and applies
the head to its share. Modulation is per batch item, so it applies to any token slice as it is. Rank 0
assembles the shares in rank order, drops the padding and unpatchifies.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F

from ..dit.model import ForwardState, WanDiT
from .plan import Layout
from .ulysses import sequence_parallel_attention


def token_share(length: int, size: int) -> int:
    """Tokens per rank: the token count rounded up to a multiple of `size`, divided by it."""
    return -(-length // size)


def slice_tokens(tokens: ForwardState, rank: int, size: int) -> ForwardState:
    """The `rank`-th of `size` contiguous token shares (zero tokens and identity rotations pad the last one)."""
    length = tokens.x.shape[1]
    share = token_share(length, size)
    pad = share * size - length
    x, rotations = tokens.x, tokens.rotations
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
        identity = torch.ones(pad, rotations.shape[1], dtype=rotations.dtype, device=rotations.device)
        rotations = torch.cat([rotations, identity])
    part = slice(rank * share, (rank + 1) * share)
    return dataclasses.replace(tokens, x=x[:, part], rotations=rotations[part])


def sharded_forward(model: WanDiT, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, *, rank: int, size: int,
                    group: object, before_block: Callable[[int], None] | None = None) -> torch.Tensor:
    """This rank's share of the head output: [B, share, out·pt·ph·pw] float32 (see `assemble`)."""
    tokens = model.embed(x, t, context)
    mine = slice_tokens(tokens, rank, size)
    if getattr(model, "weights_sharded", False):  # a block's weights exist only inside its forward (FSDP2): its
        mine.kv = None  # text keys/values are projected there at each call, not kept for the run
    with sequence_parallel_attention(model.blocks, size, group, length=tokens.x.shape[1]):
        y = model.run_blocks(mine, before_block)
    return model.head(y, tokens.e).float()


def assemble(model: WanDiT, shares: list[torch.Tensor], layout: Layout, grid: tuple[int, int, int]) -> torch.Tensor:
    """Every rank's head output (in rank order) -> velocity [B, out, F, H, W]: tokens joined per CFG group, then batch."""
    length = grid[0] * grid[1] * grid[2]
    u = layout.ulysses
    groups = [torch.cat(shares[g * u:(g + 1) * u], dim=1)[:, :length] for g in range(layout.cfg)]
    return model.unpatchify(torch.cat(groups, dim=0), grid)


def latent_grid(model: WanDiT, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Patch grid (frames, height, width) of a latent of `shape` [B, C, F, H, W]."""
    pt, ph, pw = model.config.patch_size
    return shape[2] // pt, shape[3] // ph, shape[4] // pw
