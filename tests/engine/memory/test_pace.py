"""memory.pace: long calls split into chunks with the cancel check before each one, and the same results.

Attention chunks are bit-identical to one call (each query row attends to the same keys with the same arithmetic
when chunks are whole multiples of 64 rows); convolution bands are bit-identical at the tiny models' widths and
within float32 rounding at the real VAE's widths, where oneDNN picks another kernel for a band's shape.
"""

from __future__ import annotations

import pytest
import torch

from wan_core.dit.attention import attend_in_chunks, sdpa_attention
from wan_core.dit.model import WanDiT
from wan_core.memory.pace import ELEMENTS_PER_CHECK, WORK_PER_CHECK, Pace, banded, current, map_rows, pacing
from wan_core.testing.tiny.dit import TINY_DIT_CONFIG, random_state_dict
from wan_core.vae.model import CausalConv3d


class Counted:
    """A cancel check that counts its calls and raises once it was called `stop_after` times."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.calls, self.stop_after = 0, stop_after

    def __call__(self) -> None:
        self.calls += 1
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise InterruptedError("cancelled")


def test_rows_per_chunk_follow_the_budget_in_whole_multiples():
    pace = Pace(budget=1000.0)
    assert pace.rows(1000, 10.0, "cpu") == 100
    assert pace.rows(1000, 10.0, "cpu", multiple=64) == 64  # rounded down to a multiple, never below one
    assert pace.rows(1000, 1.0, "cpu", multiple=64) == 960
    assert pace.rows(50, 1.0, "cpu", multiple=64) == 50  # never more than there is
    assert Pace().work("cpu") == 16e9 and Pace().work("cuda") == 64e12


def test_pacing_nests_inherits_and_restores():
    check = Counted()
    assert current() == Pace()
    with pacing(check=check):
        with pacing(budget=5.0) as inner:
            assert inner.check is check and inner.budget == 5.0
        assert current().budget is None
    assert current() == Pace()


def test_chunked_attention_is_bit_identical_and_checks_before_every_chunk():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 1000, 2, 128) for _ in range(3))
    whole = sdpa_attention(q, k, v)
    check = Counted()
    per_row = 4 * 2 * 1000 * 2 * 128
    with pacing(check=check, budget=per_row * 100):
        chunked = attend_in_chunks(sdpa_attention, q, k, v)
    assert torch.equal(chunked, whole)
    assert check.calls == 16  # 1000 queries in chunks of 64 (100 rounded down to a multiple of 64)


def test_map_rows_without_a_budget_problem_is_one_call():
    calls = []
    x = torch.arange(12.0).reshape(3, 4)
    out = map_rows(lambda rows: calls.append(rows.shape) or rows * 2, x, dim=1, work_per_row=1.0)
    assert torch.equal(out, x * 2) and calls == [(3, 4)]


def budget_for_rows(rows: int, outputs_per_row: int) -> float:
    """A pace budget whose output-element bound (it scales with the budget) allows `rows` rows of conv outputs."""
    return rows * outputs_per_row * WORK_PER_CHECK["cpu"] / ELEMENTS_PER_CHECK["cpu"]


@pytest.mark.parametrize("channels", [8, 32])
def test_conv_bands_equal_one_call_at_tiny_widths(channels):
    torch.manual_seed(1)
    conv = CausalConv3d(channels, channels, 3, padding=1)
    x = torch.randn(1, channels, 3, 40, 24)
    with torch.no_grad():
        whole = conv(x)
        check = Counted()
        with pacing(check=check, budget=budget_for_rows(5, channels * 3 * 24)):
            bands = conv(x)
    assert torch.equal(bands, whole)
    assert check.calls == 8  # 40 output rows in bands of 5


def test_conv_bands_at_the_real_vae_width_are_within_float32_rounding():
    torch.manual_seed(2)
    conv = CausalConv3d(96, 96, 3, padding=1)
    x = torch.randn(1, 96, 2, 48, 40)
    with torch.no_grad():
        whole = conv(x)
        with pacing(budget=budget_for_rows(8, 96 * 2 * 40)):
            bands = conv(x)
    # Every output sees the same inputs and weights; only the summation order inside the kernel may differ.
    assert (bands - whole).abs().max() <= 1e-5 * whole.abs().max()


@pytest.mark.parametrize("rows_per_band, checks", [(20, 2), (4, 10)])
def test_few_conv_bands_split_the_output_channels_many_split_the_rows(rows_per_band, checks, monkeypatch):
    from wan_core.vae import model as vae_model

    torch.manual_seed(3)
    conv = CausalConv3d(32, 32, 3, padding=1)  # 32 outputs: at most 2 channel bands of CHANNEL_BAND (16)
    x = torch.randn(1, 32, 3, 40, 24)
    inputs: list[tuple[int, ...]] = []
    real = vae_model._conv
    monkeypatch.setattr(vae_model, "_conv", lambda c, band, *a: inputs.append(tuple(band.shape)) or real(c, band, *a))
    with torch.no_grad():
        whole = conv(x)
        inputs.clear()
        check = Counted()
        with pacing(check=check, budget=budget_for_rows(rows_per_band, 32 * 3 * 24)):
            bands = conv(x)
    assert (bands - whole).abs().max() <= 1e-6 * whole.abs().max()  # the same sums, blocked another way
    assert check.calls == checks  # one check per band
    if checks == 2:  # 2 bands of 16 channels, each reading the whole input (no copy of input rows)
        assert inputs == [(1, 32, 5, 40, 24)] * 2  # the clip with its 2 frames of causal zeros
    else:  # 10 bands of 4 rows: too many for whole channel blocks, so rows (+ the 2-row halo)
        assert {shape[3] for shape in inputs} == {6}


def test_banded_passes_each_band_its_halo():
    x = torch.arange(10.0).reshape(1, 1, 10)
    seen = []

    def window_sum(band: torch.Tensor) -> torch.Tensor:
        seen.append(band.shape[-1])
        return band.unfold(-1, 3, 1).sum(-1)

    with pacing(budget=4.0):
        out = banded(window_sum, x, dim=2, kernel=3, stride=1, work=8.0)
    assert torch.equal(out, x.unfold(-1, 3, 1).sum(-1)) and seen == [6, 6]  # 8 outputs: 2 bands of 4 (+2 halo)


def test_banded_sums_several_inputs_into_a_residual():
    a, b = torch.arange(10.0).reshape(1, 1, 10), torch.arange(10.0).flip(-1).reshape(1, 1, 10) * 0.5
    residual = torch.full((1, 1, 8), 100.0)

    def sums(bands: list[torch.Tensor]) -> torch.Tensor:
        assert len(bands) == 2 and bands[0].shape == bands[1].shape  # the same rows of both inputs
        return bands[0].unfold(-1, 3, 1).sum(-1) + bands[1].unfold(-1, 3, 1).amax(-1)

    expected = 100.0 + a.unfold(-1, 3, 1).sum(-1) + b.unfold(-1, 3, 1).amax(-1)
    with pacing(budget=4.0):
        out = banded(sums, [a, b], dim=2, kernel=3, stride=1, work=8.0, into=residual)
    assert out is residual and torch.equal(out, expected)  # added in place, band by band: no output tensor of its own


@pytest.fixture(scope="module")
def dit() -> WanDiT:
    model = WanDiT(TINY_DIT_CONFIG)
    model.load_state_dict(random_state_dict(TINY_DIT_CONFIG, seed=3))
    return model.eval()


@pytest.fixture
def attention_calls(dit, monkeypatch) -> list[int]:
    """Query rows of each attention backend call the tiny DiT makes (the backend wrapped, not replaced)."""
    calls: list[int] = []

    def counted(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        calls.append(q.shape[1])
        return sdpa_attention(q, k, v)

    for block in dit.blocks:
        monkeypatch.setattr(block.self_attn, "attend", counted)
        monkeypatch.setattr(block.cross_attn, "attend", counted)
    return calls


def test_dit_forward_with_attention_in_chunks_is_bit_identical(dit, attention_calls):
    x, t, context = torch.randn(1, 16, 2, 16, 16), torch.tensor([700.0]), torch.randn(1, 12, 4096)
    with torch.no_grad():
        whole = dit(x, t, context)
        # one self-attention call per block through the backend; the cross-attention to the 12 tokens and their
        # kept padding row runs biased (dit.attention.attend_biased), in chunks of its own
        assert attention_calls == [128] * 2
        attention_calls.clear()
        check = Counted()
        with pacing(check=check, budget=4 * 128 * 128 * 2 * 64):  # 64 queries per chunk
            chunked = dit(x, t, context)
    assert torch.equal(chunked, whole)
    # 128 tokens in chunks of 64: 2 self-attention chunks per block, 2 blocks, each after a check
    assert attention_calls == [64] * 4
    assert check.calls > len(attention_calls)  # Linears and the q/k norms check too


def test_a_cancel_inside_a_block_stops_the_forward_there(dit, attention_calls):
    x, t, context = torch.randn(1, 16, 2, 16, 16), torch.tensor([700.0]), torch.randn(1, 12, 4096)
    blocks_started: list[int] = []
    count = Counted(stop_after=1)

    def check() -> None:  # cancelled as soon as the first block's first attention chunk is done
        if attention_calls:
            count()

    with torch.no_grad(), pacing(check=check, budget=4 * 128 * 128 * 2 * 64), pytest.raises(InterruptedError):
        dit(x, t, context, before_block=blocks_started.append)
    assert blocks_started == [0] and attention_calls == [64]  # stopped inside block 0, before its second chunk
