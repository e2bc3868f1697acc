"""What the model cache keeps and reports: keys (file identity + settings), entries, counters and status."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Iterable

import torch.nn as nn

from .budget import MemoryBudget, bytes_by_tier, gib, tier_of
from ..io.checkpoint import file_identity
from .offload import BlockStreamer


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
    """What identifies loaded weights: kind, file identity, the settings that change the tensors, and a variant.

    The variant is what is applied on top of the base weights (a LoRA stack): entries that differ only in it
    share a `base`, so the cache can turn one into the other in place (`ModelCache.get(..., reuse=...)`)
    instead of reading the file again. Each variant item is a tuple whose first element is a short label.
    """

    kind: str
    identity: tuple
    settings: tuple = ()
    variant: tuple = ()

    @classmethod
    def for_file(cls, kind: str, path: str | os.PathLike, *, variant: tuple = (), **settings: object) -> "CacheKey":
        """Key of a weights file (or official folder) loaded with `settings` (e.g. dtype="bf16") and a variant."""
        return cls(kind, file_identity(path), tuple(sorted((k, _freeze(v)) for k, v in settings.items())),
                   _freeze(variant))

    @property
    def base(self) -> "CacheKey":
        """The same key without its variant: the weights as read from the file."""
        return replace(self, variant=()) if self.variant else self

    @property
    def label(self) -> str:
        """Short human name: kind, file name, settings and variant labels."""
        name = os.path.basename(str(self.identity[0])) if self.identity else "?"
        settings = ", ".join(f"{k}={v}" for k, v in self.settings)
        variant = " + " + ", ".join(str(item[0]) for item in self.variant) if self.variant else ""
        return f"{self.kind} {name}" + (f" ({settings})" if settings else "") + variant


@dataclass
class Entry:
    key: CacheKey
    module: nn.Module
    size_bytes: int
    locks: int = 0
    pinned: bool = False
    streamer: BlockStreamer | None = None

    def stop_streaming(self) -> None:
        """Detach the entry's block streamer, if any: every tensor back on the host."""
        if self.streamer is not None:
            self.streamer.detach()
            self.streamer = None

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
    """Counters since the cache was created: loads from file, hits, moves between tiers, evictions, and reuses
    (an entry turned into another variant of the same base in place)."""

    loads: int = 0
    hits: int = 0
    moves: int = 0
    evictions: int = 0
    load_counts: dict[CacheKey, int] = field(default_factory=dict)
    reuses: int = 0

    def copy(self) -> "CacheStats":
        """A snapshot of the counters."""
        return CacheStats(self.loads, self.hits, self.moves, self.evictions, dict(self.load_counts), self.reuses)

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

    @classmethod
    def of(cls, entry: Entry) -> "EntryStatus":
        """The status line of one cache entry."""
        return cls(entry.key.label, entry.key.kind, entry.where(), sum(entry.held().values()), entry.locks > 0)


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


def held_by_tier(entries: Iterable[Entry]) -> dict[str, int]:
    """Bytes the entries hold per memory pool."""
    total: dict[str, int] = {}
    for entry in entries:
        for tier, n in entry.held().items():
            total[tier] = total.get(tier, 0) + n
    return total
