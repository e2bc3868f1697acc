"""End to end: wan_core.sampling.sampler.sample_moe with experts from dit_loader through the cache-backed ExpertSource."""

from __future__ import annotations

import pytest
import torch

from wan_core.memory.cache import ModelCache
from wan_core.dit.loader import load_dit
from wan_core.sampling.experts import ResidentExperts
from wan_core.memory.budget import GiB, MemoryBudget
from wan_core.sampling.placement import dit_expert_spec
from wan_core.sampling.sampler import sample_moe
from wan_core.testing.tiny.dit import TINY_DIT_CONFIG, random_state_dict, write_single_file

from cache_testing import Cancelled, cpu_experts, one_thread  # noqa: F401  (one_thread: autouse fixture)

SHAPE = (1, 16, 1, 8, 8)
RUN = dict(shape=SHAPE, seed=3, steps=4, device="cpu")




@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dit")
    high = write_single_file(folder / "high.safetensors", random_state_dict(TINY_DIT_CONFIG, seed=11))
    low = write_single_file(folder / "low.safetensors", random_state_dict(TINY_DIT_CONFIG, seed=12))
    g = torch.Generator().manual_seed(0)
    positive, negative = [torch.randn(7, 4096, generator=g)], [torch.randn(5, 4096, generator=g)]
    reference = sample_moe(ResidentExperts(load_dit(high), load_dit(low)), positive, negative, **RUN)
    return high, low, positive, negative, reference


def experts_for(setup, placement: str, cache: ModelCache, loads: list | None = None, low_dtype: str = "auto"):
    high, low = setup[0], setup[1]
    specs = [dit_expert_spec(high, device="cpu"), dit_expert_spec(low, device="cpu", weight_dtype=low_dtype)]
    return cpu_experts(specs, placement, cache, loads)


@pytest.mark.parametrize("placement", ["resident", "swap", "stream"])
def test_sampler_output_is_identical_under_every_placement(setup, placement):
    cache = ModelCache(MemoryBudget(vram_bytes=0, ram_bytes=4 * GiB))
    loads: list = []
    out = sample_moe(experts_for(setup, placement, cache, loads), setup[2], setup[3], **RUN)
    assert torch.equal(out, setup[4])
    assert loads == ["high", "low"]  # both experts ran


def test_windowed_run_is_identical_under_every_placement(setup):
    from wan_core.requests import ContextWindows

    run = dict(RUN, shape=(1, 16, 6, 8, 8), windows=ContextWindows(13, 4))  # 2 windows of 4 latent frames
    reference = sample_moe(ResidentExperts(load_dit(setup[0]), load_dit(setup[1])), setup[2], setup[3], **run)
    for placement in ("resident", "swap", "stream"):
        cache = ModelCache(MemoryBudget(vram_bytes=0, ram_bytes=4 * GiB))
        assert torch.equal(sample_moe(experts_for(setup, placement, cache), setup[2], setup[3], **run), reference)


def test_sampler_rerun_loads_nothing_and_a_changed_expert_setting_reloads_only_it(setup):
    cache = ModelCache(MemoryBudget(vram_bytes=0, ram_bytes=4 * GiB))
    loads: list = []
    for _ in range(2):
        assert torch.equal(sample_moe(experts_for(setup, "auto", cache, loads), setup[2], setup[3], **RUN), setup[4])
    assert loads == ["high", "low"]
    sample_moe(experts_for(setup, "auto", cache, loads, low_dtype="bf16"), setup[2], setup[3], **RUN)
    assert loads == ["high", "low", "low"]


@pytest.mark.parametrize("placement", ["swap", "stream"])
def test_sampler_cancel_then_rerun_is_identical(setup, placement):
    cache = ModelCache(MemoryBudget(vram_bytes=0, ram_bytes=4 * GiB))
    counted: list = []
    sample_moe(experts_for(setup, placement, ModelCache(cache.budget)), setup[2], setup[3],
               check_cancel=lambda: counted.append(1), **RUN)
    calls = []

    def cancel_late():
        calls.append(1)
        if len(calls) == len(counted) - 1:  # the last step (low-noise expert), before its last block
            raise Cancelled()

    with pytest.raises(Cancelled):
        sample_moe(experts_for(setup, placement, cache), setup[2], setup[3], check_cancel=cancel_late, **RUN)
    for entry in cache._entries.values():
        assert entry.locks == 0 and entry.streamer is None
    assert torch.equal(sample_moe(experts_for(setup, placement, cache), setup[2], setup[3], **RUN), setup[4])
