"""Colour grading (wan_core.post.grade): clip-wide colour matching in Lab and the user controls, measured in Lab."""

from __future__ import annotations

import math

import pytest
import torch
from kornia.color import lab_to_rgb, rgb_to_lab, rgb_to_linear_rgb

from wan_core.post.grade import Adjustments, grade_clip, lab_stats, match_transform
from wan_core.post.lut import identity_cube


def smooth_lab_clip(frames: int, mean, scale, seed: int, h: int = 32, w: int = 48) -> torch.Tensor:
    """IMAGE [frames, h, w, 3] from smooth random Lab fields around `mean` with per-channel spread `scale`,
    correlated between channels (so the covariance has off-diagonal terms), kept inside the sRGB gamut."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(frames, 3, h // 8, w // 8, generator=g)
    noise = torch.nn.functional.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)
    mix = torch.tensor([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [-0.3, 0.4, 1.0]])
    lab = torch.einsum("ij,fjhw->fihw", mix, noise) * torch.tensor(scale)[:, None, None]
    lab = lab + torch.tensor(mean)[:, None, None]
    return lab_to_rgb(lab, clip=True).permute(0, 2, 3, 1)


def lab_of(frames: torch.Tensor) -> torch.Tensor:
    return rgb_to_lab(frames.permute(0, 3, 1, 2))


CLIP = dict(frames=6, mean=[55.0, 12.0, 18.0], scale=[8.0, 4.0, 5.0], seed=0)  # warm, orange cast
REFERENCE = dict(frames=1, mean=[50.0, -4.0, -6.0], scale=[8.0, 4.0, 3.0], seed=1, h=40, w=56)  # cool, bluish


def test_colour_match_moves_the_clip_lab_statistics_to_the_reference():
    clip, reference = smooth_lab_clip(**CLIP), smooth_lab_clip(**REFERENCE)
    out = grade_clip(clip, reference=reference)
    got, want, before = lab_stats(out), lab_stats(reference), lab_stats(clip)
    # Before: the means are 30.9 Lab units apart. After: exact up to float32 Lab conversions, as every matched
    # colour stays inside the sRGB gamut here (no clamp); measured mean 2e-6 Lab units, covariance 1e-7 relative.
    assert (before.mean - want.mean).norm() > 25
    assert ((out <= 0) | (out >= 1)).sum() == 0
    assert (got.mean - want.mean).abs().max() < 1e-3
    assert (got.cov - want.cov).norm() / want.cov.norm() < 1e-4


def test_colour_match_is_one_transform_for_the_whole_clip():
    clip, reference = smooth_lab_clip(**CLIP), smooth_lab_clip(**REFERENCE)
    clip[4] = clip[1]  # two equal frames in a clip whose frames differ
    out = grade_clip(clip, reference=reference)
    assert torch.equal(out[4], out[1])
    a, b = match_transform(lab_stats(clip), lab_stats(reference))
    lab_in, lab_out = lab_of(clip).double(), lab_of(out).double()
    for f in range(clip.shape[0]):
        x, y = lab_in[f].reshape(3, -1), lab_out[f].reshape(3, -1)
        assert (a @ x + b[:, None] - y).abs().max() < 1e-3, f"frame {f}"
        # Least squares on this frame alone recovers the clip's (A, b): nothing was fitted per frame.
        fit = torch.linalg.lstsq(torch.cat([x, torch.ones(1, x.shape[1], dtype=torch.float64)]).T, y.T).solution.T
        assert (fit[:, :3] - a).abs().max() < 1e-4 and (fit[:, 3] - b).abs().max() < 1e-2, f"frame {f}"


def test_per_frame_matching_would_differ_so_the_clip_transform_is_not_per_frame():
    # The frames' own statistics differ enough that matching them one by one would give other maps.
    clip, reference = smooth_lab_clip(**CLIP), smooth_lab_clip(**REFERENCE)
    clip_map = match_transform(lab_stats(clip), lab_stats(reference))[0]
    frame_map = match_transform(lab_stats(clip[:1]), lab_stats(reference))[0]
    assert (clip_map - frame_map).abs().max() > 0.05


def test_match_strength_zero_leaves_the_clip_and_half_goes_half_way():
    clip, reference = smooth_lab_clip(**CLIP), smooth_lab_clip(**REFERENCE)
    assert torch.equal(grade_clip(clip, reference=reference, match_strength=0.0), clip)
    half = lab_stats(grade_clip(clip, reference=reference, match_strength=0.5))
    expected = (lab_stats(clip).mean + lab_stats(reference).mean) / 2
    assert (half.mean - expected).abs().max() < 0.25


def test_temperature_and_tint_shift_b_and_a_in_lab_units():
    clip = smooth_lab_clip(frames=2, mean=[55.0, 0.0, 0.0], scale=[6.0, 3.0, 3.0], seed=2)
    before = lab_stats(clip).mean
    after = lab_stats(grade_clip(clip, adjust=Adjustments(temperature=10.0, tint=-4.0))).mean
    assert torch.allclose(after - before, torch.tensor([0.0, -4.0, 10.0], dtype=torch.float64), atol=0.05)


def test_saturation_and_contrast_scale_chroma_and_lightness():
    clip = smooth_lab_clip(frames=2, mean=[55.0, 8.0, -6.0], scale=[6.0, 3.0, 3.0], seed=3)
    grey = grade_clip(clip, adjust=Adjustments(saturation=0.0))
    assert (grey - grey.mean(-1, keepdim=True)).abs().max() < 2e-3  # R = G = B: no chroma left
    lab_in, lab_out = lab_of(clip), lab_of(grade_clip(clip, adjust=Adjustments(contrast=1.3)))
    expected = 50 + 1.3 * (lab_in[:, 0] - 50)
    assert (lab_out[:, 0] - expected).abs().max() < 0.05 and (lab_out[:, 1:] - lab_in[:, 1:]).abs().max() < 0.05


def test_exposure_is_in_stops_of_linear_light():
    clip = torch.rand(2, 8, 8, 3, generator=torch.Generator().manual_seed(4)) * 0.6  # linear < 0.33: +1 stop fits
    lin_in = rgb_to_linear_rgb(clip.permute(0, 3, 1, 2))
    lin_out = rgb_to_linear_rgb(grade_clip(clip, adjust=Adjustments(exposure=1.0)).permute(0, 3, 1, 2))
    assert torch.allclose(lin_out, 2 * lin_in, atol=1e-5)


def test_lut_strength_mixes_the_lut_with_the_graded_colours():
    clip = torch.rand(2, 8, 8, 3, generator=torch.Generator().manual_seed(5))
    invert = identity_cube(2)
    invert = type(invert)("invert", (type(invert.stages[0])(3, 1 - invert.stages[0].table),))
    assert torch.allclose(grade_clip(clip, lut=invert), 1 - clip, atol=1e-6)
    assert torch.allclose(grade_clip(clip, lut=invert, lut_strength=0.25), 0.75 * clip + 0.25 * (1 - clip), atol=1e-6)


def test_defaults_change_nothing_and_progress_counts_frames():
    clip = torch.rand(10, 4, 4, 3, generator=torch.Generator().manual_seed(6))
    calls = []
    assert torch.equal(grade_clip(clip, progress=lambda d, t: calls.append((d, t))), clip)
    assert calls == [(8, 10), (10, 10)]


@pytest.mark.parametrize("shape", [(4, 4, 3), (2, 3, 4, 4)])
def test_bad_shapes_say_what_was_expected(shape):
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
        grade_clip(torch.zeros(shape))


def test_lab_conversion_is_srgb_d65():
    # sRGB mid-grey 0.5 is L* 53.39 (CIE, D65); kornia decodes the sRGB curve before XYZ.
    assert math.isclose(lab_of(torch.full((1, 1, 1, 3), 0.5))[0, 0].item(), 53.39, abs_tol=0.01)
