"""Step caching in the MoE loop: off means bit-identical, on skips steps with a bounded output change, and it
starts over at the expert switch and never acts on short runs."""

from __future__ import annotations

import pytest
import torch

from wan_core.dit.model import DiTConfig, WanDiT
from wan_core.sampling.experts import ResidentExperts
from wan_core.sampling.sampler import sample_schedule
from wan_core.sampling.schedule import build_schedule
from wan_core.sampling.step_cache import StepCache

CONFIG = DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2)
SHAPE = (1, 16, 2, 8, 8)


@pytest.fixture(scope="module")
def experts() -> ResidentExperts:
    torch.manual_seed(0)
    return ResidentExperts(WanDiT(CONFIG).eval(), WanDiT(CONFIG).eval())


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(3)
    return [torch.randn(12, 4096, generator=g)], [torch.randn(10, 4096, generator=g)]


def run(experts, prompts, schedule, cache=None, **kw):
    return sample_schedule(experts, schedule, *prompts, shape=SHAPE, seed=1, step_cache=cache, **kw)


def test_threshold_zero_is_the_uncached_run_bit_for_bit(experts, prompts):
    schedule = build_schedule(20, 12.0, "unipc")
    cache = StepCache(0.0, schedule.steps)
    assert torch.equal(run(experts, prompts, schedule, cache), run(experts, prompts, schedule))
    assert cache.skipped == [] and not cache.enabled


def test_caching_skips_steps_with_a_bounded_change(experts, prompts):
    schedule = build_schedule(30, 12.0, "unipc")
    reference = run(experts, prompts, schedule)
    cache = StepCache(0.1, schedule.steps)
    out = run(experts, prompts, schedule, cache)
    rel = float((out - reference).norm() / reference.norm())
    assert len(cache.skipped) >= 10  # measured 23 of 30 on this tiny random model
    assert rel < 0.02, rel  # measured 0.0037 relative L2 against the uncached latent
    assert cache.summary(schedule.steps) == f"step cache (threshold 0.1): skipped {len(cache.skipped)} of 30 steps"


@pytest.mark.parametrize("cfg_batch", ["on", "off"])
def test_each_expert_starts_over_with_full_steps(experts, prompts, cfg_batch):
    schedule = build_schedule(30, 12.0, "unipc")
    cache = StepCache(1.0, schedule.steps)  # skip whenever allowed
    run(experts, prompts, schedule, cache, cfg_batch=cfg_batch)
    switch = schedule.experts.index("low")
    first_steps = {0, 1, switch, switch + 1}  # warm-up of each expert
    assert first_steps.isdisjoint(cache.skipped)
    assert {2, switch + 2} <= set(cache.skipped)  # and caching resumes right after each warm-up


def test_short_runs_are_never_cached(experts, prompts):
    schedule = build_schedule(8, 5.0, "euler")
    cache = StepCache(1.0, schedule.steps)
    assert torch.equal(run(experts, prompts, schedule, cache), run(experts, prompts, schedule))
    assert not cache.enabled and cache.summary(8) == ""


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_bad_thresholds_are_refused(bad):
    with pytest.raises(ValueError, match="step cache threshold"):
        StepCache(bad, 40)


def test_an_expert_without_the_wandit_stages_is_refused_by_name(prompts):
    # Another implementation's DiT (the nodes' adapter around ComfyUI's MODELs) is one opaque call: nothing to skip.
    class OpaqueExpert:
        config = CONFIG

        def __call__(self, x, t, context, *, before_block=None):
            return torch.zeros_like(x)

    cache = StepCache(0.1, 20)
    with pytest.raises(TypeError, match="OpaqueExpert has not"):
        cache(OpaqueExpert(), torch.zeros(SHAPE), torch.zeros(1), prompts[0])


def test_kept_residuals_are_rewritten_in_place_and_dropped_when_the_run_ends(experts, prompts):
    # What the cache keeps lives for the whole run; a new buffer beside the old at every full step fragments the
    # heap around the steps' activations, and a cache kept after its run (a caller holding it for its summary)
    # must not hold a latent's worth of token streams.
    schedule = build_schedule(20, 12.0, "unipc")
    cache = StepCache(0.05, schedule.steps)
    storages: list[set[int]] = []
    real = cache._measure

    def measure(tokens, out):
        real(tokens, out)
        state = cache._state
        storages.append({t.data_ptr() for t in (*state.residuals.values(), state.full_in, state.full_out)})

    cache._measure = measure
    run(experts, prompts, schedule, cache, cfg_batch="off")
    switch = schedule.experts.index("low")
    full = [i for i in range(schedule.steps) if i not in cache.skipped]
    high = [s for i, s in zip(full, storages) if i < switch]
    low = [s for i, s in zip(full, storages) if i >= switch]
    assert len(high) >= 3 and len(low) >= 3
    assert all(s == high[1] for s in high[1:]) and all(s == low[1] for s in low[1:])  # same buffers once made
    assert cache._state.residuals == {} and cache._state.full_in is None and cache._state.prev_in is None
    assert len(cache.skipped) >= 1 and cache.summary(20).endswith(f"skipped {len(cache.skipped)} of 20 steps")
