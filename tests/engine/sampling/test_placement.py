"""wan_core.sampling.placement: policy choice, block streaming, and MoE runs through the cache-backed ExpertSource."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cache_testing import TINY, Cancelled, expert_bytes, file_loader, inputs, one_thread, run_moe, specs, write_experts  # noqa: F401
from wan_core.memory.cache import CacheKey, ModelCache
from wan_core.sampling.experts import ResidentExperts
from wan_core.memory.budget import GiB, MemoryBudget, NotEnoughMemoryError
from wan_core.memory.offload import BlockStreamer
from wan_core.dit.sizes import stream_bytes_for
from wan_core.sampling.placement import CachedExperts, ExpertSpec, plan_placement
from wan_core.dit.model import DiTConfig

GPU = dict(device_is_cpu=False, device_name="cuda:0")
A14B = 28 * GiB  # one bf16 expert, roughly




# --- choosing a placement -------------------------------------------------------------------------------
def test_auto_picks_the_first_placement_that_fits():
    plan = lambda dev, ram: plan_placement("auto", high_bytes=A14B, low_bytes=A14B, stream_bytes=2 * GiB,  # noqa: E731
                                           device_room=dev, ram_room=ram, **GPU)
    assert (plan(70 * GiB, 100 * GiB).policy, plan(70 * GiB, 100 * GiB).idle) == ("resident", "device")
    assert (plan(40 * GiB, 100 * GiB).policy, plan(40 * GiB, 100 * GiB).idle) == ("swap", "ram")
    assert (plan(40 * GiB, 20 * GiB).policy, plan(40 * GiB, 20 * GiB).idle) == ("swap", "file")
    assert (plan(20 * GiB, 100 * GiB).policy, plan(20 * GiB, 100 * GiB).idle) == ("stream", "ram")
    assert (plan(20 * GiB, 40 * GiB).policy, plan(20 * GiB, 40 * GiB).idle) == ("stream", "file")
    with pytest.raises(NotEnoughMemoryError) as err:
        plan(20 * GiB, 16 * GiB)  # neither one expert on the GPU nor one in RAM
    message = str(err.value)
    assert "swap needs one expert on cuda:0: 28.00 GiB" in message and "stream needs 2.00 GiB on cuda:0" in message
    assert "20.00 GiB is available for weights on cuda:0 and 16.00 GiB in RAM" in message and "fp8" in message


def test_a_requested_placement_that_cannot_fit_names_the_one_that_would():
    with pytest.raises(NotEnoughMemoryError, match=r"placement 'resident' needs both experts on cuda:0: 56\.00 GiB, "
                                                   r"but 40\.00 GiB is available.*Placement 'swap' fits"):
        plan_placement("resident", high_bytes=A14B, low_bytes=A14B, stream_bytes=2 * GiB, device_room=40 * GiB,
                       ram_room=100 * GiB, **GPU)
    forced = plan_placement("stream", high_bytes=A14B, low_bytes=A14B, stream_bytes=2 * GiB, device_room=70 * GiB,
                            ram_room=100 * GiB, **GPU)
    assert (forced.policy, forced.idle) == ("stream", "ram") and "requested" in str(forced)
    with pytest.raises(ValueError, match="unknown placement 'fast'"):
        plan_placement("fast", high_bytes=1, low_bytes=1, stream_bytes=1, device_room=1, ram_room=1, **GPU)


def test_cpu_device_never_streams_by_itself_and_swaps_to_file():
    plan = plan_placement("auto", high_bytes=10, low_bytes=10, stream_bytes=2, device_room=13, ram_room=13,
                          device_is_cpu=True, device_name="cpu")
    assert (plan.policy, plan.idle) == ("swap", "file")
    with pytest.raises(NotEnoughMemoryError):
        plan_placement("auto", high_bytes=10, low_bytes=10, stream_bytes=2, device_room=9, ram_room=9,
                       device_is_cpu=True, device_name="cpu")


def test_stream_footprint_of_the_real_expert():
    per_param = 2  # bf16
    need = stream_bytes_for(DiTConfig.a14b(), per_param)
    assert 1.5 * GiB < need < 2.5 * GiB  # non-block weights plus two of the 40 blocks


# --- block streaming ------------------------------------------------------------------------------------
def streaming_case():
    """A tiny resident DiT, its inputs, its output and each parameter's host storage, for the streaming tests."""
    torch.manual_seed(0)
    from wan_core.dit.model import WanDiT

    model = WanDiT(TINY).eval().requires_grad_(False)
    x, context = inputs(TINY)
    t = torch.tensor([900.0])
    with torch.no_grad():
        expected = model(x, t, context)
    return model, x, context, t, expected, {name: p.data_ptr() for name, p in model.named_parameters()}


