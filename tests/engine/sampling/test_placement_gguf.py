"""GGUF and ComfyUI-packed experts through the cache and every placement: same samples, exact size accounting."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from cache_testing import one_thread  # noqa: F401  (one_thread: autouse fixture)
from wan_core.dit.loader import load_dit
from wan_core.memory.budget import GiB, MemoryBudget, bytes_by_tier
from wan_core.memory.cache import ModelCache
from wan_core.memory.offload import BlockStreamer
from wan_core.io.quant.ggml import GGMLLinear
from wan_core.sampling.experts import ResidentExperts
from wan_core.sampling.placement import CachedExperts, dit_expert_spec
from wan_core.sampling.sampler import sample_moe
from wan_core.testing.tiny import gguf as tiny_gguf
from wan_core.testing.tiny.dit import TINY_DIT_CONFIG, random_state_dict

RUN = dict(shape=(1, 16, 1, 8, 8), seed=3, steps=4, device="cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    high, low = folder / "high_Q4_K_M.gguf", folder / "low_Q8_0.gguf"
    tiny_gguf.write_gguf(high, random_state_dict(TINY_DIT_CONFIG, seed=11), "Q4_K_M")
    tiny_gguf.write_gguf(low, random_state_dict(TINY_DIT_CONFIG, seed=12), "Q8_0")
    g = torch.Generator().manual_seed(0)
    positive, negative = [torch.randn(7, 4096, generator=g)], [torch.randn(5, 4096, generator=g)]
    reference = sample_moe(ResidentExperts(load_dit(high), load_dit(low)), positive, negative, **RUN)
    return high, low, positive, negative, reference


@pytest.mark.parametrize("placement", ["resident", "swap", "stream"])
def test_gguf_experts_sample_identically_under_every_placement(setup, placement):
    high, low, positive, negative, reference = setup
    cache = ModelCache(MemoryBudget(vram_bytes=0, ram_bytes=4 * GiB))
    experts = CachedExperts(dit_expert_spec(high, device="cpu"), dit_expert_spec(low, device="cpu"), device="cpu",
                            placement=placement, cache=cache)
    assert experts.policy == placement
    assert torch.equal(sample_moe(experts, positive, negative, **RUN), reference)


def test_the_cache_accounts_gguf_experts_at_their_block_bytes(tmp_path):
    path = tmp_path / "four_blocks_Q4_K_M.gguf"
    tiny_gguf.write_gguf(path, random_state_dict(replace(TINY_DIT_CONFIG, num_layers=4), seed=2), "Q4_K_M")
    spec = dit_expert_spec(path, device="cpu")
    module = spec.load(torch.device("cpu"))
    assert any(isinstance(m, GGMLLinear) for m in module.modules())
    assert bytes_by_tier(module) == {"cpu": spec.size_bytes}
    streamer = BlockStreamer(module, module.blocks, "cpu")
    block = sum(t.numel() * t.element_size() for t in list(module.blocks[0].parameters()) + list(module.blocks[0].buffers()))
    assert streamer.device_bytes() == spec.size_bytes - 2 * block  # everything outside the blocks, plus two of four
