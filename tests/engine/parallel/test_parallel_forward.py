"""The DiT forward on 2 and 4 gloo ranks equals the single-process forward (sequence parallel, padding, CFG parallel).

Rank 0 is this test process; every rank loads the same expert files through sampling.multi_gpu.cached_experts. Tolerance
1e-5 (fp32): the token-sliced matmuls and per-head-group attention sum in another order than the full ones.
"""

from __future__ import annotations

import pytest
import torch

from wan_core.parallel.experts import ParallelExperts
from wan_core.sampling.multi_gpu import cached_experts
from wan_core.parallel.plan import Layout
from wan_core.parallel.pool import release_pool

from parallel_testing import CPU, WORKER_EXPERTS, expert_kwargs, inputs, pool_on, write_tiny_experts

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_tiny_experts(tmp_path_factory.mktemp("parallel_forward"))


@pytest.fixture(scope="module", params=[2, 4], ids=["2ranks", "4ranks"])
def experts(request, model):
    pool = pool_on(request.param)
    local = cached_experts(device=CPU, **expert_kwargs(model))
    source = ParallelExperts(pool, local, WORKER_EXPERTS, expert_kwargs(model))
    yield source
    source.release()
    release_pool()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


@torch.no_grad()
@pytest.mark.parametrize("latent", [(2, 8, 8), (1, 6, 10)], ids=["32tokens", "15tokens_padded"])
def test_sequence_parallel_forward_equals_single_process(experts, latent):
    expert = experts.expert("high")
    x, t, contexts = inputs(*latent, batch=1)
    out = expert(x, t, contexts)
    assert experts.pool.last_layout == Layout(1, experts.pool.world)  # every rank on a share of the tokens
    reference = expert.module(x, t, contexts)
    assert max_diff(out, reference) < TOLERANCE
    assert float(reference.abs().max()) > 0.5  # a real signal, not zeros


@torch.no_grad()
def test_cfg_parallel_equals_sequential_cfg(experts):
    expert = experts.expert("low")
    x, t, (cond, uncond) = inputs(1, 6, 10, batch=2)
    x = x[:1]
    both = expert(torch.cat([x, x]), torch.cat([t[:1], t[:1]]), [cond, uncond])
    world = experts.pool.world
    assert experts.pool.last_layout == Layout(2, world // 2)  # cond on one half of the ranks, uncond on the other
    guided = both[1:] + 3.0 * (both[:1] - both[1:])
    v_cond, v_uncond = expert.module(x, t[:1], [cond]), expert.module(x, t[:1], [uncond])
    assert max_diff(guided, v_uncond + 3.0 * (v_cond - v_uncond)) < TOLERANCE
    assert max_diff(both[:1], v_cond) < TOLERANCE and max_diff(both[1:], v_uncond) < TOLERANCE


@torch.no_grad()
def test_text_is_sent_once_per_run_and_kept_per_rank_until_forget_text(experts):
    expert = experts.expert("high")
    expert.forget_text()  # other tests' calls on this shared pool
    pool, world = experts.pool, experts.pool.world
    x, t, contexts = inputs(1, 6, 10, batch=1)
    expert(x, t, contexts)
    assert pool.last_call.send_text
    x2 = torch.randn_like(x)
    out = expert(x2, t, contexts)  # the next step: same contexts, new latent
    assert not pool.last_call.send_text  # every rank embeds from its kept part and reuses its keys/values
    texts = pool.worker_texts()
    assert [(texts[rank][0], texts[rank][1]["high"]) for rank in range(1, world)] == [(1, 1)] * (world - 1)
    assert expert.module.kept_texts == 1
    assert max_diff(out, expert.module(x2, t, contexts)) < TOLERANCE
    expert.forget_text()
    texts = pool.worker_texts()  # only the high expert's are gone (another test's low-expert call may keep its own)
    assert all(texts[rank][0] == 0 and "high" not in texts[rank][1] for rank in range(1, world))
    assert expert.module.kept_texts == 0


@torch.no_grad()
def test_cfg_groups_keep_their_own_text_part(experts):
    expert = experts.expert("low")
    expert.forget_text()
    x, t, (cond, uncond) = inputs(1, 6, 10, batch=2, seed=3)
    x, t = x[:1], t[:1]
    expert(torch.cat([x, x]), torch.cat([t, t]), [cond, uncond])
    both = expert(torch.cat([x, x]) * 0.5, torch.cat([t, t]), [cond, uncond])  # a new list, the same tensors
    assert not experts.pool.last_call.send_text
    v_cond, v_uncond = expert.module(x * 0.5, t, [cond]), expert.module(x * 0.5, t, [uncond])
    assert max_diff(both[:1], v_cond) < TOLERANCE and max_diff(both[1:], v_uncond) < TOLERANCE
    texts = experts.pool.worker_texts()
    assert all(texts[rank][0] == 1 and texts[rank][1]["low"] == 1 for rank in texts)  # one part per rank: its group's
    expert.forget_text()
