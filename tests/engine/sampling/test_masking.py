"""Kept regions (ComfyUI's noise_mask semantics, 1 = denoise, 0 = keep): the continuation of a clip's last frames."""

from __future__ import annotations

import pytest
import torch

from wan_core.dit.model import WanDiT
from wan_core.testing.tiny.dit import perturbed_dit
from wan_core.sampling.experts import ResidentExperts
from wan_core.sampling.sampler import make_noise, sample_moe
from wan_core.sampling.schedule import build_schedule

SHAPE = (1, 16, 4, 8, 8)
RUN = dict(steps=4, shift=5.0, seed=5)


@pytest.fixture(scope="module")
def models() -> tuple[WanDiT, WanDiT]:
    return perturbed_dit(1), perturbed_dit(2)


@pytest.fixture(scope="module")
def text() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(7, 64, generator=g), torch.randn(5, 64, generator=g)


def start_latent() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(21))


def frame_mask(keep: int) -> torch.Tensor:
    mask = torch.ones(1, 1, SHAPE[2], 1, 1)
    mask[:, :, :keep] = 0
    return mask


def test_kept_frames_come_out_exactly_and_are_fed_noised_to_each_sigma(models, text):
    latent = start_latent()
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append(args[0][:1, :, :2].clone())) for m in models]
    try:
        out = sample_moe(ResidentExperts(*models), [text[0]], [text[1]], latent=latent, mask=frame_mask(2),
                         cfg_batch="off", **RUN)
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(out[:, :, :2], latent[:, :, :2])
    noise, sigmas = make_noise(SHAPE, RUN["seed"]), build_schedule(4, 5.0).sigmas
    for step in range(4):  # cond and uncond pass per step
        expected = sigmas[step] * noise[:, :, :2] + (1 - sigmas[step]) * latent[:, :, :2]
        assert torch.allclose(seen[2 * step], expected, atol=1e-6)  # fp32 rounding of the two products
    assert not torch.equal(out[:, :, 2:], sample_moe(ResidentExperts(*models), [text[0]], [text[1]], shape=SHAPE,
                                                       **RUN)[:, :, 2:])  # the kept frames steer the new ones


def test_a_mask_of_ones_is_the_plain_run(models, text):
    plain = sample_moe(ResidentExperts(*models), [text[0]], [text[1]], latent=start_latent(), **RUN)
    masked = sample_moe(ResidentExperts(*models), [text[0]], [text[1]], latent=start_latent(),
                        mask=torch.ones(1, 1, SHAPE[2], 1, 1), **RUN)
    assert torch.equal(masked, plain)


def test_a_mask_needs_an_input_latent(models, text):
    with pytest.raises(ValueError, match="a noise mask keeps parts of the input latent"):
        sample_moe(ResidentExperts(*models), [text[0]], [text[1]], shape=SHAPE, mask=frame_mask(1), **RUN)
