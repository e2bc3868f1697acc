"""One process-wide model cache shared by every node: load once, keep VRAM and RAM inside budgets.

Entries are keyed by the file's identity (path, size, mtime) and the settings that change the loaded
tensors (dtype, fp8 mode, LoRA set); identical keys share one entry, and asking again loads nothing. An
entry lives on the compute device, in RAM (pinned when a GPU is present), or is dropped; when a tier is
over its budget or its measured free memory is short, least-recently-used entries are moved down a tier
(device -> RAM) or dropped (and re-read from their file on next use). Entries in use are locked.

How nodes use it (a loader is any callable `device -> nn.Module`):

    cache = get_cache()
    key = CacheKey.for_file("vae", path, dtype="bf16")
    with cache.using(key, lambda dev: load_vae(path, dev, torch.bfloat16), size_bytes=n, device=device,
                     offload_after=True) as vae:   # locked while in use; then off the GPU (RAM if it fits)
        ... decode ...

The DiT experts go through `placement.CachedExperts`, the sampler's ExpertSource.

ComfyUI cooperation (wired in nodes/): `set_free_memory_callback(fn)` registers `fn(bytes, device)` that
asks ComfyUI to make room before weights go onto a device; "Unload models" calls `release_all()`, and
ComfyUI's own requests for memory call `free(bytes, device)`.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections import OrderedDict
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn as nn

from .budget import MemoryBudget, NotEnoughMemoryError, free_bytes, gib, is_out_of_memory, module_bytes, tier_of
from .keys import CacheKey, CacheStats, CacheStatus, Entry, EntryStatus, held_by_tier
from .offload import BlockStreamer, discard_module, move_module

__all__ = ["CacheKey", "CacheStats", "CacheStatus", "EntryStatus", "FreeMemoryCallback", "Loader", "ModelCache", "Reuse",
           "get_cache", "release_all", "set_free_memory_callback"]

log = logging.getLogger("wan_core.memory.cache")

Loader = Callable[[torch.device], nn.Module]
Reuse = Callable[[nn.Module], None]  # turns a loaded module of one variant into another, in place
FreeMemoryCallback = Callable[[int, torch.device], None]


def _streamer(module: nn.Module, blocks: str | tuple[str, ...], device: torch.device, *, prefetch: bool,
              resident: int) -> BlockStreamer:
    """A BlockStreamer over the block list named first, plus the other named lists `module` has."""
    first, *others = (blocks,) if isinstance(blocks, str) else blocks
    more = [getattr(module, name) for name in others if getattr(module, name, None) is not None]
    return BlockStreamer(module, getattr(module, first), device, prefetch=prefetch, resident=resident, more=more)


class _CacheViews:
    """Read-only views of a cache's entries (what is held where), for callers and status lines."""

    _entries: OrderedDict[CacheKey, Entry]
    _lock: threading.RLock
    _stats: CacheStats
    budget: MemoryBudget

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def stats(self) -> CacheStats:
        """A copy of the counters."""
        with self._lock:
            return self._stats.copy()

    def held(self, tier: str | None = None) -> dict[str, int] | int:
        """Bytes held per tier ('cpu', 'cuda:0'), or for one tier."""
        with self._lock:
            total = held_by_tier(self._entries.values())
            return total if tier is None else total.get(tier, 0)

    def evictable(self, tier: str) -> int:
        """Bytes on `tier` held by entries not in use (what eviction could give back)."""
        with self._lock:
            return sum(e.held().get(tier, 0) for e in self._entries.values() if not e.locks)

    def where(self, key: CacheKey) -> str | None:
        """Where an entry lives ('cuda:0', 'cpu', ...), or None when it is not cached."""
        entry = self._entries.get(key)
        return None if entry is None else "+".join(sorted(entry.held())) or None

    def status(self) -> CacheStatus:
        """What is resident where and how big."""
        with self._lock:
            return CacheStatus(tuple(EntryStatus.of(e) for e in self._entries.values()), self.held(), self.budget)


