"""Memory budgets and measurement: how much VRAM and RAM the model cache may hold, and how much is free.

A `MemoryBudget` caps the bytes of model weights the cache keeps on the compute device (`vram_bytes`) and in
system memory (`ram_bytes`). When the compute device is the CPU, both tiers are the same pool: weights "on
the device" are RAM and count against `ram_bytes`. Budgets default to fractions of the device's and the
system's totals and can be overridden (constructor, or WANMOE_VRAM_GB / WANMOE_RAM_GB in the environment).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn as nn

GiB = 1024**3
VRAM_FRACTION = 0.9  # of total VRAM: the rest is left for activations and other programs
RAM_FRACTION = 0.75  # of total RAM


class NotEnoughMemoryError(RuntimeError):
    """What a run needed did not fit: the message says what was needed, what was free, and what to change."""

    def __init__(self, message: str, *, needed: int = 0, free: int = 0, device: str = "") -> None:
        super().__init__(message)
        self.needed, self.free, self.device = needed, free, device

    def advise(self, advice: str) -> "NotEnoughMemoryError":
        """The same error with the caller's advice (which of its settings would make it fit) appended, unless the
        message already says what would make it fit."""
        if "To fit:" in str(self):
            return self
        return NotEnoughMemoryError(f"{self} {advice}", needed=self.needed, free=self.free, device=self.device)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a device out-of-memory error and for a failed host allocation (which torch raises as RuntimeError)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def gib(n: int | float) -> str:
    """Bytes as a short human string ('1.25 GiB', '340 MiB')."""
    if abs(n) >= GiB:
        return f"{n / GiB:.2f} GiB"
    if abs(n) >= 10 * 1024**2 or n == 0:
        return f"{n / 1024**2:.0f} MiB"
    return f"{n / 1024**2:.2f} MiB"


def tier_of(device: torch.device | str) -> str:
    """The memory pool a device's tensors live in: 'cpu' or 'cuda:N' (an index is always given)."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    return device.type


def total_ram() -> int:
    """Physical system memory in bytes."""
    import psutil

    return int(psutil.virtual_memory().total)


def free_ram() -> int:
    """System memory available to this process now (psutil 'available': free + reclaimable page cache)."""
    import psutil

    return int(psutil.virtual_memory().available)


def total_vram(device: torch.device | str) -> int:
    """Total memory of a CUDA device in bytes."""
    return int(torch.cuda.mem_get_info(torch.device(device))[1])


def free_vram(device: torch.device | str) -> int:
    """Free memory of a CUDA device, counting blocks PyTorch's caching allocator holds but does not use."""
    device = torch.device(device)
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def free_bytes(device: torch.device | str) -> int:
    """Measured free memory of the pool that holds `device`'s tensors."""
    device = torch.device(device)
    if device.type == "cuda":
        return free_vram(device)
    return free_ram()


# Share of the measured free memory a working-memory estimate may claim. Estimates leave out allocator slack and
# temporaries (CPU im2col buffers of narrow convs; the VAE's estimate reads about half its measured CPU peak), so
# work is planned to use at most 70% of what is free.
ESTIMATE_SHARE = 0.7


def room(device: torch.device | str, share: float = ESTIMATE_SHARE) -> int:
    """Bytes of working memory a plan may count on on `device`: `share` of its measured free memory."""
    return int(free_bytes(device) * share)


def fits(need_bytes: int, device: torch.device | str, share: float = ESTIMATE_SHARE) -> bool:
    """Whether an estimated `need_bytes` of working memory fits on `device` with the headroom `share` leaves."""
    return need_bytes <= room(device, share)


def zeros_on_demand(shape: tuple[int, ...], device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Zeros in `shape`; on the CPU, large ones in fresh anonymous memory whose pages the OS commits only when written,
    so an empty latent costs nothing until a run fills it (and a run refused for its size allocated nothing)."""
    count = 1
    for s in shape:
        count *= s
    if torch.device(device).type != "cpu" or count * dtype.itemsize < LAZY_ZEROS_BYTES:
        return torch.zeros(shape, dtype=dtype, device=device)
    import mmap

    buffer = mmap.mmap(-1, count * dtype.itemsize)  # the tensor keeps the mapping alive and unmaps it when freed
    return torch.frombuffer(buffer, dtype=dtype, count=count).view(shape)


LAZY_ZEROS_BYTES = 64 << 20


def _env_gib(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(float(value) * GiB)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number of GiB (e.g. {name}=20)") from None


@dataclass(frozen=True)
class MemoryBudget:
    """Caps on the bytes of weights the model cache keeps in VRAM (per compute device) and in RAM."""

    vram_bytes: int
    ram_bytes: int

    @classmethod
    def auto(cls, device: torch.device | str | None = None, *, vram_bytes: int | None = None,
             ram_bytes: int | None = None) -> "MemoryBudget":
        """Budgets from the device's and the system's totals; explicit arguments and WANMOE_*_GB override them."""
        if vram_bytes is None:
            vram_bytes = _env_gib("WANMOE_VRAM_GB")
        if vram_bytes is None:
            dev = torch.device(device) if device is not None else None
            if dev is None and torch.cuda.is_available():
                dev = torch.device("cuda", torch.cuda.current_device())
            vram_bytes = int(total_vram(dev) * VRAM_FRACTION) if dev is not None and dev.type == "cuda" else 0
        if ram_bytes is None:
            ram_bytes = _env_gib("WANMOE_RAM_GB")
        if ram_bytes is None:
            ram_bytes = int(total_ram() * RAM_FRACTION)
        return cls(int(vram_bytes), int(ram_bytes))

    def limit(self, tier: str) -> int:
        """The cap for a tier ('cpu' -> RAM, 'cuda:N' -> VRAM)."""
        return self.ram_bytes if tier == "cpu" else self.vram_bytes

    def __str__(self) -> str:
        return f"VRAM {gib(self.vram_bytes)}, RAM {gib(self.ram_bytes)}"


def module_tensors(module: nn.Module) -> Iterable[torch.Tensor]:
    """Every parameter and buffer of a module, shared ones once."""
    seen: set[int] = set()
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            yield t


def bytes_by_tier(module: nn.Module) -> dict[str, int]:
    """Bytes a module's tensors occupy per memory pool (storages shared between tensors counted once)."""
    out: dict[str, int] = {}
    seen: set[tuple[str, int]] = set()
    for t in module_tensors(module):
        if t.device.type == "meta":
            continue
        tier = tier_of(t.device)
        storage = t.untyped_storage()
        ident = (tier, storage.data_ptr())
        if ident in seen:
            continue
        seen.add(ident)
        out[tier] = out.get(tier, 0) + storage.nbytes()
    return out


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers wherever they are."""
    return sum(t.numel() * t.element_size() for t in module_tensors(module))
