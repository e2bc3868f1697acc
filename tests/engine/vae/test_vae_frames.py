"""Wan2.1 VAE frame-count rules, streaming progress, auto tiling and the ComfyUI IMAGE conversions."""

from __future__ import annotations

import pytest
import torch

import wan_core.memory.budget as budget
from wan_core.memory.budget import NotEnoughMemoryError
from wan_core.testing.tiny import vae as tiny
from wan_core.interop import image_to_video as comfy_image_to_video
from wan_core.interop import video_to_image as video_to_comfy_image
from wan_core.vae.model import WanVAE
from wan_core.vae.shapes import latent_frames, video_frames


@pytest.fixture(scope="module")
def model() -> WanVAE:
    m = WanVAE(dim=tiny.TINY_VAE_DIM)
    m.load_state_dict(tiny.random_state_dict(seed=0))
    return m.eval()


@pytest.mark.parametrize("frames, latents, size", [(5, 2, 32), (9, 3, 32), (81, 21, 16)])
def test_frame_counts_round_trip(model, frames, latents, size):
    video = torch.rand(1, 3, frames, size, size, generator=torch.Generator().manual_seed(frames)) * 2 - 1
    latent = model.encode(video)
    assert latent.shape == (1, 16, latents, size // 8, size // 8)
    assert latent_frames(frames) == latents and video_frames(latents) == frames
    out = model.decode(latent)
    assert out.shape == (1, 3, frames, size, size)
    assert out.min() >= -1 and out.max() <= 1


@pytest.mark.parametrize("frames, nearest", [(6, "5 or 9"), (8, "5 or 9"), (80, "77 or 81"), (2, "1 or 5")])
def test_other_frame_counts_are_refused_with_the_nearest_valid(model, frames, nearest):
    with pytest.raises(ValueError, match="4n\\+1") as info:
        model.encode(torch.zeros(1, 3, frames, 16, 16))
    assert nearest in str(info.value)


def test_spatial_size_must_be_a_multiple_of_8(model):
    with pytest.raises(ValueError, match="multiples of 8.*16x16"):
        model.encode(torch.zeros(1, 3, 1, 20, 17))


def test_decode_streams_one_latent_frame_at_a_time(model):
    calls = []
    latent = torch.randn(2, 16, 3, 2, 3)
    video = model.decode(latent, on_frame=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    # batch items are independent: decoding one alone gives the same frames
    assert (model.decode(latent[1:]) - video[1:]).abs().max().item() < 1e-5


def test_auto_tiling_follows_free_memory(model, monkeypatch):
    latent = torch.randn(1, 16, 2, 6, 6, generator=torch.Generator().manual_seed(2))
    calls = []
    untiled = model.decode(latent, on_frame=lambda d, t: calls.append(t))
    assert calls[-1] == 2  # plenty of RAM: one pass
    need = model.estimate_peak_bytes(6, 6)
    monkeypatch.setattr(budget, "free_bytes", lambda device: need)
    calls.clear()
    tiled = model.decode(latent, tile_size=4, tile_overlap=2, on_frame=lambda d, t: calls.append(t))
    assert calls[-1] == 2 * 4  # 2x2 tiles, each through both latent frames
    assert tiled.shape == untiled.shape
    calls.clear()
    with pytest.raises(NotEnoughMemoryError, match="untiled needs about .* To fit: set tiling to auto or on"):
        model.decode(latent, tiling="off", on_frame=lambda d, t: calls.append(t))
    assert calls == []  # forced off where it does not fit: refused before any frame


def test_estimate_grows_with_area_not_frames(model):
    small, big = model.estimate_peak_bytes(8, 8), model.estimate_peak_bytes(16, 16)
    assert 3.5 < big / small < 8  # ~4x activations, attention term quadratic


def test_comfy_image_conversion_without_copy(model):
    video = model.decode(torch.randn(1, 16, 2, 2, 3))
    expected = (video.clone() + 1) / 2
    images = video_to_comfy_image(video)
    assert images.shape == (5, 16, 24, 3)
    assert images.data_ptr() == video.data_ptr()  # a view of the decoded clip: no second copy
    assert torch.allclose(images, expected.permute(0, 2, 3, 4, 1).reshape(5, 16, 24, 3))
    back = comfy_image_to_video(images)
    assert back.shape == (1, 3, 5, 16, 24)
    assert torch.allclose(back, expected * 2 - 1, atol=1e-6)
    # a plain contiguous [B,3,F,H,W] tensor is copied once and left untouched without inplace
    plain = torch.zeros(1, 3, 2, 4, 4)
    out = video_to_comfy_image(plain, inplace=False)
    assert out.shape == (2, 4, 4, 3) and out.eq(0.5).all() and plain.eq(0).all()
