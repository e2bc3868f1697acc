"""How N processes split one DiT call: CFG groups x Ulysses size, from the world size, the batch and the heads.

A call with guidance runs cond and uncond as one batch of 2B; with two CFG groups each group takes one half
(no communication at all between the groups until the outputs are gathered). Inside a group the tokens are
split over `ulysses` ranks, and the all-to-all around attention needs the heads to split evenly over them
(A14B: 40 heads, so 1, 2, 4, 5, 8 or 10 ranks per group). At guidance 1 (Lightning LoRAs) there is only one
batch half, and every rank goes to sequence parallelism.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

from ..config import MAX_GPUS

GPUS_ENV = "WANMOE_GPUS"


@dataclass(frozen=True)
class Layout:
    """One DiT call's split: `cfg` groups (each a share of the batch) of `ulysses` ranks (each a share of the tokens)."""

    cfg: int
    ulysses: int

    @property
    def world(self) -> int:
        """Ranks the layout uses."""
        return self.cfg * self.ulysses

    def group_of(self, rank: int) -> tuple[int, int]:
        """(CFG group, rank inside the group's Ulysses ranks) of a global rank."""
        return divmod(rank, self.ulysses)


def plan_layout(world: int, batch: int, heads: int) -> Layout:
    """The layout of one call of `batch` items on `world` ranks: CFG groups when the batch halves, else all Ulysses.

    Raises ValueError (naming the sizes that work) when no layout splits the heads evenly.
    """
    if world < 1 or batch < 1:
        raise ValueError(f"need at least one rank and one batch item, got world {world}, batch {batch}")
    if world > 1 and world % 2 == 0 and batch % 2 == 0 and heads % (world // 2) == 0:
        return Layout(cfg=2, ulysses=world // 2)
    if heads % world == 0:
        return Layout(cfg=1, ulysses=world)
    raise ValueError(f"{world} GPUs cannot split the model's {heads} attention heads evenly (Ulysses sequence "
                     f"parallelism gives each GPU heads/{world}); use {_sizes_text(heads)} GPUs")


def check_world(world: int, heads: int, batches: Iterable[int] = (1,)) -> None:
    """Fail before anything starts when `world` ranks fit no layout for one of the run's call `batches`."""
    if not 1 <= world <= MAX_GPUS:
        raise ValueError(f"gpus must be between 1 and {MAX_GPUS}, got {world}")
    for batch in batches:
        plan_layout(world, batch, heads)


def valid_world_sizes(heads: int, limit: int = MAX_GPUS) -> list[int]:
    """World sizes up to `limit` that work at every guidance (the heads split over all of them)."""
    return [n for n in range(1, limit + 1) if heads % n == 0]


def _sizes_text(heads: int) -> str:
    sizes = [str(n) for n in valid_world_sizes(heads)]
    return ", ".join(sizes[:-1]) + f" or {sizes[-1]}" if len(sizes) > 1 else sizes[0]


def default_gpus() -> int:
    """GPUs per run when the model loader does not say: WANMOE_GPUS, else 1."""
    value = os.environ.get(GPUS_ENV, "").strip()
    if not value:
        return 1
    try:
        gpus = int(value)
    except ValueError:
        raise ValueError(f"{GPUS_ENV}={value!r} is not a whole number of GPUs (1 to {MAX_GPUS})") from None
    if not 1 <= gpus <= MAX_GPUS:
        raise ValueError(f"{GPUS_ENV}={gpus} is outside 1 to {MAX_GPUS}")
    return gpus
