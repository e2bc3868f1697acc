"""Spatial tiling with overlap and feathered blending, shared by VAE decode/encode and upscaling.

`tiled_apply` runs a function on overlapping tiles of the last two (H, W) axes and blends the
results with weights that ramp linearly across each overlap, so a tile border leaves no seam and
peak memory is bounded by one tile's activations plus the output itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .pace import current

def tile_starts(size: int, tile: int, overlap: int, *, crop_last: bool = False) -> list[int]:
    """Start offsets of tiles of length `tile` covering `size`, neighbours overlapping by >= `overlap`.

    The last tile ends at `size`: full length, moved back over its neighbour (a model that needs its input's
    size, an upscaler's windows, gets whole tiles), or with `crop_last` at the regular stride and cut at the edge,
    so no pixel is computed more often than the overlap asks (the VAE, which takes any size)."""
    if tile >= size:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile), got overlap {overlap} for tile {tile}")
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    starts.append(starts[-1] + stride if crop_last else size - tile)  # range stops short of size - tile
    return starts


def _ramp(length: int, ramp_in: int, ramp_out: int, margin: int = 0) -> torch.Tensor:
    """1-D blend weights: 0 over `margin`, linear up to 1 by `ramp_in - margin`, flat, then the mirror over `ramp_out`."""
    i = torch.arange(length, dtype=torch.float32) + 0.5
    w = torch.ones(length)
    if ramp_in > 0:
        m = min(margin, (ramp_in - 1) // 2)
        w = torch.minimum(w, ((i - m) / (ramp_in - 2 * m)).clamp(min=0))
    if ramp_out > 0:
        m = min(margin, (ramp_out - 1) // 2)
        w = torch.minimum(w, ((length - i - m) / (ramp_out - 2 * m)).clamp(min=0))
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
    margin: int = 0,
) -> torch.Tensor:
    """Apply `fn` to overlapping (H, W) tiles of `x` and blend the outputs (each `scale` times larger).

    `fn` maps a tile [..., th, tw] to [..., th*scale, tw*scale]; its leading axes may differ from the
    input's (a VAE decoder turns 16 latent channels and T frames into 3 channels and 4T-3 frames).
    `margin` input pixels at each side a neighbour overlaps get weight 0 (the ramp runs between them), so a
    function whose receptive field reaches at most `margin` pixels gives the untiled result; it must stay
    below half the overlap. The run's cancel check (memory.pace) runs before every tile.
    """
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    oh, ow = (overlap, overlap) if isinstance(overlap, int) else overlap
    H, W = x.shape[-2:]
    ys, xs = tile_starts(H, th, oh), tile_starts(W, tw, ow)
    if len(ys) == 1 and len(xs) == 1:
        current().tick()
        return fn(x).to(out_dtype)
    out: torch.Tensor | None = None
    weight = torch.zeros(H * scale, W * scale, dtype=torch.float32, device=out_device)
    for yi, y0 in enumerate(ys):
        for xi, x0 in enumerate(xs):
            y1, x1 = min(y0 + th, H), min(x0 + tw, W)
            current().tick()
            result = fn(x[..., y0:y1, x0:x1])
            if out is None:
                out = torch.zeros(*result.shape[:-2], H * scale, W * scale, dtype=out_dtype, device=out_device or result.device)
                weight = weight.to(out.device)
            # Ramp only where a neighbour overlaps: the actual overlap with the previous/next tile.
            top = (ys[yi - 1] + th - y0) * scale if yi > 0 else 0
            bottom = (y1 - ys[yi + 1]) * scale if yi + 1 < len(ys) else 0
            left = (xs[xi - 1] + tw - x0) * scale if xi > 0 else 0
            right = (x1 - xs[xi + 1]) * scale if xi + 1 < len(xs) else 0
            w = _ramp(result.shape[-2], top, bottom, margin * scale)[:, None] * _ramp(result.shape[-1], left, right, margin * scale)[None, :]
            w = w.to(out.device)
            ys_, xs_ = slice(y0 * scale, y1 * scale), slice(x0 * scale, x1 * scale)
            out[..., ys_, xs_] += result.to(out.device, out_dtype) * w.to(out_dtype)
            weight[ys_, xs_] += w
            del result
    assert out is not None
    return out / weight.to(out_dtype)


@dataclass(frozen=True)
class TileSpec:
    """One tile of a streamed, blended tiling: where it reads, where it writes, and its normalised weight."""

    src: tuple[slice, slice]
    dst: tuple[slice, slice]
    weight: torch.Tensor  # [th * scale, tw * scale]; the weights of all tiles sum to 1 at every output pixel


def plan_tiles(
    height: int,
    width: int,
    *,
    tile: int | tuple[int, int],
    overlap: int | tuple[int, int],
    scale: int = 1,
    margin: int = 0,
    device: torch.device | str | None = None,
    crop_last: bool = False,
) -> list[TileSpec]:
    """Tiles covering (height, width) with the same feathered ramps as `tiled_apply`, weights pre-normalised.

    With normalised weights a caller can accumulate `out[dst] += result * weight` tile by tile (and frame by
    frame) into a preallocated output, with no second output-sized weight buffer and no final division.
    `crop_last`: the last row / column of tiles cut at the edge (see `tile_starts`).
    """
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    oh, ow = (overlap, overlap) if isinstance(overlap, int) else overlap
    ys, xs = tile_starts(height, th, oh, crop_last=crop_last), tile_starts(width, tw, ow, crop_last=crop_last)
    raw: list[tuple[tuple[slice, slice], tuple[slice, slice], torch.Tensor]] = []
    total = torch.zeros(height * scale, width * scale, dtype=torch.float32)
    for yi, y0 in enumerate(ys):
        for xi, x0 in enumerate(xs):
            y1, x1 = min(y0 + th, height), min(x0 + tw, width)
            top = (ys[yi - 1] + th - y0) * scale if yi > 0 else 0
            bottom = (y1 - ys[yi + 1]) * scale if yi + 1 < len(ys) else 0
            left = (xs[xi - 1] + tw - x0) * scale if xi > 0 else 0
            right = (x1 - xs[xi + 1]) * scale if xi + 1 < len(xs) else 0
            m = margin * scale
            w = _ramp((y1 - y0) * scale, top, bottom, m)[:, None] * _ramp((x1 - x0) * scale, left, right, m)[None, :]
            dst = (slice(y0 * scale, y1 * scale), slice(x0 * scale, x1 * scale))
            total[dst] += w
            raw.append(((slice(y0, y1), slice(x0, x1)), dst, w))
    if not bool((total > 0).all()):
        raise ValueError(f"tiles of {tile} with overlap {overlap} and margin {margin} leave pixels without weight; "
                         "use a larger tile or a smaller overlap")
    return [TileSpec(src, dst, (w / total[dst]).to(device)) for src, dst, w in raw]
