"""Spatial tiling with overlap and feathered blending, shared by VAE decode/encode and upscaling.

`tiled_apply` runs a function on overlapping tiles of the last two (H, W) axes and blends the
results with weights that ramp linearly across each overlap, so a tile border leaves no seam and
peak memory is bounded by one tile's activations plus the output itself.
"""

from __future__ import annotations

from typing import Callable

import torch


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length `tile` covering `size`, neighbours overlapping by >= `overlap`."""
    if tile >= size:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile), got overlap {overlap} for tile {tile}")
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def _ramp(length: int, ramp_in: int, ramp_out: int) -> torch.Tensor:
    """1-D blend weights: linear from ~0 to 1 over `ramp_in`, flat, then down to ~0 over `ramp_out`."""
    i = torch.arange(length, dtype=torch.float32) + 0.5
    w = torch.ones(length)
    if ramp_in > 0:
        w = torch.minimum(w, i / ramp_in)
    if ramp_out > 0:
        w = torch.minimum(w, (length - i) / ramp_out)
    return w


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    tile: int | tuple[int, int],
    overlap: int | tuple[int, int],
    scale: int = 1,
    out_dtype: torch.dtype = torch.float32,
    out_device: torch.device | str | None = None,
) -> torch.Tensor:
    """Apply `fn` to overlapping (H, W) tiles of `x` and blend the outputs (each `scale` times larger).

    `fn` maps a tile [..., th, tw] to [..., th*scale, tw*scale]; its leading axes may differ from the
    input's (a VAE decoder turns 16 latent channels and T frames into 3 channels and 4T-3 frames).
    """
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    oh, ow = (overlap, overlap) if isinstance(overlap, int) else overlap
    H, W = x.shape[-2:]
    ys, xs = tile_starts(H, th, oh), tile_starts(W, tw, ow)
    if len(ys) == 1 and len(xs) == 1:
        return fn(x).to(out_dtype)
    out: torch.Tensor | None = None
    weight = torch.zeros(H * scale, W * scale, dtype=torch.float32, device=out_device)
    for yi, y0 in enumerate(ys):
        for xi, x0 in enumerate(xs):
            y1, x1 = min(y0 + th, H), min(x0 + tw, W)
            result = fn(x[..., y0:y1, x0:x1])
            if out is None:
                out = torch.zeros(*result.shape[:-2], H * scale, W * scale, dtype=out_dtype, device=out_device or result.device)
                weight = weight.to(out.device)
            # Ramp only where a neighbour overlaps: the actual overlap with the previous/next tile.
            top = (ys[yi - 1] + th - y0) * scale if yi > 0 else 0
            bottom = (y1 - ys[yi + 1]) * scale if yi + 1 < len(ys) else 0
            left = (xs[xi - 1] + tw - x0) * scale if xi > 0 else 0
            right = (x1 - xs[xi + 1]) * scale if xi + 1 < len(xs) else 0
            w = _ramp(result.shape[-2], top, bottom)[:, None] * _ramp(result.shape[-1], left, right)[None, :]
            w = w.to(out.device)
            ys_, xs_ = slice(y0 * scale, y1 * scale), slice(x0 * scale, x1 * scale)
            out[..., ys_, xs_] += result.to(out.device, out_dtype) * w.to(out_dtype)
            weight[ys_, xs_] += w
            del result
    assert out is not None
    return out / weight.to(out_dtype)
