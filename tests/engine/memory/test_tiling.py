"""Tiled application with feathered blending (wan_core.memory.tiling)."""

import torch

from wan_core.memory.tiling import tile_starts, tiled_apply


def test_tile_starts_cover_with_overlap():
    assert tile_starts(100, 40, 8) == [0, 32, 60]
    assert tile_starts(30, 40, 8) == [0]
    assert tile_starts(40, 40, 8) == [0]


def test_pointwise_function_is_reproduced_exactly():
    # A pointwise fn gives the same value from every tile, so blending must return it unchanged
    # (up to fp32 rounding of the weight normalisation).
    x = torch.randn(2, 3, 37, 53, generator=torch.Generator().manual_seed(0))
    fn = lambda t: torch.tanh(t) * 2 + 1  # noqa: E731
    out = tiled_apply(fn, x, tile=16, overlap=5)
    assert (out - fn(x)).abs().max().item() < 1e-6


def test_upscaling_function_with_scale():
    # Nearest-neighbour x2 upscaling is local, so tiling with a scale must equal the untiled result.
    x = torch.randn(1, 3, 20, 28, generator=torch.Generator().manual_seed(1))
    fn = lambda t: t.repeat_interleave(2, -1).repeat_interleave(2, -2)  # noqa: E731
    out = tiled_apply(fn, x, tile=(8, 12), overlap=(3, 4), scale=2)
    assert out.shape == (1, 3, 40, 56)
    assert (out - fn(x)).abs().max().item() < 1e-6


def test_blend_weights_feather_the_overlap():
    # Each tile returns its own index as value: in the overlap the result is a linear mix, so it
    # must lie strictly between neighbouring tiles' values and change monotonically.
    counter = iter(range(100))
    x = torch.zeros(1, 1, 8, 20)
    out = tiled_apply(lambda t: torch.full_like(t, float(next(counter))), x, tile=(8, 12), overlap=(0, 4))
    row = out[0, 0, 0]
    assert row[:8].eq(0).all() and row[12:].eq(1).all()
    overlap = row[8:12]
    assert (overlap > 0).all() and (overlap < 1).all() and (overlap.diff() > 0).all()


def test_cropped_last_tile_keeps_the_stride_and_ends_at_the_edge():
    # The VAE's tiles: the regular stride, the last cut at the edge (diffusers' layout), so each pixel is decoded
    # no more often than the overlap asks; full-size tiles (the upscaler's) move the last one back instead.
    assert tile_starts(16, 8, 2, crop_last=True) == [0, 6, 12]  # [0, 8) [6, 14) [12, 16): 20 px decoded of 16
    assert tile_starts(16, 8, 2) == [0, 6, 8]  # [8, 16) whole: 24 px decoded
    assert tile_starts(24, 8, 2, crop_last=True) == [0, 6, 12, 18]
    assert tile_starts(14, 8, 2, crop_last=True) == [0, 6]
    assert tile_starts(100, 40, 8, crop_last=True) == [0, 32, 64]
    assert tile_starts(8, 8, 2, crop_last=True) == [0]


def test_vae_plan_tiles_cover_the_frame_with_the_overlap_and_cut_the_last_ones():
    from wan_core.memory.tiling import plan_tiles

    tiles = plan_tiles(16, 24, tile=8, overlap=2, scale=8, crop_last=True)
    rows = sorted({(t.src[0].start, t.src[0].stop) for t in tiles})
    cols = sorted({(t.src[1].start, t.src[1].stop) for t in tiles})
    assert rows == [(0, 8), (6, 14), (12, 16)] and cols == [(0, 8), (6, 14), (12, 20), (18, 24)]
    area = sum((t.src[0].stop - t.src[0].start) * (t.src[1].stop - t.src[1].start) for t in tiles) / (16 * 24)
    assert area == 1.5625  # 1.25 x 1.25 (whole tiles moved back: 1.5 x 1.33 = 2.0)
    total = torch.zeros(128, 192)
    for t in tiles:
        total[t.dst] += t.weight
    assert (total - 1).abs().max().item() < 1e-6
