"""Placement "shard" (FSDP2 fully_shard per block): each rank holds 1/N of every block; results equal the unsharded run.

Tolerance 1e-5 (fp32), as the other multi-rank tests: the gathered weights are the file's, bit for bit; only the
token-sliced computation sums in another order.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from wan_core import api
from wan_core.dit.loader import load_dit
from wan_core.parallel.experts import ParallelExperts
from wan_core.parallel.pool import release_pool
from wan_core.parallel.sharding import local_bytes, shard_blocks, sharded_experts

from parallel_testing import CPU, TINY4, expert_kwargs, inputs, pool_on, sample, write_tiny_experts

SHARDED = "wan_core.parallel.sharding:sharded_experts"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_tiny_experts(tmp_path_factory.mktemp("parallel_sharding"), placement="shard", gpus=2)


@pytest.fixture(scope="module", params=[2, 4], ids=["2ranks", "4ranks"])
def world(request):
    pool_on(request.param)
    yield request.param
    release_pool()


@torch.no_grad()
def test_sharded_forward_equals_the_whole_expert_and_holds_a_share_of_each_block(world, model):
    pool = pool_on(world)
    source = ParallelExperts(pool, sharded_experts(device=CPU, **expert_kwargs(model)), SHARDED, expert_kwargs(model))
    expert = source.expert("high")
    whole = load_dit(model.high_noise_path)
    x, t, contexts = inputs(2, 6, 10, batch=2)
    assert float((expert(x, t, contexts) - whole(x, t, contexts)).abs().max()) < 1e-5
    block_bytes = sum(p.numel() * p.element_size() for p in whole.blocks.parameters())
    held = local_bytes(expert.module.blocks)  # after the forward: every block resharded
    assert block_bytes / world <= held < block_bytes / world * 1.05  # dim-0 shards, rows padded to a multiple of N


@pytest.mark.parametrize("world", [2], indirect=True)  # 4 ranks: the forward test above (CI has 2 cores)
def test_a_sharded_moe_run_equals_one_device(world, model):
    g = torch.Generator().manual_seed(5)
    positive, negative = torch.randn(6, TINY4.text_dim, generator=g), torch.randn(4, TINY4.text_dim, generator=g)
    schedule = api.plan_sampling(model, steps=3, shift=5.0, solver="unipc", denoise=1.0, cfg_high=4.0, cfg_low=3.0)

    def run(**changes) -> torch.Tensor:
        return sample(dataclasses.replace(model, **changes), schedule, positive, negative, torch.zeros(1, 16, 2, 6, 10),
                      seed=2)

    reference = run(gpus=1, placement="auto")
    assert float((run(gpus=world) - reference).abs().max()) < 1e-5


def test_shard_needs_several_gpus(model):
    with pytest.raises(ValueError, match="placement 'shard' splits the experts' weights over several GPUs; set gpus to 2"):
        dataclasses.replace(model, gpus=1)


def test_fp8_weights_are_not_sharded(model):
    fp8 = load_dit(model.high_noise_path, weight_dtype="fp8_e4m3fn")
    with pytest.raises(ValueError, match="placement 'shard' gathers 16/32-bit weights, but this expert keeps "
                                         "torch.float8_e4m3fn weights; choose weight_dtype bf16 or fp16"):
        shard_blocks(fp8, CPU)
