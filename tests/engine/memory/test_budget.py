"""wan_core.memory.budget: budgets (automatic and overridden), per-pool accounting, measured free memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from wan_core.memory.budget import GiB, MemoryBudget, bytes_by_tier, free_bytes, gib, module_bytes, tier_of


def test_auto_budget_from_the_system_and_overrides(monkeypatch):
    import psutil

    monkeypatch.delenv("WANMOE_VRAM_GB", raising=False)
    monkeypatch.delenv("WANMOE_RAM_GB", raising=False)
    auto = MemoryBudget.auto("cpu")
    assert auto.vram_bytes == 0  # a CPU compute device has no VRAM tier
    assert 0 < auto.ram_bytes < psutil.virtual_memory().total
    assert MemoryBudget.auto("cpu", ram_bytes=123).ram_bytes == 123
    monkeypatch.setenv("WANMOE_RAM_GB", "1.5")
    monkeypatch.setenv("WANMOE_VRAM_GB", "20")
    env = MemoryBudget.auto("cpu")
    assert (env.ram_bytes, env.vram_bytes) == (int(1.5 * GiB), 20 * GiB)
    monkeypatch.setenv("WANMOE_RAM_GB", "lots")
    with pytest.raises(ValueError, match="WANMOE_RAM_GB"):
        MemoryBudget.auto("cpu")


def test_limits_per_tier_and_strings():
    budget = MemoryBudget(vram_bytes=8 * GiB, ram_bytes=2 * GiB)
    assert budget.limit("cpu") == 2 * GiB and budget.limit("cuda:0") == 8 * GiB
    assert str(budget) == "VRAM 8.00 GiB, RAM 2.00 GiB"
    assert gib(3 * 1024**2) == "3.00 MiB" and gib(300 * 1024**2) == "300 MiB"
    assert tier_of("cpu") == "cpu" and tier_of(torch.device("cuda", 1)) == "cuda:1"


def test_accounting_counts_shared_storage_once_and_skips_meta():
    model = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 64))
    model[1].weight = nn.Parameter(model[0].weight.t())  # a view of the same storage
    held = bytes_by_tier(model)
    assert held == {"cpu": (64 * 32 + 32 + 64) * 4}
    assert module_bytes(model) == (2 * 64 * 32 + 32 + 64) * 4
    with torch.device("meta"):
        ghost = nn.Linear(1000, 1000)
    assert bytes_by_tier(ghost) == {}


def test_measured_free_ram_is_positive():
    assert 0 < free_bytes("cpu")


def test_out_of_memory_recognised_on_device_and_host():
    from wan_core.memory.budget import NotEnoughMemoryError, is_out_of_memory

    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
                                         "memory: you tried to allocate 30000000000 bytes"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert isinstance(NotEnoughMemoryError("x", needed=1, free=0, device="cpu"), RuntimeError)
