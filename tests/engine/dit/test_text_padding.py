"""The text padding embedded once: cross-attention over a context's tokens and one row per padding run, its logit
raised by log(count), is the official attention over all text_len zero-padded rows up to float rounding."""

from __future__ import annotations

import math

import pytest
import torch

import wan_core.dit.model as dit_model
from wan_core.dit.model import DiTConfig, WanDiT, _padding_bias, pad_text_contexts

CONFIG = DiTConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32, text_len=24)


@pytest.fixture(scope="module")
def model() -> WanDiT:
    torch.manual_seed(0)
    dit = WanDiT(CONFIG).eval()
    with torch.no_grad():  # a text embedding bias large enough that the padding rows weigh in the attention
        dit.text_embedding[0].bias.normal_(0, 2.0)
    return dit


def contexts(*lengths: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(sum(lengths))
    return [torch.randn(n, CONFIG.text_dim, generator=g) for n in lengths]


@pytest.mark.parametrize("lengths", [(5,), (3, 11), (24, 7), (0, 2)])
def test_kept_padding_row_gives_the_official_padded_output(model: WanDiT, lengths, monkeypatch) -> None:
    x = torch.randn(len(lengths), 16, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.full((len(lengths),), 700.0)
    items = contexts(*lengths)
    padded = pad_text_contexts(items, len(items), CONFIG.text_len, CONFIG.text_dim, "cpu")  # [B, 24, 32]
    with torch.no_grad():
        state = model.embed(x, t, items)
        ours = model(x, t, items)
        model.forget_text()
        assert torch.equal(model(x, t, padded), ours)  # given padded, its zero rows are found and kept once
        model.forget_text()
        with monkeypatch.context() as patch:  # the official forward: every one of the 24 rows a key of its own
            patch.setattr(dit_model, "_text_lengths", lambda items: [CONFIG.text_len] * len(items))
            official = model(x, t, padded)
            assert model.embed(x, t, padded).text_bias is None
    model.forget_text()
    keys = min(CONFIG.text_len, max(lengths) + 1)
    assert state.context.shape[1] == keys  # the tokens and a padding row, not 24 rows
    assert (state.text_bias is None) == (keys == CONFIG.text_len and all(
        CONFIG.text_len - n == keys - n for n in lengths))
    # Same sums in another order (one exp(s + log n) for n equal terms): float32 rounding, measured <= 4.9e-7 (|out| ~ 1.75).
    assert (ours - official).abs().max().item() <= 5e-6
    assert (official - model(x, t, contexts(*[max(1, n - 1) for n in lengths]))).abs().max().item() > 1e-3


def test_padding_bias_is_the_log_of_the_rows_each_kept_row_stands_for() -> None:
    bias = _padding_bias([5, 2], keys=6, text_len=24, device=torch.device("cpu"))
    assert bias.shape == (2, 1, 1, 6)
    assert bias[0, 0, 0].tolist() == [0.0] * 5 + [pytest.approx(math.log(19.0))]
    assert bias[1, 0, 0].tolist() == [0.0] * 2 + [pytest.approx(math.log(22 / 4))] * 4
    assert _padding_bias([24, 20], keys=24, text_len=24, device=torch.device("cpu")) is None  # every row is one


def test_kept_keys_values_are_the_compact_rows(model: WanDiT) -> None:
    x, t = torch.randn(1, 16, 1, 4, 4), torch.full((1,), 500.0)
    with torch.no_grad():
        state = model.embed(x, t, contexts(6))
        model.run_blocks(state)
    k, v = state.kv[0]
    assert k.shape == v.shape == (1, 7, CONFIG.num_heads, CONFIG.dim // CONFIG.num_heads)
    assert torch.equal(k[0, 6], model.blocks[0].cross_attn.project_context(state.context)[0][0, 6])
    model.forget_text()
