"""WanVaceToVideo's latent preparation as our engine function: mask packing, inactive/reactive split, reference frame.

Its equality with core WanVaceToVideo itself (same inputs, core's VAE and ours) runs in the harness's ComfyUI:
tests/comfy/test_vace_parity.py. Here: the exact layout on inputs whose answer is known.
"""

from __future__ import annotations

import pytest
import torch

from wan_core.control.vace_latents import prepare_vace
from wan_core.interop import image_to_video, latent_to_comfy
from wan_core.testing.tiny import vae as tiny
from wan_core.vae.latent_format import WAN21_LATENT_MEAN
from wan_core.vae.model import WanVAE

W, H, LENGTH = 32, 16, 9  # 3 latent frames of 2x4


@pytest.fixture(scope="module")
def encode():
    vae = WanVAE(dim=tiny.TINY_VAE_DIM)
    vae.load_state_dict(tiny.random_state_dict(seed=2))
    vae.eval()

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return latent_to_comfy(vae.encode(image_to_video(images)))["samples"]
    return run


def clip(seed: int = 0, frames: int = LENGTH) -> torch.Tensor:
    return torch.rand(frames, H, W, 3, generator=torch.Generator().manual_seed(seed))


def test_mask_is_8x8_unshuffled_then_nearest_exact_in_time(encode):
    # pixel (y, x) of frame f holds f + (8 * (y % 8) + x % 8) / 100: channel c of latent frame t must hold
    # frame 1, 4 or 7 (nearest-exact from 9 frames to 3: floor((t + 0.5) * 3)) + c / 100 everywhere.
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    offset = (8 * (ys % 8) + xs % 8).float() / 100
    masks = torch.stack([f + offset for f in range(LENGTH)])
    out = prepare_vace(encode, width=W, height=H, length=LENGTH, control_video=clip(), control_masks=masks)
    assert out.mask.shape == (1, 64, 3, H // 8, W // 8)
    expected = torch.tensor([1.0, 4.0, 7.0]).view(1, 3, 1, 1) + torch.arange(64).float().view(64, 1, 1, 1) / 100
    assert torch.allclose(out.mask[0], expected.expand(64, 3, H // 8, W // 8), atol=1e-6)


def test_inactive_and_reactive_halves_split_by_the_mask(encode):
    video = clip(1)
    grey = encode(torch.full_like(video, 0.5))
    everywhere = prepare_vace(encode, width=W, height=H, length=LENGTH, control_video=video)  # default mask: ones
    assert torch.equal(everywhere.frames[:, :16], grey)  # nothing is kept: the inactive half is all grey
    assert torch.equal(everywhere.frames[:, 16:], encode(video))
    nowhere = prepare_vace(encode, width=W, height=H, length=LENGTH, control_video=video,
                           control_masks=torch.zeros(LENGTH, H, W))
    assert torch.equal(nowhere.frames[:, :16], encode(video)) and torch.equal(nowhere.frames[:, 16:], grey)
    assert nowhere.trim == 0 and everywhere.mask.eq(1).all() and nowhere.mask.eq(0).all()


def test_no_control_video_is_all_grey(encode):
    out = prepare_vace(encode, width=W, height=H, length=LENGTH)
    grey = encode(torch.full((LENGTH, H, W, 3), 0.5))
    assert torch.equal(out.frames, torch.cat([grey, grey], dim=1)) and out.notes == []


def test_reference_image_is_one_latent_frame_in_front(encode):
    reference = torch.rand(1, 2 * H, 2 * W, 3, generator=torch.Generator().manual_seed(5))
    plain = prepare_vace(encode, width=W, height=H, length=LENGTH, control_video=clip())
    out = prepare_vace(encode, width=W, height=H, length=LENGTH, control_video=clip(), reference_image=reference)
    assert out.trim == 1 and out.frames.shape == (1, 32, 4, H // 8, W // 8) and out.latent_shape == (16, 4, 2, 4)
    assert torch.equal(out.frames[:, :, 1:], plain.frames) and torch.equal(out.mask[:, :, 1:], plain.mask)
    assert out.mask[:, :, :1].eq(0).all()
    # its reactive half is the raw latent of "zero": the per-channel means
    means = torch.tensor(WAN21_LATENT_MEAN).view(16, 1, 1)
    assert torch.allclose(out.frames[0, 16:, 0], means.expand(16, 2, 4), atol=1e-6)


def test_fitting_the_clip_is_reported(encode):
    out = prepare_vace(encode, width=W, height=H, length=LENGTH, control_video=clip(frames=12),
                       control_masks=torch.ones(3, H, W))
    assert out.notes == ["control_video: used the first 9 of its 12 frames",
                         "control_masks: padded from 3 to 9 frames with value 1"]


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(2, 3, H, W), r"control_masks is \(2, 3, 16, 32\); expected a MASK \[frames, height, width\]"),
    (torch.zeros(0, H, W), r"control_masks is \(0, 16, 32\)"),
])
def test_a_mask_of_the_wrong_shape_is_refused(encode, bad, message):
    with pytest.raises(ValueError, match=message):
        prepare_vace(encode, width=W, height=H, length=LENGTH, control_video=clip(), control_masks=bad)


def test_a_control_video_that_is_not_an_image_batch_is_refused(encode):
    with pytest.raises(ValueError, match=r"control_video is \(16, 32, 3\); expected an IMAGE batch"):
        prepare_vace(encode, width=W, height=H, length=LENGTH, control_video=torch.zeros(H, W, 3))