@pytest.mark.parametrize("prefetch", [True, False])
def test_block_streaming_matches_the_resident_model_and_restores_it(prefetch):
    model, x, context, t, expected, host = streaming_case()
    streamer = BlockStreamer(model, model.blocks, "cpu", prefetch=prefetch)
    streamer.attach()
    seen = []

    def check(block, args):  # runs after the streamer's own pre-hook: the block must be a device copy
        i = list(model.blocks).index(block)
        params = dict(model.named_parameters())
        copied = [params[f"blocks.{i}.{n}"].data_ptr() != host[f"blocks.{i}.{n}"] for n, _ in block.named_parameters()]
        others = [params[n].data_ptr() == host[n] for n in host if n.startswith("blocks.") and not n.startswith(f"blocks.{i}.")]
        seen.append((i, all(copied), all(others)))

    checks = [b.register_forward_pre_hook(check) for b in model.blocks]
    with torch.no_grad():
        first = model(x, t, context)
        second = model(x, t, context)
    for h in checks:
        h.remove()
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert seen == [(i, True, True) for i in range(TINY.num_layers)] * 2
    assert streamer.max_blocks_on_device == (2 if prefetch else 1)
    assert streamer.copies == (2 * TINY.num_layers + 1 if prefetch else 2 * TINY.num_layers)
    assert model.text_embedding[0].weight.data_ptr() != host["text_embedding.0.weight"]  # non-block on "device"
    streamer.detach()
    assert {name: p.data_ptr() for name, p in model.named_parameters()} == host
    assert all(not b._forward_pre_hooks and not b._forward_hooks for b in model.blocks)
    with torch.no_grad():
        assert torch.equal(model(x, t, context), expected)


def test_resident_blocks_stay_on_the_device_and_only_the_rest_are_copied():
    model, x, context, t, expected, host = streaming_case()
    streamer = BlockStreamer(model, model.blocks, "cpu", prefetch=False, resident=1)
    full = BlockStreamer(model, model.blocks, "cpu", prefetch=False)
    streamer.attach()
    resident_copy = model.blocks[0].ffn[0].weight.data_ptr()
    with torch.no_grad():
        first, second = model(x, t, context), model(x, t, context)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert streamer.copies == 2 * (TINY.num_layers - 1)  # block 0 was copied once, at attach
    assert resident_copy != host["blocks.0.ffn.0.weight"] and model.blocks[0].ffn[0].weight.data_ptr() == resident_copy
    block = sum(p.numel() * 4 for p in model.blocks[1].parameters())
    assert streamer.device_bytes() == full.device_bytes() + block  # one more block on the device, two still streamed
    streamer.detach()
    assert {name: p.data_ptr() for name, p in model.named_parameters()} == host


def test_streaming_keeps_as_many_blocks_resident_as_the_room_beside_it_holds():
    spec = ExpertSpec(CacheKey("dit", ("x",)), lambda dev: None, size_bytes=100 * GiB, stream_bytes=10 * GiB,
                      block_bytes=2 * GiB)
    experts = CachedExperts.__new__(CachedExperts)
    experts.specs, experts.device = {"high": spec, "low": spec}, torch.device("cuda", 0)
    experts._room = lambda tier, device: (17 * GiB, "test") if tier != "cpu" else (200 * GiB, "test")
    plan = experts._plan("stream", working_bytes=1 * GiB)
    assert plan.policy == "stream" and plan.resident_blocks == 3  # (17 - 1 - 10) GiB // 2 GiB
    assert plan.reason.endswith("3 blocks kept on the device")


