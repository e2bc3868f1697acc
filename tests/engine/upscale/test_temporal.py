"""Temporal stabiliser and colour fix (wan_core.upscale.temporal) on a synthetic, slowly moving textured clip."""

from __future__ import annotations

import math

import torch
from spandrel.architectures.Compact import Compact

from wan_core.upscale.temporal import TemporalStabilizer, color_fix
from wan_core.upscale.pipeline import upscale_video
from wan_core.upscale.loader import upscale_model_from_state_dict


def compact_x4(color_shift: float = 0.0):
    """Random-weight SRVGGNetCompact x4; `color_shift` is added to the last conv's bias (a model that drifts colours)."""
    torch.manual_seed(0)
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=4)
    with torch.no_grad():
        net.body[-1].bias += color_shift
    return upscale_model_from_state_dict(net.state_dict())


def moving_texture(n: int = 12, h: int = 48, w: int = 64, scale: int = 1, v: tuple[float, float] = (0.35, 0.2)) -> torch.Tensor:
    """[n, h*scale, w*scale, 3]: 24 colour gratings up to near Nyquist, drifting by `v` input pixels per frame."""
    g = torch.Generator().manual_seed(0)
    fx, fy = torch.rand(24, generator=g) * 0.9 * math.pi, torch.rand(24, generator=g) * 0.9 * math.pi
    phase, amp = torch.rand(24, generator=g) * 2 * math.pi, torch.rand(24, 3, generator=g)
    coord = lambda size: (torch.arange(size * scale).float() + 0.5) / scale - 0.5  # noqa: E731 - input-pixel centres
    ys, xs = torch.meshgrid(coord(h), coord(w), indexing="ij")
    out = []
    for t in range(n):
        waves = torch.sin(fx[:, None, None] * (xs - v[0] * t) + fy[:, None, None] * (ys - v[1] * t) + phase[:, None, None])
        out.append(torch.einsum("khw,kc->hwc", waves, amp) / amp.sum(0) * 0.45 + 0.5)
    return torch.stack(out).clamp(0, 1)


def temporal_diff(x: torch.Tensor) -> float:
    return (x[1:] - x[:-1]).abs().mean().item()


def test_stabiliser_lowers_flicker():
    model, clip = compact_x4(), moving_texture()
    truth = moving_texture(scale=4)  # the same pattern rendered at the output resolution
    report = {}
    for strength in (0.0, 0.5):
        out = upscale_video(clip, model, stabilize=strength, frame_batch=4)
        # The metric: temporal change of the output beyond that of the input.
        flicker = temporal_diff(out) - temporal_diff(clip)
        # How much the error against the true high-resolution pattern changes from frame to frame.
        error_flicker = temporal_diff(out - truth)
        report[strength] = (flicker, error_flicker)
    print(f"strength: (flicker, error flicker) {report}")
    assert report[0.5][0] < report[0.0][0] - 1e-3
    assert report[0.5][1] < 0.95 * report[0.0][1]


def test_stabiliser_trusts_only_what_the_flow_explains():
    # A cut: the frame after it shares nothing with the one before, so its detail must stay its own.
    stab = TemporalStabilizer(1.0)
    a, b = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(3))
    base = torch.full((1, 3, 96, 128), 0.5)
    up_a, up_b = torch.rand(2, 1, 3, 96, 128, generator=torch.Generator().manual_seed(4))
    stab(up_a, base, a[None])
    after_cut = stab(up_b, base, b[None])
    assert (after_cut - up_b).abs().mean() < 0.05 * (up_a - up_b).abs().mean()
    # A still frame: the detail is averaged with the previous frame's (strength 1 -> 80 % previous).
    still = TemporalStabilizer(1.0)
    still(up_a, base, a[None])
    blended = still(up_b, base, a[None])
    assert (blended - (0.2 * up_b + 0.8 * up_a)).abs().mean() < 0.01  # flow on identical frames is ~0, not exactly


def test_colour_fix_keeps_every_frame_mean_within_1_of_255():
    model, clip = compact_x4(color_shift=0.15), moving_texture(n=6)
    clip = clip * torch.linspace(0.3, 1.0, 6)[:, None, None, None]  # frames of different brightness
    drift = lambda out: (out.mean(dim=(1, 2)) - clip.mean(dim=(1, 2))).abs().max().item() * 255  # noqa: E731
    without = drift(upscale_video(clip, model, stabilize=0.5, color_fix=False))
    fixed = drift(upscale_video(clip, model, stabilize=0.5, color_fix=True))
    print(f"max mean-colour error x255: without fix {without:.2f}, with fix {fixed:.4f}")
    assert without > 5
    assert fixed <= 1.0
    # Exact size with crop: the reference is the cropped centre of each input frame.
    content = upscale_video(clip, model, target=(128, 128), fit="crop", color_fix=True)
    crop = clip[:, :, 8:56]
    assert ((content.mean(dim=(1, 2)) - crop.mean(dim=(1, 2))).abs().max() * 255) <= 1.0


def test_colour_fix_matches_low_frequencies_only():
    g = torch.Generator().manual_seed(5)
    ref = torch.rand(1, 3, 64, 64, generator=g)
    detail = torch.rand(1, 3, 64, 64, generator=g) - 0.5
    out = color_fix(ref * 0.5 + 0.3 + detail * 0.1, ref, cell=16)
    pooled = lambda x: torch.nn.functional.avg_pool2d(x, 16)  # noqa: E731
    assert (pooled(out) - pooled(ref)).abs().max() < 0.02
    assert (out - ref).abs().mean() > 0.02  # the fine detail is kept, not replaced


def test_match_color_maps_the_measured_statistics_onto_the_reference():
    from wan_core.upscale.temporal import match_color

    clip = moving_texture(6, 16, 16)
    drifted = (clip * torch.tensor([0.8, 1.1, 0.9]) + torch.tensor([0.08, -0.04, 0.02])).clamp(0, 1)
    # The drift measured on the first two frames (the overlap) is undone on all frames.
    fixed = match_color(drifted, drifted[:2], clip[:2])
    before, after = (drifted - clip).abs().mean().item(), (fixed - clip).abs().mean().item()
    print(f"mean |error| {before:.4f} -> {after:.4f}")
    assert after < before / 10  # an exact affine drift, up to the statistics of two frames vs six
    same = match_color(clip, clip[:2], clip[:2])
    assert (same - clip).abs().max().item() < 1e-6  # nothing to fix: unchanged up to fp32 rounding
