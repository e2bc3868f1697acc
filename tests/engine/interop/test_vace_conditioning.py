"""Core's VACE conditioning keys <-> the sampler's control streams (interop), and appending them as core does.

That the normalised context equals ComfyUI's own WAN21_Vace.extra_conds runs in the harness's ComfyUI
(tests/comfy/test_vace_parity.py); here: defaults, alignment of our ranges with core's lists, and the refusals.
"""

from __future__ import annotations

import pytest
import torch

from wan_core.interop import VACE_RANGES, append_vace, conditioning_to_control

GRID = (2, 3, 4)


def text() -> list:
    return [[torch.zeros(1, 512, 4096), {"pooled_output": None}]]


def frames(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 32, *GRID, generator=torch.Generator().manual_seed(seed))


def core_append(conditioning: list, value: torch.Tensor, mask: torch.Tensor, strength: float) -> list:
    """What core WanVaceToVideo writes (node_helpers.conditioning_set_values(..., append=True))."""
    out = []
    for cond, extra in conditioning:
        extra = dict(extra)
        for key, v in (("vace_frames", value), ("vace_mask", mask), ("vace_strength", strength)):
            extra[key] = (extra.get(key) or []) + [v]
        out.append([cond, extra])
    return out


def test_plain_text_conditioning_has_no_control():
    assert conditioning_to_control(text(), "positive") == ()


def test_missing_mask_and_strength_default_to_ones_and_one():
    conditioning = [[torch.zeros(1, 512, 4096), {"vace_frames": [frames()]}]]
    (stream,) = conditioning_to_control(conditioning, "positive")
    assert stream.context.shape == (1, 96, *GRID) and stream.strength == 1.0 and stream.ranges is None
    assert stream.context[:, 32:].eq(1).all()


def test_our_ranges_stay_aligned_with_core_streams_around_them():
    mask = torch.ones(1, 64, *GRID)
    cond = core_append(text(), frames(1), mask, 0.5)
    ours = {"high": (0.0, 1.0), "low": (0.0, 0.5)}
    cond = append_vace(cond, frames(2), mask, 1.0, ours)
    cond = core_append(cond, frames(3), mask, 2.0)
    streams = conditioning_to_control(cond, "positive")
    assert [(s.strength, s.ranges) for s in streams] == [(0.5, None), (1.0, ours), (2.0, None)]
    assert cond[0][1][VACE_RANGES] == [None, ours]  # core's later append does not know our key


def test_append_leaves_the_input_conditioning_untouched():
    original = text()
    append_vace(original, frames(), torch.ones(1, 64, *GRID), 1.0, None)
    assert set(original[0][1]) == {"pooled_output"}


@pytest.mark.parametrize("extra, message", [
    ({"vace_frames": [frames()], "vace_mask": [torch.ones(1, 64, 2, 3, 5)]},
     r"vace_mask is \(1, 64, 2, 3, 5\); expected \[1, 64, 2, 3, 4\]"),
    ({"vace_frames": [frames()], "vace_mask": [torch.ones(1, 16, *GRID)]}, r"vace_mask is \(1, 16, 2, 3, 4\)"),
    ({"vace_frames": [torch.zeros(1, 16, *GRID)]}, r"vace_frames is \(1, 16, 2, 3, 4\); expected \[batch, 32,"),
    ({"vace_frames": [frames(), frames()], "vace_strength": [1.0]}, "2 VACE control videos .* but 1 'vace_strength'"),
    ({"vace_mask": [torch.ones(1, 64, *GRID)]}, "has vace_mask but no vace_frames"),
    ({"vace_frames": frames()}, "'vace_frames' is a Tensor; core WanVaceToVideo writes a list"),
    ({"vace_frames": [frames() * float("nan")]}, "NaN or infinite"),
])
def test_malformed_vace_keys_are_refused_saying_what_is_wrong(extra, message):
    with pytest.raises(ValueError, match=message):
        conditioning_to_control([[torch.zeros(1, 512, 4096), extra]], "negative")
