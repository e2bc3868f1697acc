"""Sampling settings and sizes are refused up front: NaN/inf by name, latents whose working memory cannot fit."""

from __future__ import annotations

import math

import pytest

from wan_core.dit.model import DiTConfig
from wan_core.memory.budget import NotEnoughMemoryError, room
from wan_core.requests import ModelRequest
from wan_core.sampling.sampler import check_working_memory, working_bytes
from wan_core.sampling.schedule import build_schedule
from wan_core.testing.tiny.dit import TINY_DIT_CONFIG
from wan_core.vae.shapes import latent_shape


@pytest.mark.parametrize("name, value", [("shift", float("nan")), ("shift", float("inf")), ("cfg_high", float("nan")),
                                         ("cfg_low", float("inf")), ("denoise", float("nan")),
                                         ("boundary", float("nan"))])
def test_nan_and_infinite_settings_are_refused_by_name(name, value):
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        build_schedule(**{"steps": 4, name: value})


@pytest.mark.parametrize("steps, message", [(0, "at least 1, got 0"), (10**9, "at most 1000, got 1000000000"),
                                            (2.5, "a whole number, got 2.5"), (True, "a whole number, got True")])
def test_absurd_step_counts_are_refused(steps, message):
    with pytest.raises(ValueError, match=f"^steps must be {message}$"):
        build_schedule(steps, 5.0)


def test_a_nan_boundary_is_refused_when_the_request_is_made():
    with pytest.raises(ValueError, match="^boundary must be a number between 0 and 1"):
        ModelRequest("a", "b", "auto", "auto", "sdpa", float("nan"))


@pytest.mark.parametrize("config", [TINY_DIT_CONFIG, DiTConfig.a14b()], ids=["tiny", "a14b"])
def test_a_4096x4096x1025_frame_latent_is_refused_before_anything_is_allocated(config):
    shape = latent_shape(4096, 4096, 1025, 1)
    need = working_bytes(config, shape)
    assert need > 8 * math.prod(shape) * 4  # the latent's copies plus activations of 16.8 M tokens
    with pytest.raises(NotEnoughMemoryError) as caught:
        check_working_memory(config, shape, "cpu")
    message = str(caught.value)
    assert "(4096x4096 pixels, 1025 frames, batch 1) needs about" in message and "is available" in message
    assert "To fit: lower the width/height, the length or the batch_size" in message
    assert caught.value.needed == need and caught.value.free <= room("cpu") * 1.1


def test_a_small_latent_passes():
    check_working_memory(TINY_DIT_CONFIG, latent_shape(64, 48, 5, 1), "cpu")
