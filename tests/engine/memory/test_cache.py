"""wan_core.memory.cache: keys, counted loads, LRU inside budgets, release/free hooks, status, failure safety."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

import wan_core.memory.offload as offload
from wan_core.memory.cache import CacheKey, ModelCache, get_cache, release_all, set_free_memory_callback
from wan_core.memory.budget import MemoryBudget, NotEnoughMemoryError

MB = 1024**2
CPU = torch.device("cpu")


def linear_bytes(n: int) -> int:
    return (n * n + n) * 4


def linear_loader(n: int, calls: list, seed: int = 0):
    """Loader of an n x n Linear (deterministic weights) that records each call."""
    def load(device: torch.device) -> nn.Module:
        calls.append(n)
        torch.manual_seed(seed)
        return nn.Linear(n, n).to(device).requires_grad_(False)
    return load


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("text_encoder", "vae", "high", "low", "a", "b", "c"):
        out[name] = tmp_path / f"{name}.safetensors"
        out[name].write_bytes(name.encode())
    return out


def big_cache(**kw) -> ModelCache:
    return ModelCache(MemoryBudget(vram_bytes=64 * 1024 * MB, ram_bytes=64 * 1024 * MB), **kw)


def test_keys_share_identical_settings_and_split_on_changes(files):
    a = CacheKey.for_file("vae", files["vae"], dtype=torch.bfloat16, tiles={"x": 1, "y": 2})
    b = CacheKey.for_file("vae", str(files["vae"]), tiles={"y": 2, "x": 1}, dtype=torch.bfloat16)
    assert a == b and hash(a) == hash(b)
    assert a != CacheKey.for_file("vae", files["vae"], dtype=torch.float16, tiles={"x": 1, "y": 2})
    assert a != CacheKey.for_file("dit", files["vae"], dtype=torch.bfloat16, tiles={"x": 1, "y": 2})
    loras = CacheKey.for_file("dit", files["high"], loras=[("lightx2v.safetensors", 1.0)])
    assert loras != CacheKey.for_file("dit", files["high"], loras=[("lightx2v.safetensors", 0.5)])
    assert a.label == "vae vae.safetensors (dtype=torch.bfloat16, tiles=(('x', 1), ('y', 2)))"
    files["vae"].write_bytes(b"a new download")  # size (and mtime) change: a different file
    assert CacheKey.for_file("vae", files["vae"], dtype=torch.bfloat16, tiles={"x": 1, "y": 2}) != a


def test_workflow_rerun_loads_nothing_and_a_changed_setting_reloads_only_that_entry(files):
    cache = big_cache()
    calls: list = []

    def workflow(vae_dtype: str) -> dict[str, nn.Module]:
        got = {}
        for name, n, settings in (("text_encoder", 32, {"dtype": "bf16"}), ("vae", 16, {"dtype": vae_dtype}),
                                  ("high", 24, {"dtype": "bf16"}), ("low", 24, {"dtype": "bf16"})):
            key = CacheKey.for_file(name, files[name], **settings)
            got[name] = cache.get(key, linear_loader(n, calls), size_bytes=linear_bytes(n), device=CPU)
            if name == "text_encoder":
                cache.offload(key)
        return got

    first = workflow("bf16")
    assert cache.stats().loads == 4
    again = workflow("bf16")
    assert cache.stats().loads == 4 and all(again[k] is first[k] for k in first)
    assert cache.stats().hits == 4
    changed = workflow("fp32")
    stats = cache.stats()
    assert stats.loads == 5 and calls == [32, 16, 24, 24, 16]
    assert stats.loads_of(CacheKey.for_file("vae", files["vae"], dtype="fp32")) == 1
    assert stats.loads_of(CacheKey.for_file("vae", files["vae"], dtype="bf16")) == 1
    assert all(changed[k] is first[k] for k in ("text_encoder", "high", "low"))


def test_lru_eviction_keeps_the_budget(files):
    n = 256
    cache = ModelCache(MemoryBudget(vram_bytes=0, ram_bytes=int(2.5 * linear_bytes(n))))
    calls: list = []
    keys = {name: CacheKey.for_file("dit", files[name]) for name in "abc"}
    get = lambda name: cache.get(keys[name], linear_loader(n, calls), size_bytes=linear_bytes(n), device=CPU)  # noqa: E731
    a = get("a")
    get("b")
    assert get("a") is a  # a is now the most recently used
    get("c")  # over budget: b (least recently used) goes
    assert keys["b"] not in cache and keys["a"] in cache and keys["c"] in cache
    assert cache.held("cpu") <= cache.budget.ram_bytes
    assert cache.stats().evictions == 1
    get("b")
    assert keys["a"] not in cache and len(calls) == 4


def test_locked_entries_stay_and_an_impossible_request_says_what_to_change(files):
    n = 256
    cache = ModelCache(MemoryBudget(vram_bytes=0, ram_bytes=int(1.5 * linear_bytes(n))))
    key_a, key_b = CacheKey.for_file("dit", files["a"]), CacheKey.for_file("dit", files["b"])
    with cache_lock(cache, key_a, n):
        with pytest.raises(NotEnoughMemoryError) as err:
            cache.get(key_b, linear_loader(n, []), size_bytes=linear_bytes(n), device=CPU)
    message = str(err.value)
    assert "needed 0.25 MiB on cpu but its budget is 0.38 MiB and 0.25 MiB of it is held by models in use" in message
    assert "needed" in message and "budget" in message and "in use" in message
    # Which settings would make it fit is the caller's to say (tests/engine/sampling/test_placement.py
    # test_a_cache_refusal_carries_the_experts_advice), not the cache's.
    assert err.value.needed == linear_bytes(n)
    assert key_a in cache
    cache.get(key_b, linear_loader(n, []), size_bytes=linear_bytes(n), device=CPU)  # unlocked: a is evicted
    assert key_a not in cache


class cache_lock:
    """Load an entry and hold it locked for a with-block."""

    def __init__(self, cache: ModelCache, key: CacheKey, n: int) -> None:
        self.cache, self.key, self.n = cache, key, n

    def __enter__(self) -> nn.Module:
        return self.cache.get(self.key, linear_loader(self.n, []), size_bytes=linear_bytes(self.n), device=CPU,
                              lock=True)

    def __exit__(self, *exc) -> None:
        self.cache.unlock(self.key)


def test_release_all_frees_storage_even_when_referenced(files):
    cache = big_cache()
    held_key, free_key = CacheKey.for_file("dit", files["a"]), CacheKey.for_file("dit", files["b"])
    kept = cache.get(held_key, linear_loader(64, []), size_bytes=linear_bytes(64), device=CPU, lock=True)
    loose = cache.get(free_key, linear_loader(64, []), size_bytes=linear_bytes(64), device=CPU)
    assert release_all_of(cache) == linear_bytes(64)
    assert free_key not in cache and held_key in cache
    assert loose.weight.device.type == "meta"  # storage gone although this test still references the module
    assert kept.weight.device.type == "cpu"
    cache.unlock(held_key)
    assert cache.release_all() == linear_bytes(64) and cache.held() == {}


def release_all_of(cache: ModelCache) -> int:
    return cache.release_all()


def test_free_evicts_until_measured_memory_is_free_and_calls_the_host_first(files):
    total = 10 * linear_bytes(64)
    cache_box: list[ModelCache] = []
    other_programs = [8 * linear_bytes(64)]

    def measured(device: torch.device) -> int:
        return total - other_programs[0] - cache_box[0].held("cpu")

    cache = ModelCache(MemoryBudget(vram_bytes=0, ram_bytes=total), free_fn=measured)
    cache_box.append(cache)
    requests: list = []

    def host_frees(n: int, device: torch.device) -> None:  # what ComfyUI's free_memory would do
        requests.append((n, device.type))
        other_programs[0] = 0

    cache.set_free_memory_callback(host_frees)
    keys = [CacheKey.for_file("dit", files[x]) for x in "abc"]
    cache.get(keys[0], linear_loader(64, []), size_bytes=linear_bytes(64), device=CPU)
    assert requests == []  # enough was free: the host is not asked
    cache.get(keys[1], linear_loader(64, []), size_bytes=3 * linear_bytes(64), device=CPU)
    assert requests == [(3 * linear_bytes(64), "cpu")]
    assert cache.free(9 * linear_bytes(64), CPU) == linear_bytes(64)  # one entry was enough, the LRU one
    assert keys[0] not in cache and keys[1] in cache


def test_status_lists_what_is_where(files):
    cache = big_cache()
    key = CacheKey.for_file("vae", files["vae"], dtype="bf16")
    cache.get(key, linear_loader(512, []), size_bytes=linear_bytes(512), device=CPU, lock=True)
    status = cache.status()
    assert status.held == {"cpu": linear_bytes(512)}
    assert [(e.kind, e.where, e.bytes, e.locked) for e in status.entries] == [("vae", "cpu", linear_bytes(512), True)]
    text = str(status)
    assert "vae vae.safetensors (dtype=bf16): cpu, 1.00 MiB [in use]" in text and "budget VRAM" in text


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"),
    RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 5242880 bytes"),
])
def test_out_of_memory_in_a_load_gives_the_clear_message_and_a_usable_cache(files, error):
    cache = big_cache()
    good = CacheKey.for_file("dit", files["a"])
    model = cache.get(good, linear_loader(64, []), size_bytes=linear_bytes(64), device=CPU)
    partial: list = []

    def failing(device: torch.device) -> nn.Module:
        partial.append(torch.ones(1024, 1024))
        raise error

    bad = CacheKey.for_file("dit", files["b"])
    with pytest.raises(NotEnoughMemoryError) as err:
        cache.get(bad, failing, size_bytes=5 * MB, device=CPU)
    message = str(err.value)
    assert "out of memory while loading dit b.safetensors: needed 5.00 MiB on cpu" in message
    assert " free " in message  # the advice (placement, fp8) is the caller's: see test_placement.py
    assert err.value.__cause__ is error
    assert bad not in cache and cache.stats().loads == 1
    assert cache.get(good, linear_loader(64, []), size_bytes=linear_bytes(64), device=CPU) is model
    cache.get(bad, linear_loader(32, []), size_bytes=linear_bytes(32), device=CPU)
    assert bad in cache


def test_out_of_memory_in_a_move_leaves_the_model_where_it_was(files, monkeypatch):
    cache = big_cache()
    key = CacheKey.for_file("dit", files["a"])
    model = cache.get(key, linear_loader(64, []), size_bytes=linear_bytes(64), device=CPU)
    x = torch.randn(3, 64)
    expected = model(x)
    before = {name: p.data_ptr() for name, p in model.named_parameters()}
    real_copy, calls = offload._copy_to, []

    def copy_then_fail(t, device, pin):
        calls.append(1)
        if len(calls) == 2:  # the weight was copied, the bias fails
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB")
        return real_copy(t, device, pin)

    monkeypatch.setattr(offload, "_copy_to", copy_then_fail)
    with pytest.raises(NotEnoughMemoryError, match="out of memory while moving dit a.safetensors to meta"):
        cache.get(key, linear_loader(64, []), size_bytes=linear_bytes(64), device="meta")
    assert {name: p.data_ptr() for name, p in model.named_parameters()} == before
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert cache.where(key) == "cpu" and torch.equal(model(x), expected)
    monkeypatch.setattr(offload, "_copy_to", real_copy)
    assert cache.get(key, linear_loader(64, []), size_bytes=linear_bytes(64), device=CPU) is model
    assert cache.stats().loads == 1


def test_one_process_wide_cache_and_module_level_hooks():
    assert get_cache() is get_cache()
    seen: list = []
    set_free_memory_callback(lambda n, d: seen.append(n))
    try:
        assert get_cache()._free_callback is not None
    finally:
        set_free_memory_callback(None)
    assert release_all() >= 0


def test_using_locks_while_in_use_and_unlocks_on_errors(files):
    cache = ModelCache(MemoryBudget(vram_bytes=0, ram_bytes=int(1.5 * linear_bytes(256))))
    vae, other = CacheKey.for_file("vae", files["vae"]), CacheKey.for_file("dit", files["a"])
    with pytest.raises(ZeroDivisionError):
        with cache.using(vae, linear_loader(256, []), size_bytes=linear_bytes(256), device=CPU) as model:
            with pytest.raises(NotEnoughMemoryError):  # the VAE in use cannot be evicted for another model
                cache.get(other, linear_loader(256, []), size_bytes=linear_bytes(256), device=CPU)
            1 / 0
    assert model.weight.device.type == "cpu" and cache.status().entries[0].locked is False
    cache.get(other, linear_loader(256, []), size_bytes=linear_bytes(256), device=CPU)
    assert vae not in cache
