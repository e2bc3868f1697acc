"""WanDiT against diffusers' WanTransformer3DModel on tiny random weights (CPU, fp32)."""

from __future__ import annotations


import pytest
import torch

from wan_core.dit.model import DiTConfig, WanDiT
from wan_core.testing.tiny.dit import TINY_DIT_CONFIG, random_state_dict

from diffusers_testing import reference_model, sinusoid_float64  # noqa: E402
from diffusers.models import embeddings as diffusers_embeddings  # noqa: E402

# (config, latent [C, F, H, W]): non-square latents, more than one latent frame, 2+ layers.
CONFIGS = {
    "tiny_128_heads": (TINY_DIT_CONFIG, (16, 3, 6, 10)),
    "64_heads_3_layers": (DiTConfig(dim=256, ffn_dim=384, num_heads=4, num_layers=3, text_dim=96, freq_dim=128), (16, 2, 8, 4)),
}


def ours(config: DiTConfig, sd: dict[str, torch.Tensor]) -> WanDiT:
    model = WanDiT(config)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def inputs(config: DiTConfig, latent: tuple[int, ...], batch: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *latent, generator=gen)
    t = torch.tensor([999.0, 413.0][:batch])
    lengths = [7, 19][:batch]
    context = [torch.randn(n, config.text_dim, generator=gen) for n in lengths]
    return x, t, context


def padded(context: list[torch.Tensor], text_len: int = 512) -> torch.Tensor:
    """The zero-padded [B, 512, text_dim] context the official pipeline (and diffusers') feeds the DiT."""
    out = torch.zeros(len(context), text_len, context[0].shape[-1])
    for i, c in enumerate(context):
        out[i, : c.shape[0]] = c
    return out


@pytest.fixture(params=list(CONFIGS), scope="module")
def pair(request):
    config, latent = CONFIGS[request.param]
    sd = random_state_dict(config, seed=3)
    return config, latent, ours(config, sd), reference_model(config, sd)


@torch.no_grad()
def test_matches_diffusers_fp32_sinusoid(pair):
    # diffusers computes the time sinusoid in fp32 (official: fp64): ~3e-5 embedding error -> ~2e-4 output.
    config, latent, model, ref = pair
    x, t, context = inputs(config, latent, batch=2)
    expected = ref(x, t, padded(context), return_dict=False)[0]
    got = model(x, t, context)
    assert got.shape == expected.shape == x.shape
    diff = (got - expected).abs().max().item()
    assert diff <= 5e-4, diff


@torch.no_grad()
def test_matches_diffusers_float64_sinusoid(pair, monkeypatch):
    # diffusers' Timesteps.forward looks get_timestep_embedding up in diffusers.models.embeddings at call time,
    # so replacing the module attribute makes the reference's sinusoid float64 like the official code.
    monkeypatch.setattr(diffusers_embeddings, "get_timestep_embedding", sinusoid_float64)
    config, latent, model, ref = pair
    x, t, context = inputs(config, latent, batch=2)
    expected = ref(x, t, padded(context), return_dict=False)[0]
    diff = (model(x, t, context) - expected).abs().max().item()
    assert diff <= 5e-5, diff


@torch.no_grad()
def test_batch_of_two_equals_two_single_calls(pair):
    # cond + uncond in one forward: different timesteps and contexts per sample.
    config, latent, model, _ = pair
    x, t, context = inputs(config, latent, batch=2)
    both = model(x, t, context)
    singles = torch.cat([model(x[i:i + 1], t[i:i + 1], [context[i]]) for i in range(2)])
    assert (both - singles).abs().max().item() <= 1e-5
    assert (both[0] - both[1]).abs().max().item() > 1e-2  # the two samples really differ


@torch.no_grad()
def test_context_padding_to_512_matters():
    # Pinned vector of the official behaviour: padded slots contribute text_embedding(0) and are attended to.
    config, latent = CONFIGS["tiny_128_heads"]
    sd = random_state_dict(config, seed=3)
    model, ref = ours(config, sd), reference_model(config, sd)
    x, t, context = inputs(config, latent, batch=1)
    unpadded = ref(x, t, context[0][None], return_dict=False)[0]
    ours_out = model(x, t, context)
    assert (ours_out - ref(x, t, padded(context), return_dict=False)[0]).abs().max().item() <= 5e-4
    assert (ours_out - unpadded).abs().max().item() > 1e-2


@torch.no_grad()
def test_scalar_timestep_broadcasts_and_list_or_tensor_context_agree():
    config, latent = CONFIGS["tiny_128_heads"]
    model = ours(config, random_state_dict(config, seed=4))
    x, _, context = inputs(config, latent, batch=2)
    same_len = [c[:7] for c in context]
    out_list = model(x, 500.0, same_len)
    out_tensor = model(x, torch.tensor([500.0, 500.0]), torch.stack(same_len))
    assert torch.equal(out_list, out_tensor)
