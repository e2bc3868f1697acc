"""parallel.plan: the layout of one DiT call (CFG groups x Ulysses size) and the GPU counts that work."""

from __future__ import annotations

import pytest

from wan_core.parallel.plan import Layout, check_world, default_gpus, plan_layout, valid_world_sizes

A14B_HEADS = 40


@pytest.mark.parametrize("world, batch, layout", [
    (1, 1, Layout(1, 1)), (1, 2, Layout(1, 1)),
    (2, 2, Layout(2, 1)),  # cond on rank 0, uncond on rank 1: no all-to-all at all
    (4, 2, Layout(2, 2)), (8, 2, Layout(2, 4)),
    (2, 1, Layout(1, 2)), (4, 1, Layout(1, 4)), (8, 1, Layout(1, 8)),  # guidance 1: every rank on the tokens
    (5, 2, Layout(1, 5)),  # an odd world cannot halve: Ulysses over all five
    (4, 4, Layout(2, 2)),  # batch 2 x (cond, uncond)
])
def test_plan_layout_of_the_a14b_heads(world, batch, layout):
    assert plan_layout(world, batch, A14B_HEADS) == layout


def test_a_world_that_does_not_split_the_heads_names_the_sizes_that_do():
    with pytest.raises(ValueError, match=r"3 GPUs cannot split the model's 40 attention heads evenly .* use 1, 2, 4, 5 or 8 GPUs"):
        plan_layout(3, 1, A14B_HEADS)
    with pytest.raises(ValueError, match="6 GPUs cannot split"):
        plan_layout(6, 2, A14B_HEADS)  # 2 CFG groups x 3 does not divide 40 either


def test_check_world_covers_every_call_batch_of_the_run():
    check_world(4, 2, batches=(2,))  # CFG 2 x Ulysses 2 on a 2-head model
    with pytest.raises(ValueError, match="4 GPUs cannot split the model's 2 attention heads"):
        check_world(4, 2, batches=(2, 1))  # a guidance-1 step needs Ulysses 4
    with pytest.raises(ValueError, match="gpus must be between 1 and 8, got 9"):
        check_world(9, A14B_HEADS)


def test_valid_world_sizes():
    assert valid_world_sizes(A14B_HEADS) == [1, 2, 4, 5, 8]
    assert valid_world_sizes(2) == [1, 2]


def test_default_gpus_from_the_environment(monkeypatch):
    monkeypatch.delenv("WANMOE_GPUS", raising=False)
    assert default_gpus() == 1
    monkeypatch.setenv("WANMOE_GPUS", "4")
    assert default_gpus() == 4
    monkeypatch.setenv("WANMOE_GPUS", "four")
    with pytest.raises(ValueError, match=r"WANMOE_GPUS='four' is not a whole number of GPUs \(1 to 8\)"):
        default_gpus()
    monkeypatch.setenv("WANMOE_GPUS", "16")
    with pytest.raises(ValueError, match="WANMOE_GPUS=16 is outside 1 to 8"):
        default_gpus()