class ModelCache(_CacheViews):
    """Loaded models keyed by CacheKey, kept inside a MemoryBudget with LRU eviction (see module docstring)."""

    def __init__(self, budget: MemoryBudget | None = None, *,
                 free_fn: Callable[[torch.device], int] = free_bytes) -> None:
        self._budget = budget
        self._free_fn = free_fn
        self._entries: OrderedDict[CacheKey, Entry] = OrderedDict()
        self._lock = threading.RLock()
        self._stats = CacheStats()
        self._free_callback: FreeMemoryCallback | None = None

    # --- configuration and measures ---------------------------------------------------------------------
    @property
    def budget(self) -> MemoryBudget:
        """The budgets in force (automatic from the device and the system unless set)."""
        if self._budget is None:
            self._budget = MemoryBudget.auto()
        return self._budget

    def set_free_memory_callback(self, fn: FreeMemoryCallback | None) -> None:
        """Register `fn(bytes, device)`, called before weights go onto a device whose free memory is short."""
        self._free_callback = fn

    def free_memory(self, device: torch.device | str) -> int:
        """Measured free memory of the pool holding `device`."""
        return self._free_fn(torch.device(device))

    # --- getting models ------------------------------------------------------------------------------
    def get(self, key: CacheKey, load: Loader, *, size_bytes: int, device: torch.device | str,
            pin: bool = False, lock: bool = False, reuse: Reuse | None = None) -> nn.Module:
        """The model for `key` on `device`: cached (moved if needed), made from another variant, or loaded.

        `size_bytes` is what the loaded weights will take (made room for before loading); `lock` also
        locks the entry (see `lock`). `reuse(module)`, when given, turns an idle entry of another variant of
        the same base (see CacheKey.variant) into this key's weights in place, before any load is tried.
        Raises NotEnoughMemoryError when the budget or the measured free memory cannot hold it.
        """
        device = torch.device(device)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._stats.hits += 1
            elif reuse is not None:
                entry = self._reused(key, reuse, device, pin)
            if entry is not None:
                self._entries.move_to_end(key)
                self._place(entry, device, pin)
                entry.locks += int(lock)
                return entry.module
            self._make_room(size_bytes, device, exclude=(key,), what=key.label)
            with _oom_as_ours(self, f"loading {key.label}", size_bytes, device):
                module = load(device)
            entry = Entry(key, module, size_bytes, locks=int(lock))
            self._entries[key] = entry
            self._stats.loads += 1
            self._stats.load_counts[key] = self._stats.load_counts.get(key, 0) + 1
            log.info("model cache: loaded %s from its file onto %s (%s)", key.label, tier_of(device), gib(size_bytes))
            if pin and device.type == "cpu" and torch.cuda.is_available():
                _pin(entry)
            return module

    def stream(self, key: CacheKey, load: Loader, *, size_bytes: int, device: torch.device | str,
               prefetch: bool = True, pin: bool = True, blocks: str | tuple[str, ...] = "blocks", lock: bool = False,
               resident: int = 0, reuse: Reuse | None = None) -> nn.Module:
        """The model for `key` kept in RAM with its `blocks` streamed to `device` one at a time (the first `resident`
        kept there; see BlockStreamer). Several names: the first list, then those of the others the module has."""
        device = torch.device(device)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.streamer is not None and entry.streamer.device == device:
                self._entries.move_to_end(key)
                self._stats.hits += 1
                entry.locks += int(lock)
                return entry.module
            module = self.get(key, load, size_bytes=size_bytes, device="cpu", pin=pin, reuse=reuse)
            entry = self._entries[key]
            streamer = _streamer(module, blocks, device, prefetch=prefetch, resident=resident)
            if device.type != "cpu":
                self._make_room(streamer.device_bytes(), device, exclude=(key,), what=f"streaming {key.label}")
            entry.locks += 1  # streaming memory must not evict the entry being streamed
            try:
                with _oom_as_ours(self, f"streaming {key.label}", streamer.device_bytes(), device):
                    streamer.attach()
            finally:
                entry.locks -= 1
            entry.streamer = streamer
            entry.locks += int(lock)
            return module

    def unstream(self, key: CacheKey) -> None:
        """Stop streaming an entry: hooks removed, every tensor back on the host."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.stop_streaming()

    # --- locks ---------------------------------------------------------------------------------------
    def lock(self, key: CacheKey) -> None:
        """Protect an entry from eviction and release_all until `unlock` (locks nest)."""
        with self._lock:
            self._entries[key].locks += 1

    def unlock(self, key: CacheKey) -> None:
        """Undo one `lock`; a missing entry is ignored."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.locks > 0:
                entry.locks -= 1

    @contextmanager
    def using(self, key: CacheKey, load: Loader, *, size_bytes: int, device: torch.device | str,
              offload_after: bool = True) -> Iterator[nn.Module]:
        """`with cache.using(key, load, ...) as model:` get and lock it; afterwards unlock and, if asked, offload it.

        For the text encoder and the VAE: they leave the compute device when their node is done (to RAM
        when the budget allows), whether the block finished or raised.
        """
        module = self.get(key, load, size_bytes=size_bytes, device=device, lock=True)
        try:
            yield module
        finally:
            self.unlock(key)
            if offload_after:
                self.offload(key)

    # --- giving memory back --------------------------------------------------------------------------
    def offload(self, key: CacheKey) -> None:
        """Take an entry off the compute device: to RAM when the RAM budget allows, else drop it."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and not entry.locks:
                entry.stop_streaming()
                if any(t != "cpu" for t in entry.held()):
                    self._demote(entry)

    def drop(self, key: CacheKey) -> int:
        """Forget an entry and free its memory (it is re-read from its file next time); returns bytes freed."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return 0
            if entry.locks:
                raise RuntimeError(f"{key.label} is in use and cannot be dropped")
            return self._drop(entry)

    def free(self, bytes_needed: int, device: torch.device | str) -> int:
        """Evict unlocked entries from `device` (LRU first) until `bytes_needed` are free there; returns bytes evicted."""
        device = torch.device(device)
        tier = tier_of(device)
        evicted = 0
        with self._lock:
            while self._free_fn(device) < bytes_needed:
                victim = self._victim(tier, ())
                if victim is None:
                    break
                evicted += victim.held().get(tier, 0)
                self._evict(victim, tier)
            _empty_device_cache(device)
        return evicted

    def release_all(self) -> int:
        """Drop every entry not in use (ComfyUI's "Unload models"); returns bytes freed."""
        with self._lock:
            idle = [e for e in self._entries.values() if not e.locks]
            freed = sum(self._drop(e) for e in idle)
            kept = len(self._entries)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.info("model cache: released %d model(s), %s freed; %d in use kept", len(idle), gib(freed), kept)
        return freed

    # --- internals -----------------------------------------------------------------------------------
    def _place(self, entry: Entry, device: torch.device, pin: bool) -> None:
        """Move a cached entry onto `device` (making room first), all or nothing."""
        target = tier_of(device)
        held = entry.held()
        pin = pin and target == "cpu" and torch.cuda.is_available()
        if entry.streamer is None and set(held) <= {target} and (not pin or entry.pinned):
            return
        if entry.locks and entry.streamer is not None:
            raise RuntimeError(f"{entry.key.label} is being streamed by a run and cannot move")
        entry.stop_streaming()
        need = module_bytes(entry.module) - entry.held().get(target, 0)
        if need > 0:
            self._make_room(need, device, exclude=(entry.key,), what=entry.key.label)
        with _oom_as_ours(self, f"moving {entry.key.label} to {target}", need, device):
            move_module(entry.module, device, pin=pin)
        entry.pinned = pin or (entry.pinned and target == "cpu")
        self._stats.moves += 1

    def _victim(self, tier: str, exclude: tuple) -> Entry | None:
        """The least recently used unlocked entry holding memory on `tier`."""
        return next((e for e in self._entries.values()
                     if e.key not in exclude and not e.locks and e.held().get(tier, 0) > 0), None)

    def _room(self, need: int, device: torch.device, exclude: tuple) -> str | None:
        """Evict until `need` bytes fit on `device`'s tier; None when they do, else why they cannot."""
        tier = tier_of(device)
        limit = self.budget.limit(tier)
        while self.held(tier) + need > limit:
            victim = self._victim(tier, exclude)
            if victim is None:
                return (f"needed {gib(need)} on {tier} but its budget is {gib(limit)} and "
                        f"{gib(self.held(tier))} of it is held by models in use")
            self._evict(victim, tier)
        free = self._free_fn(device)
        if free < need and self._free_callback is not None:
            try:
                self._free_callback(need, device)
            except Exception:  # a host hook failing must not break loading; measured memory decides
                log.exception("free-memory callback failed")
            free = self._free_fn(device)
        while free < need:
            victim = self._victim(tier, exclude)
            if victim is None:
                return f"needed {gib(need)} on {tier} but only {gib(free)} is free"
            self._evict(victim, tier)
            _empty_device_cache(device)
            free = self._free_fn(device)
        return None

    def _make_room(self, need: int, device: torch.device, *, exclude: tuple, what: str) -> None:
        problem = self._room(need, device, exclude)
        if problem is not None:
            tier = tier_of(device)
            raise NotEnoughMemoryError(f"not enough memory for {what}: {problem} (budget {self.budget}).",
                                       needed=need, free=self._free_fn(device), device=tier)

    def _evict(self, entry: Entry, tier: str) -> None:
        """Move an entry off `tier`: device -> RAM when RAM has room, otherwise drop it."""
        self._stats.evictions += 1
        if tier != "cpu" and self._demote(entry):
            return
        self._drop(entry)

    def _demote(self, entry: Entry) -> bool:
        """Move an entry to RAM if the RAM budget and free RAM allow; otherwise drop it. True when kept."""
        entry.stop_streaming()
        need = module_bytes(entry.module) - entry.held().get("cpu", 0)
        cpu = torch.device("cpu")
        if self._room(need, cpu, (entry.key,)) is None:
            try:
                pin = torch.cuda.is_available()
                move_module(entry.module, cpu, pin=pin)
                entry.pinned = pin
                self._stats.moves += 1
                return True
            except RuntimeError as exc:  # RAM allocation or pinning failed: re-read from the file instead
                log.warning("could not move %s to RAM (%s); dropping it", entry.key.label, exc)
        self._drop(entry)
        return False

    def _drop(self, entry: Entry) -> int:
        entry.stop_streaming()
        freed = sum(entry.held().values())
        self._entries.pop(entry.key, None)
        discard_module(entry.module)
        return freed

    def _reused(self, key: CacheKey, reuse: Reuse, device: torch.device, pin: bool) -> Entry | None:
        """The idle entry of another variant of `key`'s base, on `device` and turned into `key` by `reuse`; or None.

        If `reuse` fails the entry is dropped (its weights may be half changed), so nothing half-applied is served.
        """
        entry = next((e for e in reversed(self._entries.values()) if e.key.base == key.base and not e.locks), None)
        if entry is None:
            return None
        entry.stop_streaming()
        self._place(entry, device, pin)
        old = self._entries.pop(entry.key).key  # out of the table unless the reuse succeeds
        try:
            with _oom_as_ours(self, f"applying {key.label}", 0, device):
                reuse(entry.module)
        except BaseException:
            discard_module(entry.module)
            raise
        entry.key = key
        self._entries[key] = entry
        self._stats.reuses += 1
        log.info("model cache: reused %s as %s (no file read)", old.label, key.label)
        return entry


