"""Long-lived buffers rewritten in place: a run's state kept across steps reuses its storage instead of a new
tensor beside the old one at every step (which doubles it while both live and fragments the heap around the
steps' activations)."""

from __future__ import annotations

import torch


def kept_buffer(kept: torch.Tensor | None, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`kept` when it still has `like`'s shape and device and the dtype (`like`'s by default), else a new empty one."""
    dtype = like.dtype if dtype is None else dtype
    if kept is not None and kept.shape == like.shape and kept.dtype == dtype and kept.device == like.device:
        return kept
    return torch.empty(like.shape, dtype=dtype, device=like.device)
