"""Continuing a clip through the front door: the start latent of the next clip, and joining the two clips."""

from __future__ import annotations

import pytest
import torch

from wan_core import api
from wan_core.testing.tiny import vae as tiny_vae


@pytest.fixture(scope="module")
def vae(tmp_path_factory) -> api.VAERequest:
    path = tiny_vae.write_comfy_file(tmp_path_factory.mktemp("vae") / "continuation_vae.safetensors", "vae", seed=4)
    return api.VAERequest(str(path), "fp32")


def clip(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(frames, 48, 64, 3, generator=torch.Generator().manual_seed(seed))


def test_extend_latent_encodes_the_last_frames_first_and_marks_them_kept(vae):
    previous = clip(9)
    start = api.extend_latent(vae, previous, overlap=5, length=13, device=torch.device("cpu"))
    encoded = api.encode(vae, previous[-5:], device=torch.device("cpu"))["samples"]
    assert tuple(start["samples"].shape) == (1, 16, 4, 6, 8)  # 13 frames
    assert start["samples"][:, :, :2].equal(encoded)  # 5 frames -> 2 latent frames, the causal VAE's first one alone
    assert not start["samples"][:, :, 2:].any()
    mask = start["noise_mask"]
    assert tuple(mask.shape) == (1, 1, 4, 6, 8) and not mask[:, :, :2].any() and bool((mask[:, :, 2:] == 1).all())


@pytest.mark.parametrize("overlap, length, frames, message", [
    (4, 13, 9, "overlap_frames must be 4n\\+1 frames"),
    (13, 13, 20, "overlap_frames \\(13\\) must be fewer than the new clip's length \\(13\\)"),
    (9, 13, 5, "the clip has 5 frames, fewer than overlap_frames \\(9\\)"),
])
def test_extend_latent_errors_for_users(vae, overlap, length, frames, message):
    with pytest.raises(ValueError, match=message):
        api.extend_latent(vae, clip(frames), overlap=overlap, length=length, device=torch.device("cpu"))


def test_join_keeps_the_original_frames_and_appends_the_new_ones():
    previous, new = clip(9, seed=1), clip(13, seed=2)
    joined = api.join_continuation(previous, new, overlap=5, color_match=False)
    assert joined.shape[0] == 9 + 13 - 5
    assert joined[:9].equal(previous) and joined[9:].equal(new[5:])


def test_join_colour_match_removes_a_colour_drift_of_the_continuation():
    previous = clip(9, seed=1) * 0.5 + 0.25
    regenerated = torch.cat([previous[-5:], clip(8, seed=3) * 0.5 + 0.25])  # the overlap re-rendered, then new frames
    drift = torch.tensor([1.15, 0.9, 1.0]), torch.tensor([-0.05, 0.06, 0.03])
    drifted = regenerated * drift[0] + drift[1]
    joined = api.join_continuation(previous, drifted, overlap=5, color_match=True)
    error = (joined[9:] - regenerated[5:]).abs().max().item()
    print(f"max |matched - undrifted| {error:.2e} (drift {(drifted - regenerated).abs().max():.3f})")
    assert error < 1e-5  # an affine drift measured on the overlap is undone exactly (fp32)


def test_join_refuses_clips_of_other_sizes():
    with pytest.raises(ValueError, match="the clips differ in size"):
        api.join_continuation(clip(9), torch.rand(13, 32, 32, 3), overlap=5, color_match=True)