@contextmanager
def _oom_as_ours(cache: ModelCache, what: str, need: int, device: torch.device) -> Iterator[None]:
    """Turn a torch out-of-memory error inside the block into our message, freeing what the attempt left."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc) or isinstance(exc, NotEnoughMemoryError):
            raise
        if exc.__traceback__ is not None:
            traceback.clear_frames(exc.__traceback__)  # frames of the failed load hold its partial tensors
        _empty_device_cache(device)
        tier, free = tier_of(device), cache.free_memory(device)
        raise NotEnoughMemoryError(f"out of memory while {what}: needed {gib(need)} on {tier}, {gib(free)} "
                                   f"free (budget {cache.budget}).", needed=need, free=free, device=tier) from exc


def _empty_device_cache(device: torch.device) -> None:
    """Give a CUDA device's cached, unused blocks back (after an eviction or a failed allocation)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _pin(entry: Entry) -> None:
    """Pin an entry's host tensors (faster copies to the GPU); pinning is an optimisation, so failure is logged."""
    try:
        move_module(entry.module, "cpu", pin=True)
        entry.pinned = True
    except RuntimeError as exc:
        log.warning("could not pin %s in RAM (%s); keeping it pageable", entry.key.label, exc)



_CACHE: ModelCache | None = None
_CACHE_LOCK = threading.Lock()


def get_cache() -> ModelCache:
    """The process-wide cache every node shares."""
    global _CACHE
    with _CACHE_LOCK:
        if _CACHE is None:
            _CACHE = ModelCache()
        return _CACHE


def set_free_memory_callback(fn: FreeMemoryCallback | None) -> None:
    """Register `fn(bytes, device)` asking the host (ComfyUI) to free memory before weights go onto a device."""
    get_cache().set_free_memory_callback(fn)


def release_all() -> int:
    """Drop every cached model not in use (for ComfyUI's "Unload models"); returns bytes freed."""
    return get_cache().release_all()
