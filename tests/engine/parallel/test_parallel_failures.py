"""Cancel, dead and hung workers, a worker's own error, and a group that cannot start: rank 0 never hangs.

Each test starts its own 2-rank pool (gloo on the CPU). Rank 0's `before_block` is where the sampler checks
Cancel; here it also kills or stops a worker at a chosen block, so the failure lands in the middle of a call.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time

import pytest
import torch

from wan_core import api
from wan_core.parallel.experts import ParallelExperts
from wan_core.sampling.multi_gpu import cached_experts
from wan_core.parallel.pool import WorkerFailed, current_pool, release_pool

from cache_testing import Cancelled
from parallel_testing import (CPU, TINY4, WORKER_EXPERTS, alive, expert_kwargs, inputs, pool_on, sample,
                              write_tiny_experts)

LATENT = (2, 6, 10)  # 30 tokens


@pytest.fixture
def fresh_pools():
    """Release any running pool before and after a test that starts its own."""
    release_pool()
    yield
    release_pool()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_tiny_experts(tmp_path_factory.mktemp("parallel_failures"))


def source_on(pool, model, factory: str = WORKER_EXPERTS) -> ParallelExperts:
    return ParallelExperts(pool, cached_experts(device=CPU, **expert_kwargs(model)), factory, expert_kwargs(model))


def at_block(block: int, action):
    """A before_block hook that runs `action()` once, before `block`."""
    def hook(index: int) -> None:
        if index == block:
            action()
    return hook


@torch.no_grad()
def test_cancel_stops_every_rank_before_the_same_block_and_the_group_stays_usable(fresh_pools, model):
    pool = pool_on(2)
    expert = source_on(pool, model).expert("high")
    x, t, contexts = inputs(*LATENT)
    reference = expert.module(x, t, contexts)

    def cancel() -> None:
        raise Cancelled()

    with pytest.raises(Cancelled):
        expert(x, t, contexts, before_block=at_block(1, cancel))
    assert pool.last_stop == {0: 1, 1: 1}  # the worker left the call before block 1 too
    assert not pool.closed
    assert float((expert(x, t, contexts) - reference).abs().max()) < 1e-5  # still in step


@torch.no_grad()
def test_a_worker_killed_mid_call_is_named_and_the_next_pool_runs(fresh_pools, model):
    pool = pool_on(2)
    (pid,) = pool.pids
    expert = source_on(pool, model).expert("high")
    x, t, contexts = inputs(*LATENT)
    started = time.monotonic()
    with pytest.raises(WorkerFailed, match=rf"group of 2 processes failed during a DiT forward: rank 1 \(pid {pid}\) killed by "
                                           r"SIGKILL.*the next prompt starts new ones"):
        expert(x, t, contexts, before_block=at_block(1, lambda: os.kill(pid, signal.SIGKILL)))
    assert time.monotonic() - started < pool.timeout  # a dead peer fails at once, not after the timeout
    assert pool.closed and current_pool() is None and not alive(pid)

    again = pool_on(2)
    assert again.pids != [pid]
    expert = source_on(again, model).expert("high")
    assert float((expert(x, t, contexts) - expert.module(x, t, contexts)).abs().max()) < 1e-5


@torch.no_grad()
def test_a_hung_worker_times_out_and_is_stopped(fresh_pools, model, monkeypatch):
    monkeypatch.setenv("WANMOE_PARALLEL_TIMEOUT", "3")
    pool = pool_on(2)
    (pid,) = pool.pids
    expert = source_on(pool, model).expert("high")
    x, t, contexts = inputs(*LATENT)
    started = time.monotonic()
    with pytest.raises(WorkerFailed, match=rf"rank 1 \(pid {pid}\) alive but not answering for 3 s \(hung\)"):
        expert(x, t, contexts, before_block=at_block(0, lambda: os.kill(pid, signal.SIGSTOP)))
    assert 3.0 <= time.monotonic() - started < 30.0
    assert not alive(pid)  # SIGKILL ends a stopped process too


def test_a_worker_that_died_while_idle_is_replaced_at_the_next_use(fresh_pools, model, caplog):
    pool = pool_on(2)
    (pid,) = pool.pids
    os.kill(pid, signal.SIGKILL)
    pool.processes[0].join(timeout=10)
    with caplog.at_level(logging.WARNING, logger="wan_core.parallel.pool"):
        again = pool_on(2)
    assert f"rank 1 (pid {pid}) killed by SIGKILL while idle; starting new workers" in caplog.text
    assert again is not pool and again.pids != [pid] and all(alive(p) for p in again.pids)


def test_a_worker_error_is_reported_with_its_message(fresh_pools, model):
    pool = pool_on(2)
    (pid,) = pool.pids
    source = source_on(pool, model, factory="wan_core.api:no_such_factory")
    with pytest.raises(WorkerFailed, match=rf"rank 1 \(pid {pid}\) failed: AttributeError: module 'wan_core.api' "
                                           r"has no attribute 'no_such_factory'"):
        source.expert("high")
    assert not alive(pid)


def test_a_group_that_cannot_start_falls_back_to_one_device(fresh_pools, model, monkeypatch, caplog):
    g = torch.Generator().manual_seed(5)
    positive, negative = torch.randn(6, TINY4.text_dim, generator=g), torch.randn(4, TINY4.text_dim, generator=g)
    schedule = api.plan_sampling(model, steps=2, shift=5.0, solver="euler", denoise=1.0, cfg_high=4.0, cfg_low=3.0)

    def run(gpus: int) -> torch.Tensor:
        return sample(dataclasses.replace(model, gpus=gpus), schedule, positive, negative,
                      torch.zeros(1, 16, *LATENT), seed=3)

    monkeypatch.setenv("WANMOE_PARALLEL_STARTUP_TIMEOUT", "0.01")  # no worker says hello that fast
    with caplog.at_level(logging.WARNING, logger="wan_core.sampling.multi_gpu"):
        out = run(2)
    assert "WanMoE multi-GPU: could not start 2 ranks" in caplog.text and "sampling on one device instead" in caplog.text
    assert current_pool() is None
    assert torch.equal(out, run(1))
