"""LoRA stacks through the shared cache and every placement: the sampler's result, what is loaded, what is reused."""

from __future__ import annotations

import pytest
import torch

from cache_testing import cpu_experts
from conftest import CONFIG
from wan_core.dit.loader import load_dit
from wan_core.io.checkpoint import CheckpointError
from wan_core.lora import apply_stack
from wan_core.memory.budget import GiB, MemoryBudget
from wan_core.memory.cache import ModelCache
from wan_core.sampling.experts import ResidentExperts
from wan_core.sampling.placement import CachedExperts, dit_expert_spec
from wan_core.sampling.sampler import sample_moe
from wan_core.testing.tiny import dit as tiny_dit
from wan_core.testing.tiny import lora as tiny_lora

RUN = dict(shape=(1, 16, 1, 8, 8), seed=3, steps=4, device="cpu", solver="euler", shift=5.0, cfg_high=1.0, cfg_low=1.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("placement")
    high = tiny_dit.write_single_file(folder / "high.safetensors", tiny_dit.random_state_dict(CONFIG, seed=11))
    low = tiny_dit.write_single_file(folder / "low.safetensors", tiny_dit.random_state_dict(CONFIG, seed=12))
    loras = {role: tiny_lora.write_lightning_file(folder / f"lightning_{role}.safetensors", role) for role in ("high", "low")}
    g = torch.Generator().manual_seed(0)
    positive = [torch.randn(7, 4096, generator=g)]
    return high, low, loras, positive


def reference(setup, high_strength: float, low_strength: float):
    high, low, loras, positive = setup
    models = []
    for path, lora, strength in ((high, loras["high"], high_strength), (low, loras["low"], low_strength)):
        model = load_dit(path)
        apply_stack(model, [(str(lora), strength)], base_path=path)
        models.append(model)
    return sample_moe(ResidentExperts(*models), positive, None, **RUN)


def experts(setup, placement, cache, high_strength=1.0, low_strength=1.0, loads=None):
    high, low, loras, _ = setup
    specs = [dit_expert_spec(high, device="cpu", loras=[(str(loras["high"]), high_strength)]),
             dit_expert_spec(low, device="cpu", loras=[(str(loras["low"]), low_strength)])]
    return cpu_experts(specs, placement, cache, loads)


@pytest.mark.parametrize("placement", ["resident", "swap", "stream"])
def test_every_placement_gives_the_merged_experts_result(setup, placement):
    cache = ModelCache(MemoryBudget(vram_bytes=0, ram_bytes=4 * GiB))
    out = sample_moe(experts(setup, placement, cache), setup[3], None, **RUN)
    assert torch.equal(out, reference(setup, 1.0, 1.0))


def test_a_strength_change_reuses_the_cached_experts_and_equals_a_fresh_load_within_1e_5(setup):
    cache = ModelCache(MemoryBudget(vram_bytes=0, ram_bytes=4 * GiB))
    loads: list = []
    sample_moe(experts(setup, "resident", cache, loads=loads), setup[3], None, **RUN)
    changed = sample_moe(experts(setup, "resident", cache, 0.5, -1.0, loads=loads), setup[3], None, **RUN)
    assert loads == ["high", "low"] and cache.stats().reuses == 2
    assert (changed - reference(setup, 0.5, -1.0)).abs().max().item() <= 1e-5
    assert len(cache.status().entries) == 2  # the entries were re-keyed, not duplicated


def test_removing_the_lora_through_the_cache_gives_the_plain_experts_bit_for_bit(setup):
    high, low, _, positive = setup
    cache = ModelCache(MemoryBudget(vram_bytes=0, ram_bytes=4 * GiB))
    sample_moe(experts(setup, "swap", cache), positive, None, **RUN)
    plain = CachedExperts(dit_expert_spec(high, device="cpu"), dit_expert_spec(low, device="cpu"), device="cpu",
                          placement="swap", cache=cache)
    out = sample_moe(plain, positive, None, **RUN)
    assert torch.equal(out, sample_moe(ResidentExperts(load_dit(high), load_dit(low)), positive, None, **RUN))
    # swap on a CPU keeps the idle expert in its file: high was dropped after its steps and is read again; the low
    # entry (still cached) is turned back into the plain expert in place
    assert (cache.stats().loads, cache.stats().reuses) == (3, 1)


def test_a_reuse_that_fails_drops_the_entry_and_the_next_request_loads_cleanly(setup, tmp_path):
    high, _, loras, _ = setup
    cache = ModelCache(MemoryBudget(vram_bytes=0, ram_bytes=4 * GiB))
    good = dit_expert_spec(high, device="cpu", loras=[(str(loras["high"]), 1.0)])
    cache.get(good.key, good.load, size_bytes=good.size_bytes, device="cpu", reuse=good.reuse)
    bad_file = tmp_path / "gone.safetensors"
    bad_file.write_bytes(loras["low"].read_bytes())
    bad = dit_expert_spec(high, device="cpu", loras=[(str(bad_file), 1.0)])
    bad_file.write_bytes(b"0" * 16)  # replaced by garbage after the request was made
    with pytest.raises(CheckpointError, match="gone.safetensors"):
        cache.get(bad.key, bad.load, size_bytes=bad.size_bytes, device="cpu", reuse=bad.reuse)
    assert len(cache.status().entries) == 0
    module = cache.get(good.key, good.load, size_bytes=good.size_bytes, device="cpu", reuse=good.reuse)
    assert cache.stats().loads == 2 and torch.isfinite(next(module.parameters())).all()