def test_streaming_detach_after_an_exception_inside_a_forward():
    from wan_core.dit.model import WanDiT

    torch.manual_seed(0)
    model = WanDiT(TINY).eval().requires_grad_(False)
    host = {name: p.data_ptr() for name, p in model.named_parameters()}
    streamer = BlockStreamer(model, model.blocks, "cpu")
    streamer.attach()
    x, context = inputs(TINY)

    def boom(i: int) -> None:
        if i == 1:
            raise Cancelled()

    def fail_inside(block, args, output):
        raise Cancelled()

    with pytest.raises(Cancelled), torch.no_grad():
        model(x, torch.tensor([900.0]), context, before_block=boom)
    hook = model.blocks[0].register_forward_hook(fail_inside)  # fails with block 0 on the device
    with pytest.raises(Cancelled), torch.no_grad():
        model(x, torch.tensor([900.0]), context)
    hook.remove()
    streamer.detach()
    assert {name: p.data_ptr() for name, p in model.named_parameters()} == host


# --- MoE runs through the cache -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def expert_files(tmp_path_factory) -> tuple[Path, Path]:
    return write_experts(tmp_path_factory.mktemp("experts"), TINY)


@pytest.fixture(scope="module")
def reference(expert_files) -> torch.Tensor:
    high, low = expert_files
    experts = ResidentExperts(file_loader(high, TINY)(torch.device("cpu")), file_loader(low, TINY)(torch.device("cpu")))
    return run_moe(experts, *inputs(TINY))


def cached_experts(expert_files, placement: str, ram_bytes: int | None = None, cache: ModelCache | None = None,
                   loads: list | None = None, **settings) -> CachedExperts:
    cache = cache or ModelCache(MemoryBudget(vram_bytes=0, ram_bytes=ram_bytes or 4 * GiB))
    return CachedExperts(*specs(*expert_files, TINY, loads, **settings), device="cpu", placement=placement, cache=cache)


def assert_idle(cache: ModelCache) -> None:
    """Nothing locked, nothing streaming, no hooks left on any cached module."""
    for entry in cache._entries.values():
        assert entry.locks == 0 and entry.streamer is None
        assert all(not m._forward_pre_hooks and not m._forward_hooks for m in entry.module.modules())
        assert all(p.device.type == "cpu" for p in entry.module.parameters())


@pytest.mark.parametrize("placement", ["resident", "swap", "stream"])
def test_every_placement_gives_the_resident_output_bit_for_bit(expert_files, reference, placement):
    loads: list = []
    experts = cached_experts(expert_files, placement, loads=loads)
    assert experts.policy == placement
    assert torch.equal(run_moe(experts, *inputs(TINY)), reference)
    assert_idle(experts.cache)
    first = len(loads)
    assert torch.equal(run_moe(experts, *inputs(TINY)), reference)
    if placement == "resident":
        assert loads == ["high.safetensors", "low.safetensors"]  # the re-run loaded nothing
    else:  # on a CPU device the idle expert goes back to its file at the boundary
        assert first == 2 and loads[2:] == ["high.safetensors"]  # low stayed from the first run


def test_rerun_with_the_budget_for_both_loads_nothing_and_a_changed_setting_reloads(expert_files, reference):
    cache = ModelCache(MemoryBudget(vram_bytes=0, ram_bytes=4 * GiB))
    loads: list = []
    for _ in range(2):
        experts = cached_experts(expert_files, "auto", cache=cache, loads=loads, lora="none")
        assert experts.policy == "resident" and torch.equal(run_moe(experts, *inputs(TINY)), reference)
    assert loads == ["high.safetensors", "low.safetensors"]
    experts = cached_experts(expert_files, "auto", cache=cache, loads=loads, lora="other")
    run_moe(experts, *inputs(TINY))
    assert len(loads) == 4 and cache.stats().loads == 4


def test_auto_swaps_when_the_budget_holds_one_expert(expert_files, reference):
    n = expert_bytes(TINY)
    experts = cached_experts(expert_files, "auto", ram_bytes=int(1.3 * n))
    assert (experts.plan.policy, experts.plan.idle) == ("swap", "file")
    peak = []
    real_get = experts.cache.get

    def spying_get(*args, **kwargs):
        module = real_get(*args, **kwargs)
        peak.append(experts.cache.held("cpu"))
        return module

    experts.cache.get = spying_get
    assert torch.equal(run_moe(experts, *inputs(TINY)), reference)
    assert max(peak) <= 1.3 * n


def test_requested_resident_beyond_the_budget_fails_before_loading(expert_files):
    n = expert_bytes(TINY)
    loads: list = []
    with pytest.raises(NotEnoughMemoryError, match="placement 'resident' needs both experts on cpu.*'swap' fits"):
        cached_experts(expert_files, "resident", ram_bytes=int(1.3 * n), loads=loads)
    assert loads == []


