"""The upscaler refuses what cannot fit before allocating, refuses NaN by name, and checks Cancel between tiles."""

from __future__ import annotations

import math

import psutil
import pytest
import torch
from spandrel.architectures.Compact import Compact

from wan_core.memory.budget import NotEnoughMemoryError
from wan_core.memory.pace import ELEMENTS_PER_CHECK, WORK_PER_CHECK, pacing
from wan_core.testing.measure import PeakRSS
from wan_core.upscale.cost import auto_tile_and_batch, model_px_elements, model_px_flops
from wan_core.upscale.loader import upscale_model_from_state_dict
from wan_core.upscale.pipeline import upscale_video


def compact_x4():
    torch.manual_seed(0)
    return upscale_model_from_state_dict(Compact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=4).state_dict())


def test_an_exact_size_of_16384_squared_is_refused_before_any_large_allocation():
    per_frame = 16384 * 16384 * 3 * 4  # the float32 output alone
    frames = math.ceil(1.2 * psutil.virtual_memory().total / per_frame)  # more than this machine has, whatever it is
    clip = torch.rand(frames, 64, 64, 3)
    peak = PeakRSS()
    before = psutil.Process().memory_info().rss
    with pytest.raises(NotEnoughMemoryError) as caught:
        upscale_video(clip, None, target=(16384, 16384), fit="stretch", device="cpu", out_device="cpu")
    message = str(caught.value)
    assert f"upscaling {frames} frame(s) to 16384x16384 needs about" in message and "GiB is available" in message
    assert "To fit:" in message and caught.value.needed > caught.value.free > 0
    assert peak.peak() - before < 256 << 20  # nothing near one frame (3 GiB) was allocated


@pytest.mark.parametrize("name, value", [("scale", float("nan")), ("scale", float("inf")), ("sharpen", float("nan")),
                                         ("stabilize", float("nan")), ("scale", -1.0)])
def test_nan_infinite_and_negative_settings_are_refused_by_name(name, value):
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        upscale_video(torch.rand(1, 8, 8, 3), None, device="cpu", **{name: value})


def test_cancel_is_checked_before_every_model_tile():
    model = compact_x4()
    calls = []
    clip = torch.rand(2, 96, 96, 3)
    out = upscale_video(clip, model, scale=4, tile=32, overlap=8, frame_batch=1, device="cpu", out_device="cpu",
                        check=lambda: calls.append(1))
    tiles = math.ceil((96 - 8) / (32 - 8)) ** 2  # tile starts every 24 px, the last flush with the edge
    # per frame: every tile, then each full-frame stage (after the model, before the base resize, in the stabiliser,
    # before the colour fix, before the final clamp and copy)
    assert len(calls) == 2 * (tiles + 5) and out.shape == (2, 384, 384, 3)

    def cancel_at_third():
        calls.append(1)
        if len(calls) == 3:
            raise InterruptedError("cancelled")

    calls.clear()
    with pytest.raises(InterruptedError):
        upscale_video(clip, model, scale=4, tile=32, overlap=8, device="cpu", check=cancel_at_third)
    assert len(calls) == 3


def test_automatic_tiles_keep_one_model_call_within_the_work_between_checks():
    model = compact_x4()
    budget = 128 * 128 * max(model_px_flops(model), model_px_elements(model) * WORK_PER_CHECK["cpu"]
                             / ELEMENTS_PER_CHECK["cpu"])  # 128x128 px within the flops and the output elements
    with pacing(budget=budget):
        tile, batch = auto_tile_and_batch(model, 720, 1280, "cpu", budget=1 << 40)
        assert tile == 128 and batch == 1
        tile, batch = auto_tile_and_batch(model, 48, 64, "cpu", budget=1 << 40)  # 3072 px: five frames per call
        assert tile is None and batch == 4  # (at most 4 frames per chunk on the CPU)
