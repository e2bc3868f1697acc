"""A whole tiny MoE run through wan_core.api.sample with gpus=2 equals gpus=1 (both experts, CFG and cfg 1).

4 ranks are covered by the forward tests (test_parallel_forward.py); a whole run on 4 processes is 45 s on 2 cores.

cfg_high 4 runs the high-noise steps as CFG groups, cfg_low 1 runs the low-noise steps with every rank on the
tokens: both layouts in one run. Tolerance 1e-5 (fp32), as the forward tests, after 4 solver steps.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from wan_core import api, interop
from wan_core.parallel.pool import current_pool, release_pool

from parallel_testing import CPU, TINY4, alive, conditioning, sample, write_tiny_experts

SHAPE = (1, 16, 3, 6, 10)  # 3 x 3 x 5 = 45 tokens: padded at the cfg-1 steps (Ulysses over 2)
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    model = write_tiny_experts(tmp_path_factory.mktemp("parallel_sampler"))
    g = torch.Generator().manual_seed(5)
    positive, negative = torch.randn(6, TINY4.text_dim, generator=g), torch.randn(4, TINY4.text_dim, generator=g)
    schedule = api.plan_sampling(model, steps=4, shift=5.0, solver="unipc", denoise=1.0, cfg_high=4.0, cfg_low=1.0)
    assert schedule.experts == ("high", "high", "low", "low") and schedule.guidance == (4.0, 4.0, 1.0, 1.0)

    def run_on(gpus: int) -> torch.Tensor:
        return sample(dataclasses.replace(model, gpus=gpus), schedule, positive, negative, torch.zeros(SHAPE), seed=11)

    run_on.request, run_on.schedule, run_on.texts = model, schedule, (positive, negative)
    yield run_on
    release_pool()


def test_moe_run_on_two_ranks_equals_one(run, caplog):
    gpus = 2
    reference = run(1)
    with caplog.at_level(logging.INFO, logger="wan_core.sampling.multi_gpu"):
        out = run(gpus)
    assert f"WanMoE multi-GPU: {gpus} ranks, per call batch 1: 1 CFG group(s) x Ulysses {gpus}, batch 2: 2 CFG " \
           f"group(s) x Ulysses {gpus // 2}" in caplog.text
    assert current_pool() is not None and current_pool().world == gpus
    assert float((out - reference).abs().max()) < TOLERANCE
    assert float(reference.abs().max()) > 0.5


def test_a_run_leaves_no_text_kept_on_any_rank(run):
    run(2)
    assert current_pool().worker_texts() == {1: (0, {})}  # the sampler's forget_text reached the worker
    assert current_pool().texts.parts == {}


def test_a_second_prompt_reuses_the_workers_and_unload_models_stops_them(run):
    run(2)
    pids = current_pool().pids
    run(2)
    assert current_pool().pids == pids and all(alive(pid) for pid in pids)
    api.release_models()
    assert current_pool() is None
    assert not any(alive(pid) for pid in pids)


def test_step_cache_is_not_applied_on_several_ranks_and_the_summary_says_so(run):
    positive, negative = run.texts
    out = api.sample(dataclasses.replace(run.request, gpus=2), run.schedule, positive=conditioning(positive),
                     negative=conditioning(negative), latent={"samples": torch.zeros(SHAPE)}, seed=11, device=CPU,
                     step_cache=0.3)
    assert "step cache 0.3 off: not applied with gpus > 1" in out.summary.splitlines()
    assert float((interop.latent_from_comfy(out.latent) - run(1)).abs().max()) < TOLERANCE
