"""Ulysses sequence parallelism for self-attention: all-to-all between token shards and head shards.

Each rank of a group holds 1/u of the tokens for all heads. Before attention one all-to-all gives every rank
all the tokens for 1/u of the heads; the registered attention kernel runs unchanged on that (it needs no
knowledge of the split); a second all-to-all brings the output back to the rank's tokens for all heads.
Padding tokens (the token count rounded up to a multiple of u) sit at the end of the full sequence, so they
are left out of the keys and values by slicing, which every backend supports; their queries produce rows
nobody keeps. Cross-attention needs nothing: each token attends the same full text context.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _all_to_all(chunks: torch.Tensor, group: object) -> torch.Tensor:
    """Send chunks[i] to rank i of `group` and return what rank i sent here at index i (dim 0 = group size)."""
    chunks = chunks.contiguous()
    out = torch.empty_like(chunks)
    dist.all_to_all_single(out, chunks, group=group)
    return out


def tokens_to_heads(x: torch.Tensor, size: int, group: object) -> torch.Tensor:
    """[..., L/u, H, D] (my tokens, all heads) -> [..., L, H/u, D] (all tokens, my heads), in rank order."""
    *lead, share, heads, dim = x.shape
    chunks = x.reshape(*lead, share, size, heads // size, dim).movedim(-3, 0)  # [u, ..., L/u, H/u, D]
    received = _all_to_all(chunks, group)  # received[i]: rank i's tokens for my heads
    return received.movedim(0, -4).reshape(*lead, size * share, heads // size, dim)


def heads_to_tokens(x: torch.Tensor, size: int, group: object) -> torch.Tensor:
    """[..., L, H/u, D] (all tokens, my heads) -> [..., L/u, H, D] (my tokens, all heads): the inverse."""
    *lead, length, heads, dim = x.shape
    chunks = x.reshape(*lead, size, length // size, heads, dim).movedim(-4, 0)  # [u, ..., L/u, H/u, D]
    received = _all_to_all(chunks, group)  # received[i]: my tokens for rank i's heads
    return received.movedim(0, -3).reshape(*lead, length // size, size * heads, dim)


class UlyssesAttention:
    """An attention kernel over a group's token shards: q, k, v [B, L/u, H, D] -> [B, L/u, H, D].

    `length` is the real token count (without padding); keys and values beyond it are left out.
    """

    def __init__(self, inner: AttentionFn, size: int, group: object, length: int) -> None:
        self.inner, self.size, self.group, self.length = inner, size, group, length

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return self.inner(q, k[:, : self.length], v[:, : self.length])
        q, k, v = tokens_to_heads(torch.stack([q, k, v]), self.size, self.group).unbind(0)  # one all-to-all
        out = self.inner(q, k[:, : self.length], v[:, : self.length])
        return heads_to_tokens(out, self.size, self.group)


@contextmanager
def sequence_parallel_attention(blocks: nn.ModuleList, size: int, group: object, length: int) -> Iterator[None]:
    """Run every block's self-attention through UlyssesAttention around its current kernel, restored afterwards."""
    layers = [block.self_attn for block in blocks]
    kernels = [layer.attend for layer in layers]
    for layer, kernel in zip(layers, kernels):
        layer.attend = UlyssesAttention(kernel, size, group, length)
    try:
        yield
    finally:
        for layer, kernel in zip(layers, kernels):
            layer.attend = kernel
