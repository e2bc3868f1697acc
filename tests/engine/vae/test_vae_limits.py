"""The VAE refuses, before allocating, what cannot fit: the decoded video, an untiled run asked for with tiling off."""

from __future__ import annotations

import math

import psutil
import pytest
import torch

from wan_core.memory.budget import NotEnoughMemoryError
from wan_core.testing.tiny.vae import random_state_dict
from wan_core.vae.model import WanVAE


@pytest.fixture(scope="module")
def vae() -> WanVAE:
    model = WanVAE(dim=8)
    model.load_state_dict(random_state_dict(8))
    return model.eval()


def test_a_video_larger_than_memory_is_refused_before_decoding(vae):
    h = w = 64  # 512x512 frames: 3 MiB each as float32 RGB
    frames = math.ceil(1.2 * psutil.virtual_memory().total / (8 * h * 8 * w * 3 * 4))
    t_lat = (frames - 1) // 4 + 2
    latent = torch.zeros(1, 16, 1, 1, 1).expand(1, 16, t_lat, h, w)  # no memory behind it
    with pytest.raises(NotEnoughMemoryError) as caught:
        vae.decode(latent, tiling="on", tile_size=32)
    message = str(caught.value)
    assert f"the decoded video ({1 + 4 * (t_lat - 1)} frames of 512x512 (batch 1)) takes" in message
    assert "is available" in message and "To fit: decode fewer frames" in message


def test_tiling_off_at_a_size_that_cannot_fit_says_to_turn_it_on(vae):
    side = int(math.sqrt(psutil.virtual_memory().total / 4)) // 8  # one fp32 score matrix per frame exceeds memory
    latent = torch.zeros(1, 16, 1, 1, 1).expand(1, 16, 1, side, side)
    with pytest.raises(NotEnoughMemoryError, match=r"untiled needs about .* To fit: set tiling to auto or on"):
        vae.decode(latent, tiling="off")


def test_overlap_errors_are_in_image_pixels(vae):
    with pytest.raises(ValueError, match=r"tile_overlap must be at most half the tile: got 160 px for a 256-px tile"):
        vae.decode(torch.zeros(1, 16, 1, 40, 40), tiling="on", tile_size=32, tile_overlap=20)
