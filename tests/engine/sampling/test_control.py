"""VACE control over a sampling run: step ranges per expert, what reaches each expert call, cond/uncond batching."""

from __future__ import annotations

import pytest
import torch

from wan_core.dit.model import DiTConfig, WanDiT
from wan_core.sampling.control import Control, VaceStream
from wan_core.sampling.experts import ResidentExperts
from wan_core.sampling.sampler import sample_schedule
from wan_core.sampling.schedule import build_schedule

SHAPE = (1, 16, 2, 4, 4)  # 2 latent frames of 4x4 -> 8 tokens
# 10 steps at shift 5: steps 0-4 high-noise (t 999-882), 5-9 low-noise (t 833-356).
SCHEDULE = build_schedule(10, 5.0, "unipc", boundary=0.875, cfg_high=4.0, cfg_low=3.0)


def tiny_vace(seed: int) -> WanDiT:
    """A VACE expert with a 64-wide, 32-token text context (cheap): 2 blocks, one VACE block after block 0."""
    torch.manual_seed(seed)
    model = WanDiT(DiTConfig(dim=256, ffn_dim=256, num_heads=2, num_layers=2, text_dim=64, text_len=32, vace_layers=1))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


class Recorder:
    """ExpertSource over two resident VACE experts recording, per forward: (expert, batch, strengths per stream)."""

    def __init__(self) -> None:
        self.inner = ResidentExperts(tiny_vace(1), tiny_vace(2))
        self.calls: list[tuple[str, int, list[list[float]] | None]] = []
        for name in ("high", "low"):
            self.inner.expert(name).register_forward_pre_hook(self._hook(name), with_kwargs=True)

    def _hook(self, name: str):
        def hook(module, args, kwargs):
            control = kwargs.get("control")
            strengths = [s.tolist() for s in control.strengths] if control is not None else None
            self.calls.append((name, args[0].shape[0], strengths))
        return hook

    def expert(self, name: str) -> WanDiT:
        return self.inner.expert(name)

    def release(self) -> None:
        pass


@pytest.fixture(scope="module")
def text():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(5, 64, generator=gen)], [torch.randn(3, 64, generator=gen)]


def stream(seed: int = 3, strength: float = 1.0, ranges=None, batch: int = 1) -> VaceStream:
    gen = torch.Generator().manual_seed(seed)
    return VaceStream(torch.randn(batch, 96, *SHAPE[2:], generator=gen), strength, ranges)


def run(experts, text, control, **kwargs) -> torch.Tensor:
    return sample_schedule(experts, SCHEDULE, text[0], text[1], shape=SHAPE, seed=7, control=control, **kwargs)


def test_percent_ranges_switch_hints_off_at_exactly_the_stated_steps(text):
    ranges = {"high": (0.0, 0.5), "low": (0.25, 0.75)}
    control = Control((stream(ranges=ranges),), (stream(ranges=ranges),))
    # high: k/5 in [0, 0.5) -> k 0, 1, 2 = steps 0-2; low: k/5 in [0.25, 0.75) -> k 2, 3 = steps 7, 8
    assert control.active_steps(SCHEDULE) == {"high": [0, 1, 2], "low": [7, 8]}
    assert control.summary(SCHEDULE) == "VACE control (1 stream): high-noise steps 0-2, low-noise steps 7-8"
    experts = Recorder()
    run(experts, text, control, cfg_batch="on")
    with_control = [i for i, (_, _, strengths) in enumerate(experts.calls) if strengths is not None]
    assert with_control == [0, 1, 2, 7, 8]  # one batched call per step
    assert experts.calls[0] == ("high", 2, [[1.0, 1.0]])


def test_end_percent_zero_and_strength_zero_run_the_plain_experts_bit_for_bit(text):
    plain = run(Recorder(), text, None)
    off = {"high": (0.0, 0.0), "low": (0.0, 0.0)}
    for control in (Control((stream(ranges=off),), (stream(ranges=off),)),
                    Control((stream(strength=0.0),), (stream(strength=0.0),))):
        experts = Recorder()
        assert torch.equal(run(experts, text, control), plain)
        assert all(strengths is None for _, _, strengths in experts.calls)
    assert not torch.equal(run(Recorder(), text, Control((stream(),), (stream(),))), plain)


def test_batched_cond_uncond_equals_two_passes(text):
    control = Control((stream(3, 0.8),), (stream(4, 1.2),))
    both = run(Recorder(), text, control, cfg_batch="on")
    apart = run(Recorder(), text, control, cfg_batch="off")
    assert (both - apart).abs().max().item() <= 1e-5


def test_a_negative_without_control_runs_plain_in_the_batch(text):
    experts = Recorder()
    control = Control((stream(),), ())
    batched = run(experts, text, control, cfg_batch="on")
    assert experts.calls[0][2] == [[1.0, 0.0]]  # cond item steered, uncond item at strength 0
    separate = Recorder()
    apart = run(separate, text, control, cfg_batch="off")
    assert [c[2] for c in separate.calls[:2]] == [[[1.0]], None]  # the uncond pass gets no control at all
    assert (batched - apart).abs().max().item() <= 1e-5


def test_two_streams_each_with_its_own_range(text):
    first = stream(3, 1.0, {"high": (0.0, 1.0), "low": (0.0, 0.0)})
    second = stream(5, 0.5, {"high": (0.0, 0.0), "low": (0.0, 1.0)})
    experts = Recorder()
    run(experts, text, Control((first, second), (first, second)), cfg_batch="on")
    assert {c[2][0][0] for c in experts.calls[:5]} == {1.0} and all(len(c[2]) == 1 for c in experts.calls)
    assert {c[2][0][0] for c in experts.calls[5:]} == {0.5}


def test_a_control_of_another_size_is_refused_saying_which(text):
    wrong = VaceStream(torch.zeros(1, 96, 3, 4, 4))
    with pytest.raises(ValueError, match=r"is 3 latent frames of 4x4 \(9 frames at 32x32 px\) but the latent being "
                                         r"sampled is 2 latent frames of 4x4 \(5 frames at 32x32 px\)"):
        run(Recorder(), text, Control((wrong,)))


def test_a_control_batch_that_is_neither_one_nor_the_latents_is_refused(text):
    with pytest.raises(ValueError, match="has a batch of 2; the latent has 1"):
        run(Recorder(), text, Control((stream(batch=2),)))


def test_the_step_cache_never_reuses_a_residual_across_a_control_switch(text):
    from wan_core.sampling.step_cache import StepCache

    ranges = {"high": (0.0, 0.6), "low": (0.0, 1.0)}  # high-noise steps 0-2 with the control, 3-4 without
    control = Control((stream(ranges=ranges),), (stream(ranges=ranges),))
    cache = StepCache(10.0, SCHEDULE.steps, warmup=1)  # a threshold that would skip every step it may
    run(Recorder(), text, control, cfg_batch="on", step_cache=cache)
    # Each expert: 2 full steps (the change rate needs two), then skips; step 3 is the first without the control, so
    # there is no residual under that control to reuse and it runs in full. Without a control it would be skipped.
    assert cache.skipped == [2, 4, 7, 8, 9]
    plain = StepCache(10.0, SCHEDULE.steps, warmup=1)
    run(Recorder(), text, None, cfg_batch="on", step_cache=plain)
    assert plain.skipped == [2, 3, 4, 7, 8, 9]


def test_a_control_with_context_windows_is_refused_before_any_step(text):
    from wan_core.requests import ContextWindows

    with pytest.raises(ValueError, match="context windows is not supported"):
        run(Recorder(), text, Control((stream(),)), windows=ContextWindows(frames=5, overlap=0))
