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
import os
import threading
import traceback
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn as nn

from .budget import (MemoryBudget, NotEnoughMemoryError, bytes_by_tier, free_bytes, gib, is_out_of_memory,
                     module_bytes, tier_of)
from .offload import BlockStreamer, discard_module, move_module

log = logging.getLogger("wan_core.memory.cache")

Loader = Callable[[torch.device], nn.Module]
FreeMemoryCallback = Callable[[int, torch.device], None]


def _freeze(value: object) -> object:
    """A hashable, order-independent form of a setting value (dtypes and paths as strings)."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return tuple(sorted((_freeze(v) for v in value), key=repr))
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


@dataclass(frozen=True)
class CacheKey:
    """What identifies loaded weights: kind, file identity, and the settings that change the tensors."""

    kind: str
    identity: tuple
    settings: tuple = ()

    @classmethod
    def for_file(cls, kind: str, path: str | os.PathLike, **settings: object) -> "CacheKey":
        """Key of a weights file (or official folder) loaded with `settings` (e.g. dtype="bf16", loras=[...])."""
        from ..io.checkpoint import file_identity

        return cls(kind, file_identity(path), tuple(sorted((k, _freeze(v)) for k, v in settings.items())))

    @property
    def label(self) -> str:
        """Short human name: kind, file name and settings."""
        name = os.path.basename(str(self.identity[0])) if self.identity else "?"
        settings = ", ".join(f"{k}={v}" for k, v in self.settings)
        return f"{self.kind} {name}" + (f" ({settings})" if settings else "")


@dataclass
class _Entry:
    key: CacheKey
    module: nn.Module
    size_bytes: int
    locks: int = 0
    pinned: bool = False
    streamer: BlockStreamer | None = None

    def held(self) -> dict[str, int]:
        return self.streamer.bytes_by_tier() if self.streamer is not None else bytes_by_tier(self.module)

    def where(self) -> str:
        held = self.held()
        if self.streamer is not None:
            return f"{'+'.join(sorted(held))} (streaming blocks to {tier_of(self.streamer.device)})"
        if not held:
            return "nowhere"
        where = "+".join(sorted(held))
        return where + (" (pinned)" if self.pinned and where == "cpu" else "")


@dataclass
class CacheStats:
    """Counters since the cache was created: loads from file, hits, moves between tiers, evictions."""

    loads: int = 0
    hits: int = 0
    moves: int = 0
    evictions: int = 0
    load_counts: dict[CacheKey, int] = field(default_factory=dict)

    def loads_of(self, key: CacheKey) -> int:
        """How many times `key` was loaded from its file."""
        return self.load_counts.get(key, 0)


@dataclass(frozen=True)
class EntryStatus:
    """One cached model: what, where, how big."""

    label: str
    kind: str
    where: str
    bytes: int
    locked: bool


@dataclass(frozen=True)
class CacheStatus:
    """What the cache holds where, against its budgets (str() gives a few log lines)."""

    entries: tuple[EntryStatus, ...]
    held: dict[str, int]
    budget: MemoryBudget

    def __str__(self) -> str:
        held = ", ".join(f"{tier} {gib(n)}" for tier, n in sorted(self.held.items())) or "nothing"
        lines = [f"model cache: {held} held (budget {self.budget})"]
        lines += [f"  {e.label}: {e.where}, {gib(e.bytes)}{' [in use]' if e.locked else ''}" for e in self.entries]
        return "\n".join(lines)


class ModelCache:
    """Loaded models keyed by CacheKey, kept inside a MemoryBudget with LRU eviction (see module docstring)."""

    def __init__(self, budget: MemoryBudget | None = None, *,
                 free_fn: Callable[[torch.device], int] = free_bytes) -> None:
        self._budget = budget
        self._free_fn = free_fn
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self._lock = threading.RLock()
        self._stats = CacheStats()
        self._free_callback: FreeMemoryCallback | None = None

    # --- configuration -------------------------------------------------------------------------------
    @property
    def budget(self) -> MemoryBudget:
        """The budgets in force (automatic from the device and the system unless set)."""
        if self._budget is None:
            self._budget = MemoryBudget.auto()
        return self._budget

    def set_budget(self, budget: MemoryBudget | None) -> None:
        """Replace the budgets (None: automatic); entries over the new budget are evicted on the next request."""
        with self._lock:
            self._budget = budget

    def set_free_memory_callback(self, fn: FreeMemoryCallback | None) -> None:
        """Register `fn(bytes, device)`, called before weights go onto a device whose free memory is short."""
        self._free_callback = fn

    # --- queries -------------------------------------------------------------------------------------
    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def stats(self) -> CacheStats:
        """A copy of the counters."""
        with self._lock:
            s = self._stats
            return CacheStats(s.loads, s.hits, s.moves, s.evictions, dict(s.load_counts))

    def held(self, tier: str | None = None) -> dict[str, int] | int:
        """Bytes held per tier ('cpu', 'cuda:0'), or for one tier."""
        with self._lock:
            total: dict[str, int] = {}
            for entry in self._entries.values():
                for t, n in entry.held().items():
                    total[t] = total.get(t, 0) + n
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
            entries = tuple(EntryStatus(e.key.label, e.key.kind, e.where(), sum(e.held().values()), e.locks > 0)
                            for e in self._entries.values())
            return CacheStatus(entries, self.held(), self.budget)

    def free_memory(self, device: torch.device | str) -> int:
        """Measured free memory of the pool holding `device`."""
        return self._free_fn(torch.device(device))

    # --- getting models ------------------------------------------------------------------------------
    def get(self, key: CacheKey, load: Loader, *, size_bytes: int, device: torch.device | str,
            pin: bool = False, lock: bool = False) -> nn.Module:
        """The model for `key` on `device`: cached (moved if needed) or loaded with `load(device)`.

        `size_bytes` is what the loaded weights will take (made room for before loading); `lock` also
        locks the entry (see `lock`). Raises NotEnoughMemoryError when the budget or the measured free
        memory cannot hold it.
        """
        device = torch.device(device)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self._stats.hits += 1
                self._place(entry, device, pin)
                entry.locks += int(lock)
                return entry.module
            self._make_room(size_bytes, device, exclude=(key,), what=key.label)
            try:
                module = load(device)
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc) or isinstance(exc, NotEnoughMemoryError):
                    raise
                raise self._oom(exc, f"loading {key.label}", size_bytes, device) from exc
            entry = _Entry(key, module, size_bytes, locks=int(lock))
            self._entries[key] = entry
            self._stats.loads += 1
            self._stats.load_counts[key] = self._stats.load_counts.get(key, 0) + 1
            log.info("model cache: loaded %s from its file onto %s (%s)", key.label, tier_of(device), gib(size_bytes))
            if pin and device.type == "cpu" and torch.cuda.is_available():
                self._pin(entry)
            return module

    def stream(self, key: CacheKey, load: Loader, *, size_bytes: int, device: torch.device | str,
               prefetch: bool = True, pin: bool = True, blocks: str = "blocks", lock: bool = False) -> nn.Module:
        """The model for `key` kept in RAM with its `blocks` streamed to `device` one at a time (see BlockStreamer)."""
        device = torch.device(device)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.streamer is not None and entry.streamer.device == device:
                self._entries.move_to_end(key)
                self._stats.hits += 1
                entry.locks += int(lock)
                return entry.module
            module = self.get(key, load, size_bytes=size_bytes, device="cpu", pin=pin)
            entry = self._entries[key]
            streamer = BlockStreamer(module, getattr(module, blocks), device, prefetch=prefetch)
            if device.type != "cpu":
                self._make_room(streamer.device_bytes(), device, exclude=(key,), what=f"streaming {key.label}")
            entry.locks += 1  # streaming memory must not evict the entry being streamed
            try:
                streamer.attach()
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc) or isinstance(exc, NotEnoughMemoryError):
                    raise
                raise self._oom(exc, f"streaming {key.label}", streamer.device_bytes(), device) from exc
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
                self._unstream(entry)

    def streamer(self, key: CacheKey) -> BlockStreamer | None:
        """The entry's active BlockStreamer, if it is being streamed."""
        entry = self._entries.get(key)
        return None if entry is None else entry.streamer

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
    def hold(self, key: CacheKey) -> Iterator[nn.Module]:
        """`with cache.hold(key) as module:` keeps the entry where it is while the block runs."""
        self.lock(key)
        try:
            yield self._entries[key].module
        finally:
            self.unlock(key)

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
                self._unstream(entry)
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
            self._empty_cache(device)
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
    def _place(self, entry: _Entry, device: torch.device, pin: bool) -> None:
        """Move a cached entry onto `device` (making room first), all or nothing."""
        target = tier_of(device)
        held = entry.held()
        pin = pin and target == "cpu" and torch.cuda.is_available()
        if entry.streamer is None and set(held) <= {target} and (not pin or entry.pinned):
            return
        if entry.locks and entry.streamer is not None:
            raise RuntimeError(f"{entry.key.label} is being streamed by a run and cannot move")
        self._unstream(entry)
        need = module_bytes(entry.module) - entry.held().get(target, 0)
        if need > 0:
            self._make_room(need, device, exclude=(entry.key,), what=entry.key.label)
        try:
            move_module(entry.module, device, pin=pin)
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            raise self._oom(exc, f"moving {entry.key.label} to {target}", need, device) from exc
        entry.pinned = pin or (entry.pinned and target == "cpu")
        self._stats.moves += 1

    def _pin(self, entry: _Entry) -> None:
        try:
            move_module(entry.module, "cpu", pin=True)
            entry.pinned = True
        except RuntimeError as exc:  # pinning is an optimisation: keep the pageable copy
            log.warning("could not pin %s in RAM (%s); keeping it pageable", entry.key.label, exc)

    def _victim(self, tier: str, exclude: tuple) -> _Entry | None:
        """The least recently used unlocked entry holding memory on `tier`."""
        for entry in self._entries.values():
            if entry.key not in exclude and not entry.locks and entry.held().get(tier, 0) > 0:
                return entry
        return None

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
            self._empty_cache(device)
            free = self._free_fn(device)
        return None

    def _make_room(self, need: int, device: torch.device, *, exclude: tuple, what: str) -> None:
        problem = self._room(need, device, exclude)
        if problem is not None:
            tier = tier_of(device)
            raise NotEnoughMemoryError(
                f"not enough memory for {what}: {problem} (budget {self.budget}). "
                + _advice(tier), needed=need, free=self._free_fn(device), device=tier)

    def _evict(self, entry: _Entry, tier: str) -> None:
        """Move an entry off `tier`: device -> RAM when RAM has room, otherwise drop it."""
        self._stats.evictions += 1
        if tier != "cpu" and self._demote(entry):
            return
        self._drop(entry)

    def _demote(self, entry: _Entry) -> bool:
        """Move an entry to RAM if the RAM budget and free RAM allow; otherwise drop it. True when kept."""
        self._unstream(entry)
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

    def _drop(self, entry: _Entry) -> int:
        self._unstream(entry)
        freed = sum(entry.held().values())
        self._entries.pop(entry.key, None)
        discard_module(entry.module)
        return freed

    def _unstream(self, entry: _Entry) -> None:
        if entry.streamer is not None:
            entry.streamer.detach()
            entry.streamer = None

    def _oom(self, exc: BaseException, what: str, need: int, device: torch.device) -> NotEnoughMemoryError:
        """Turn a torch out-of-memory error into our message; frees what the failed attempt left behind."""
        if exc.__traceback__ is not None:
            traceback.clear_frames(exc.__traceback__)  # frames of the failed load hold its partial tensors
        self._empty_cache(device)
        tier = tier_of(device)
        free = self._free_fn(device)
        return NotEnoughMemoryError(
            f"out of memory while {what}: needed {gib(need)} on {tier}, {gib(free)} free "
            f"(budget {self.budget}). " + _advice(tier), needed=need, free=free, device=tier)

    @staticmethod
    def _empty_cache(device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _advice(tier: str) -> str:
    if tier == "cpu":
        return ("To fit: use placement 'swap' (one expert in memory at a time, the other re-read from its file), "
                "fp8 weights (half the size), or raise the RAM budget (WANMOE_RAM_GB) / close other programs.")
    return ("To fit: use placement 'swap' (one expert on the GPU at a time) or 'stream' (blocks streamed to the "
            "GPU), fp8 weights (half the size), or free VRAM (Unload models, other programs).")


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