@pytest.mark.parametrize("placement", ["resident", "swap", "stream"])
def test_cancel_mid_run_then_run_again_gives_the_uninterrupted_output(expert_files, reference, placement):
    experts = cached_experts(expert_files, placement)

    def cancel(step: int, block: int) -> None:
        if (step, block) == (4, 1):  # low-noise expert, in the middle of its blocks
            raise Cancelled()

    with pytest.raises(Cancelled):
        run_moe(experts, *inputs(TINY), before_block=cancel)
    assert_idle(experts.cache)
    assert torch.equal(run_moe(experts, *inputs(TINY)), reference)
    with pytest.raises(Cancelled):  # cancelled while the high-noise expert is active, on the first step
        run_moe(experts, *inputs(TINY), before_block=lambda s, b: (_ for _ in ()).throw(Cancelled()))
    assert_idle(experts.cache)
    assert torch.equal(run_moe(experts, *inputs(TINY)), reference)


def test_out_of_memory_loading_at_the_boundary_gives_the_message_and_a_usable_cache(expert_files, reference):
    high, low = specs(*expert_files, TINY)
    failures = [1]
    real_load = low.load

    def flaky(device):
        if failures:
            failures.pop()
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 MiB")
        return real_load(device)

    from dataclasses import replace

    cache = ModelCache(MemoryBudget(vram_bytes=0, ram_bytes=4 * GiB))
    experts = CachedExperts(high, replace(low, load=flaky), device="cpu", placement="swap", cache=cache)
    with pytest.raises(NotEnoughMemoryError, match=r"out of memory while loading dit low\.safetensors: needed .* free") as err:
        run_moe(experts, *inputs(TINY))
    assert "fp8" in str(err.value) and "WANMOE_RAM_GB" in str(err.value)  # the expert source's advice
    assert_idle(cache)
    assert torch.equal(run_moe(experts, *inputs(TINY)), reference)


def test_a_cache_refusal_carries_the_experts_advice(expert_files):
    """The cache says what was needed and what was held; the expert source adds which settings would fit."""
    high, low = specs(*expert_files, TINY)
    cache = ModelCache(MemoryBudget(vram_bytes=0, ram_bytes=int(2.5 * high.size_bytes)))
    experts = CachedExperts(high, low, device="cpu", placement="resident", cache=cache)  # planned with room for both
    cache.get(CacheKey("other", ("held",)), high.load, size_bytes=high.size_bytes, device="cpu", lock=True)
    experts.expert("high")
    with pytest.raises(NotEnoughMemoryError) as err:
        experts.expert("low")
    experts.release()
    message = str(err.value)
    assert "held by models in use" in message
    assert "'swap'" in message and "fp8" in message
    assert err.value.needed == high.size_bytes


def test_out_of_memory_while_streaming_a_block_leaves_the_expert_reusable(expert_files, reference, monkeypatch):
    experts = cached_experts(expert_files, "stream")
    real_stage, calls = BlockStreamer._stage, []

    def stage(self, i, stream):
        calls.append(i)
        if len(calls) == 5:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 MiB")
        return real_stage(self, i, stream)

    monkeypatch.setattr(BlockStreamer, "_stage", stage)
    with pytest.raises(NotEnoughMemoryError, match="block streaming ran out of memory"):
        run_moe(experts, *inputs(TINY))
    assert_idle(experts.cache)
    assert torch.equal(run_moe(experts, *inputs(TINY)), reference)


def test_unknown_expert_name(expert_files):
    experts = cached_experts(expert_files, "resident")
    with pytest.raises(ValueError, match="unknown expert 'mid'"):
        experts.expert("mid")


def test_the_same_file_for_both_experts_is_one_entry_loaded_once(expert_files):
    high, _ = specs(*expert_files, TINY)
    loads: list = []
    from dataclasses import replace

    spec = replace(high, load=lambda d: (loads.append(1), high.load(d))[1])
    cache = ModelCache(MemoryBudget(vram_bytes=0, ram_bytes=4 * GiB))
    experts = CachedExperts(spec, spec, device="cpu", placement="swap", cache=cache)
    run_moe(experts, *inputs(TINY))
    assert loads == [1] and len(cache.status().entries) == 1
    assert_idle(cache)
