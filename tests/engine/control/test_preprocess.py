"""Model-free control preprocessing: Canny, soft edges, tile, grayscale on analytic frames; size and 4n+1 fitting."""

from __future__ import annotations

import pytest
import torch

from wan_core.control.frames import resize_center
from wan_core.control.preprocess import preprocess, target_size

H, W = 24, 32


def step_clip(frames: int = 5, column: int = 16) -> torch.Tensor:
    """Frames black left of `column`, white from it on: one vertical edge."""
    clip = torch.zeros(frames, H, W, 3)
    clip[:, :, column:] = 1.0
    return clip


def test_canny_marks_the_step_edge_and_nothing_else():
    out = preprocess(step_clip(), "canny", width=W, height=H, length=5).images
    assert out.shape == (5, H, W, 3) and torch.equal(out[..., 0], out[..., 2])
    columns = out[0, 4:-4, :, 0].nonzero()[:, 1].unique().tolist()  # rows away from the border
    assert len(columns) == 1 and columns[0] in (15, 16)  # a one-pixel edge at the step
    assert set(out.unique().tolist()) == {0.0, 1.0}


def test_canny_thresholds_above_the_gradient_find_no_edge():
    # A 0 -> 0.2 step is a luminance step of 51: Sobel magnitude 4 * 51 = 204 < 300.
    out = preprocess(step_clip() * 0.2, "canny", low_threshold=300, high_threshold=400, width=W, height=H, length=5)
    assert out.images.eq(0).all()
    assert preprocess(step_clip() * 0.2, "canny", low_threshold=50, high_threshold=100, width=W, height=H,
                      length=5).images.max() == 1.0


def test_soft_edges_peak_at_the_step_and_vanish_on_flat_regions():
    out = preprocess(step_clip(), "soft edges", blur=1.0, width=W, height=H, length=5).images[0, :, :, 0]
    assert out.max() == 1.0 and out[:, 15:17].min() > 0.5
    assert out[:, :8].max() < 1e-3 and out[:, 24:].max() < 1e-3


def test_tile_blur_keeps_flat_colour_and_softens_the_edge():
    colour = torch.tensor([0.2, 0.5, 0.9])
    flat = preprocess(colour.expand(5, H, W, 3).clone(), "tile", blur=3.0, width=W, height=H, length=5).images
    assert torch.allclose(flat, colour.expand_as(flat), atol=1e-6)
    edge = preprocess(step_clip(), "tile", blur=3.0, width=W, height=H, length=5).images[0, H // 2, :, 0]
    assert 0.2 < edge[15] < 0.5 < edge[16] < 0.8 and edge[0] < 1e-3


def test_grayscale_is_the_bt601_luminance_in_three_channels():
    colour = torch.tensor([1.0, 0.5, 0.25])
    out = preprocess(colour.expand(1, H, W, 3).clone(), "grayscale", width=W, height=H, length=1).images
    assert torch.allclose(out, torch.full_like(out, 0.299 + 0.587 * 0.5 + 0.114 * 0.25), atol=1e-4)


def test_length_zero_keeps_the_largest_4n_plus_1_frames():
    out = preprocess(step_clip(frames=12), "none", width=0, height=0, length=0)
    assert out.images.shape[0] == 9 and out.notes == ["used the first 9 of 12 frames (4n+1)"]
    assert torch.equal(out.images, step_clip(frames=9))


@pytest.mark.parametrize("pad, last", [("grey", 0.5), ("repeat last frame", None)])
def test_a_short_clip_is_padded_after_processing(pad, last):
    clip = torch.rand(3, H, W, 3, generator=torch.Generator().manual_seed(1))
    out = preprocess(clip, "none", width=W, height=H, length=5, pad=pad)
    assert out.images.shape[0] == 5 and torch.equal(out.images[:3], clip)
    expected = torch.full_like(clip[:2], last) if last is not None else clip[2:].expand(2, -1, -1, -1)
    assert torch.equal(out.images[3:], expected)
    assert out.notes[-1].startswith("padded from 3 to 5 frames")


def test_resize_is_a_centre_crop_to_the_aspect_then_bilinear():
    clip = torch.rand(2, H, W, 3, generator=torch.Generator().manual_seed(2))
    out = preprocess(clip, "none", width=16, height=16, length=1)
    # 32x24 -> square: crop round((32 - 32 * (1 / (32/24))) / 2) = 4 columns each side, then 24 -> 16 bilinear
    expected = torch.nn.functional.interpolate(clip[:1, :, 4:28].movedim(-1, 1), size=(16, 16), mode="bilinear")
    assert torch.equal(out.images, expected.movedim(1, -1).clamp(0, 1))
    assert out.notes[0] == "resized from 32x24 to 16x16 (centre crop to the aspect ratio)"
    assert torch.equal(resize_center(clip, W, H), clip)  # same size: untouched


def test_one_side_zero_follows_the_aspect_ratio():
    assert target_size(832, 0, 1920, 1080) == (832, 464)
    assert target_size(0, 480, 1920, 1080) == (848, 480)
    assert target_size(0, 0, 1920, 1080) == (1920, 1080)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="low threshold"):
        preprocess(step_clip(), "canny", low_threshold=200, high_threshold=100)
    with pytest.raises(ValueError, match="control mode must be one of"):
        preprocess(step_clip(), "depth")
