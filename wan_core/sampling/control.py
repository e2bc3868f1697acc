"""VACE control over a sampling run: which steps each control stream applies at, and each forward's VaceInput.

A stream (one control video, from core WanVaceToVideo or WanMoEVaceControl) has a VACE context (normalised
inactive + reactive latents and the 64-channel mask), a strength and optionally a step range per expert:
(start, end) as fractions of that expert's steps in this run, the stream applying at the expert's step k (0-based)
of n when start <= k / n < end. The positive and negative conditioning carry their own streams (core writes the
same to both); a side without a stream gets strength 0 there, so cond and uncond can still run as one batch.
A forward in which no stream applies gets no control at all: the plain expert's cost and result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..dit.vace import VaceInput
from .experts import EXPERT_NAMES
from .schedule import Schedule

FULL_RANGE = (0.0, 1.0)
EXPERT_LABELS = {"high": "high-noise", "low": "low-noise"}


@dataclass(frozen=True)
class VaceStream:
    """One control stream: its VACE context, strength, and the part of each expert's steps it applies at."""

    context: torch.Tensor  # [1 or B, 96, T, h, w] float32
    strength: float = 1.0
    ranges: dict[str, tuple[float, float]] | None = None  # expert -> (start, end); None or absent: every step

    def applies(self, expert: str, k: int, n: int) -> bool:
        """True when the stream applies at the expert's step k of n (start <= k/n < end) with a non-zero strength."""
        start, end = (self.ranges or {}).get(expert, FULL_RANGE)
        return self.strength != 0.0 and start <= k / n < end


@dataclass(frozen=True)
class Control:
    """The control streams of the positive and the negative conditioning."""

    positive: tuple[VaceStream, ...]
    negative: tuple[VaceStream, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.positive or self.negative)

    def check(self, latent_shape: Sequence[int]) -> None:
        """Each stream covers the sampled latent (its frames, height and width; batch 1 or the latent's): else a
        ValueError saying what differs."""
        batch, _, *grid = latent_shape
        for label, streams in (("positive", self.positive), ("negative", self.negative)):
            for i, stream in enumerate(streams):
                b, _, *covered = stream.context.shape
                if covered != list(grid):
                    raise ValueError(
                        f"the VACE control {i} of the {label} conditioning is {covered[0]} latent frames of "
                        f"{covered[1]}x{covered[2]} ({4 * covered[0] - 3} frames at {8 * covered[2]}x{8 * covered[1]} px) "
                        f"but the latent being sampled is {grid[0]} latent frames of {grid[1]}x{grid[2]} "
                        f"({4 * grid[0] - 3} frames at {8 * grid[2]}x{8 * grid[1]} px). Sample the latent output of "
                        "the node that made the control (it includes reference-image frames), or give that node "
                        "this latent's width, height and length.")
                if b not in (1, batch):
                    raise ValueError(f"the VACE control {i} of the {label} conditioning has a batch of {b}; the "
                                     f"latent has {batch} (give one control for all, or one per video)")

    def active_steps(self, schedule: Schedule) -> dict[str, list[int]]:
        """Expert -> the run's step indices at which at least one stream applies (positive or negative)."""
        active: dict[str, list[int]] = {name: [] for name in EXPERT_NAMES}
        for i, (name, k, n) in enumerate(_positions(schedule)):
            if any(s.applies(name, k, n) for s in self.positive + self.negative):
                active[name].append(i)
        return active

    def bind(self, schedule: Schedule, batch: int, device: torch.device) -> "BoundControl":
        """This control for one run: contexts on `device` at the batch size, step positions from `schedule`."""
        return BoundControl(self, _positions(schedule), batch, device)

    def summary(self, schedule: Schedule) -> str:
        """One line for people, e.g. 'VACE control (1 stream): high-noise steps 0-2, low-noise steps 3-4'."""
        streams = max(len(self.positive), len(self.negative))
        parts = [f"{EXPERT_LABELS[name]} steps {_spans(steps)}" for name, steps in self.active_steps(schedule).items()
                 if steps]
        return f"VACE control ({streams} stream{'s' if streams != 1 else ''}): " + (", ".join(parts) or "no step")


def _positions(schedule: Schedule) -> list[tuple[str, int, int]]:
    """(expert, k, n) per step: the step is the expert's k-th (0-based) of its n steps in this run."""
    counts = {name: schedule.experts.count(name) for name in set(schedule.experts)}
    seen: dict[str, int] = {}
    out = []
    for name in schedule.experts:
        out.append((name, seen.get(name, 0), counts[name]))
        seen[name] = seen.get(name, 0) + 1
    return out


def _spans(steps: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    spans, start = [], None
    for i, step in enumerate(steps):
        if start is None:
            start = step
        if i + 1 == len(steps) or steps[i + 1] != step + 1:
            spans.append(f"{start}" if start == step else f"{start}-{step}")
            start = None
    return ", ".join(spans)


class BoundControl:
    """A Control bound to one run: the VaceInput of each forward (cond, uncond, or both as one batch)."""

    def __init__(self, control: Control, positions: list[tuple[str, int, int]], batch: int, device: torch.device):
        self.positions, self.batch = positions, batch
        count = max(len(control.positive), len(control.negative))
        self.sides = {"cond": _padded(control.positive, count), "uncond": _padded(control.negative, count)}
        self._contexts: dict[tuple[tuple[str, ...], int], torch.Tensor] = {}
        self.device = device

    def _context(self, sides: tuple[str, ...], j: int) -> torch.Tensor:
        """Stream j's contexts of `sides`, at the batch size, one after the other (zeros for a side without it)."""
        key = (sides, j)
        if key not in self._contexts:
            streams = [self.sides[side][j] for side in sides]
            like = next(s.context for s in streams if s is not None)
            parts = [(s.context if s is not None else torch.zeros_like(like[:1])).to(self.device, torch.float32)
                     .expand(self.batch, -1, -1, -1, -1) for s in streams]
            self._contexts[key] = parts[0] if len(parts) == 1 else torch.cat(parts)
        return self._contexts[key]

    def forward_input(self, step: int, which: str) -> VaceInput | None:
        """The control of step `step` for the pass `which` ("cond", "uncond" or "both" = cond then uncond items)."""
        name, k, n = self.positions[step]
        sides = ("cond", "uncond") if which == "both" else (which,)
        contexts, strengths = [], []
        for j in range(len(self.sides["cond"])):
            applied = [s.strength if s is not None and s.applies(name, k, n) else 0.0
                       for s in (self.sides[side][j] for side in sides)]
            if any(applied):
                contexts.append(self._context(sides, j))
                strengths.append(torch.tensor(applied, dtype=torch.float32).repeat_interleave(self.batch))
        return VaceInput(tuple(contexts), tuple(strengths)) if contexts else None


def _padded(streams: tuple[VaceStream, ...], count: int) -> list[VaceStream | None]:
    return list(streams) + [None] * (count - len(streams))
