"""The VACE branch of WanDiT: off and free without control, strength 0 exact, streams stack, diffusers' VACE parity.

ComfyUI's native VaceWanModel parity (one and two streams) runs in the harness's ComfyUI: tests/comfy/test_vace_parity.py.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from wan_core.dit.keys import official_to_diffusers
from wan_core.dit.model import WanDiT
from wan_core.dit.vace import VaceInput, layer_mapping
from wan_core.testing.tiny.dit import TINY_VACE_CONFIG, random_state_dict, split_vace

from diffusers import WanVACETransformer3DModel  # noqa: E402
from diffusers.models import embeddings as diffusers_embeddings  # noqa: E402

from test_dit_parity import padded, sinusoid_float64  # noqa: E402  (same reference conventions as the plain DiT)

CONFIG = TINY_VACE_CONFIG
LATENT = (16, 2, 6, 8)  # 2 latent frames of 6x8: 24 tokens


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return random_state_dict(CONFIG, seed=21)


@pytest.fixture(scope="module")
def model(weights) -> WanDiT:
    m = WanDiT(CONFIG)
    m.load_state_dict(weights, strict=True)
    return m.eval()


@pytest.fixture(scope="module")
def plain(weights) -> WanDiT:
    base, _ = split_vace(weights)
    m = WanDiT(replace(CONFIG, vace_layers=0))
    m.load_state_dict(base, strict=True)
    return m.eval()


def inputs(batch: int = 2, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *LATENT, generator=gen)
    t = torch.tensor([875.0, 312.0][:batch])
    context = [torch.randn(n, CONFIG.text_dim, generator=gen) for n in (7, 19)[:batch]]
    vace = [torch.randn(batch, 96, *LATENT[1:], generator=gen) for _ in range(2)]
    return x, t, context, vace


def control(contexts, *strengths) -> VaceInput:
    batch = contexts[0].shape[0]
    return VaceInput(tuple(contexts), tuple(torch.full((batch,), float(s)) for s in strengths))


def test_a14b_mapping_puts_eight_vace_blocks_after_every_fifth_block():
    assert layer_mapping(40, 8) == {0: 0, 5: 1, 10: 2, 15: 3, 20: 4, 25: 5, 30: 6, 35: 7}
    assert layer_mapping(4, 2) == {0: 0, 2: 1}
    with pytest.raises(ValueError, match="do not divide"):
        layer_mapping(40, 6)  # ComfyUI's mapping would name 7 blocks for 6


@torch.no_grad()
def test_without_control_a_vace_expert_is_the_plain_expert_bit_for_bit(model, plain):
    x, t, context, _ = inputs()
    assert torch.equal(model(x, t, context), plain(x, t, context))


@torch.no_grad()
def test_strength_zero_equals_the_plain_expert_exactly(model, plain):
    x, t, context, vace = inputs()
    expected = plain(x, t, context)
    assert torch.equal(model(x, t, context, control=control(vace[:1], 0.0)), expected)
    assert torch.equal(model(x, t, context, control=control(vace, 0.0, 0.0)), expected)
    changed = (model(x, t, context, control=control(vace[:1], 1.0)) - expected).abs().max().item()
    assert changed > 1e-1  # the hints are not negligible, so the equalities above say something


@torch.no_grad()
def test_a_zero_strength_stream_beside_a_live_one_changes_nothing(model):
    x, t, context, vace = inputs()
    one = model(x, t, context, control=control(vace[:1], 0.8))
    assert torch.equal(model(x, t, context, control=control(vace, 0.8, 0.0)), one)


@torch.no_grad()
def test_per_item_strengths_equal_single_item_runs(model):
    # cond and uncond as one batch, each with its own strength: the same as running them apart.
    x, t, context, vace = inputs()
    both = model(x, t, context, control=VaceInput((vace[0],), (torch.tensor([1.0, 0.4]),)))
    for i, s in enumerate((1.0, 0.4)):
        single = model(x[i:i + 1], t[i:i + 1], [context[i]], control=control([vace[0][i:i + 1]], s))
        assert (both[i:i + 1] - single).abs().max().item() <= 1e-5


@torch.no_grad()
def test_two_streams_are_not_one_stream_twice(model):
    x, t, context, vace = inputs()
    two = model(x, t, context, control=control(vace, 1.0, 1.0))
    first = model(x, t, context, control=control(vace[:1], 1.0))
    doubled = model(x, t, context, control=control([vace[0], vace[0]], 1.0, 1.0))
    assert (two - first).abs().max().item() > 1e-2 and (two - doubled).abs().max().item() > 1e-2


@torch.no_grad()
def test_control_of_another_size_is_refused_naming_both_grids(model):
    x, t, context, _ = inputs(batch=1)
    wrong = torch.zeros(1, 96, 2, 6, 6)
    with pytest.raises(ValueError, match=r"covers a latent grid of \(2, 3, 3\) patches but the video is \(2, 3, 4\)"):
        model(x, t, context, control=control([wrong], 1.0))


@torch.no_grad()
def test_control_on_a_plain_expert_is_refused(plain):
    x, t, context, vace = inputs(batch=1)
    with pytest.raises(ValueError, match="has no VACE blocks"):
        plain(x, t, context, control=control(vace[:1], 1.0))


def diffusers_vace(weights: dict[str, torch.Tensor]) -> WanVACETransformer3DModel:
    """diffusers' VACE transformer at CONFIG holding the same weights renamed to its keys (strict load)."""
    ref = WanVACETransformer3DModel(
        patch_size=CONFIG.patch_size, num_attention_heads=CONFIG.num_heads, attention_head_dim=CONFIG.head_dim,
        in_channels=16, out_channels=16, text_dim=CONFIG.text_dim, freq_dim=CONFIG.freq_dim, ffn_dim=CONFIG.ffn_dim,
        num_layers=CONFIG.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=CONFIG.eps,
        rope_max_seq_len=1024, vace_layers=sorted(layer_mapping(CONFIG.num_layers, CONFIG.vace_layers)),
        vace_in_channels=96)
    ref.load_state_dict({official_to_diffusers(k): v for k, v in weights.items()}, strict=True)
    return ref.eval()


@torch.no_grad()
def test_matches_diffusers_wan_vace_transformer(weights, model, monkeypatch):
    # diffusers' sinusoid made float64 as the official one (test_dit_parity: fp32 there costs ~2e-4); one stream,
    # diffusers' per-layer scale set to the stream's strength at every VACE layer.
    monkeypatch.setattr(diffusers_embeddings, "get_timestep_embedding", sinusoid_float64)
    ref = diffusers_vace(weights)
    x, t, context, vace = inputs()
    for strength in (1.0, 0.6):
        expected = ref(x, t, padded(context), control_hidden_states=vace[0],
                       control_hidden_states_scale=torch.full((CONFIG.vace_layers,), strength), return_dict=False)[0]
        got = model(x, t, context, control=control(vace[:1], strength))
        diff = (got - expected).abs().max().item()
        assert diff <= 5e-5, (strength, diff)
