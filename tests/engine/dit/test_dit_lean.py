"""The DiT's lean-activation paths change its output by no more than float rounding, far inside the parity tolerance.

fp32 in-place RoPE (from the float64 tables), the FFN over token chunks, the text embedding and cross-attention
keys/values kept for a run, and the in-place residual stream: each compared with the straightforward computation.
"""

from __future__ import annotations

import pytest
import torch

import wan_core.dit.model as dit_model
from wan_core.dit.model import DiTConfig, SelfAttention, WanDiT
from wan_core.dit.rope import RotaryEmbedding, apply_rope, apply_rope_

CONFIG = DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=3)
PARITY_TOL = 5e-5  # the DiT-vs-diffusers tolerance with the reference's sinusoid in float64 (tests/engine/dit)


@pytest.fixture(scope="module")
def model() -> WanDiT:
    torch.manual_seed(0)
    m = WanDiT(CONFIG).eval()
    for p in m.parameters():
        p.data.normal_(0, 0.05)  # non-zero head and modulation, so every path shows in the output
    return m


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 3, 12, 16, generator=g)
    return x, torch.tensor([999.0, 500.0]), [torch.randn(20, 4096, generator=g), torch.randn(30, 4096, generator=g)]


def run(model, inputs):
    model.forget_text()
    with torch.no_grad():
        return model(*inputs)


def test_fp32_in_place_rope_equals_the_float64_rotation_to_float32_rounding():
    table = RotaryEmbedding(128).grid(3, 4, 5)
    x = torch.randn(2, 60, 4, 128, generator=torch.Generator().manual_seed(2))
    reference = apply_rope(x, table)
    out = apply_rope_(x.clone(), table)
    assert (out - reference).abs().max().item() <= 4e-7 * x.abs().max().item()  # a few float32 ulps


def test_fp32_rope_moves_the_output_far_less_than_the_parity_tolerance(model, inputs, monkeypatch):
    lean = run(model, inputs)
    monkeypatch.setattr(SelfAttention, "rope_float64", True)
    official = run(model, inputs)
    diff = (lean - official).abs().max().item()
    assert 0 < diff < PARITY_TOL / 10, diff  # measured 1.2e-6 on outputs of magnitude 3.4


def test_ffn_chunks_change_the_output_only_by_matmul_rounding(model, inputs, monkeypatch):
    whole = run(model, inputs)
    monkeypatch.setattr(dit_model, "FFN_CHUNK_BYTES", 1)  # one token at a time
    chunked = run(model, inputs)
    assert (chunked - whole).abs().max().item() < 1e-5  # measured 1.3e-6


def test_text_and_cross_attention_keys_are_computed_once_while_the_contexts_return(model, inputs):
    calls = []
    hook = model.text_embedding.register_forward_hook(lambda *a: calls.append("text"))
    kv_calls = []
    kv_hook = model.blocks[0].cross_attn.k.register_forward_hook(lambda *a: kv_calls.append("k"))
    try:
        model.forget_text()
        with torch.no_grad():
            first = model(*inputs)
            second = model(*inputs)
        assert calls == ["text"] and kv_calls == ["k"]
        assert torch.equal(first, second)
        model.forget_text()
        with torch.no_grad():
            third = model(*inputs)
        assert calls == ["text", "text"] and torch.equal(first, third)
    finally:
        hook.remove()
        kv_hook.remove()


def test_a_context_changed_in_place_is_embedded_again(model, inputs):
    x, t, (a, b) = inputs
    a, b = a.clone(), b.clone()
    model.forget_text()
    with torch.no_grad():
        before = model(x, t, [a, b])
        a.mul_(2)
        after = model(x, t, [a, b])
        fresh = run(model, (x, t, [a.clone(), b]))
    assert not torch.equal(before, after) and torch.equal(after, fresh)


def test_run_blocks_and_a_block_leave_their_input_untouched(model, inputs):
    with torch.no_grad():
        state = model.embed(*inputs)
        tokens = state.x.clone()
        model.run_blocks(state)
        assert torch.equal(state.x, tokens)
        block = model.blocks[0]
        out = block(state.x, state.e0, state.context, state.rotations)
        assert torch.equal(state.x, tokens) and not torch.equal(out, tokens)


def test_a_stored_format_ffn_dequantises_once_however_many_chunks(monkeypatch):
    from wan_core.io.quant.fp8 import Fp8Linear, quantize_fp8

    torch.manual_seed(0)
    model = WanDiT(DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=1)).eval()
    old = model.blocks[0].ffn[0]
    fp8 = Fp8Linear(old.in_features, old.out_features, compute_dtype=torch.float32)
    weight, scale = quantize_fp8(old.weight.detach())
    fp8.weight.data, fp8.weight_scale.data, fp8.bias.data = weight, scale, old.bias.detach().clone()
    model.blocks[0].ffn[0] = fp8
    calls = []
    real = Fp8Linear.dequantized_weight
    monkeypatch.setattr(Fp8Linear, "dequantized_weight", lambda self, *a: calls.append(1) or real(self, *a))
    x, t, ctx = torch.randn(1, 16, 2, 8, 8), torch.tensor([500.0]), [torch.randn(9, 4096)]
    with torch.no_grad():
        whole = model(x, t, ctx)
        monkeypatch.setattr(dit_model, "FFN_CHUNK_BYTES", 1)  # 32 one-token chunks
        calls.clear()
        model.forget_text()
        chunked = model(x, t, ctx)
    assert len(calls) == 1 and (chunked - whole).abs().max().item() < 1e-5
    assert "_held" not in fp8.__dict__  # not kept after the block
