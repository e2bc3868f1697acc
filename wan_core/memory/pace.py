"""How much work runs between two cancel checks: a work budget per device, and chunked calls that honour it.

Long calls (attention over many tokens, convolutions over large frames, upscale-model tiles) run in chunks of at
most `budget` floating-point operations, with the run's cancel check before each chunk, so Cancel takes effect
within a bounded time at any size. The chunk plan depends only on shapes and the device, never on timing or on
whether a check is given: a run gives the same numbers whether it is watched, cancelled earlier, or repeated.

The engine installs a run's check with `pacing(check=...)` (the sampler, the VAE runner, the upscaler); the models
read it with `current()`, so no model signature carries ComfyUI's cancel mechanism.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

# Floating-point operations between two checks: ~0.1 s on a 2-core AVX-512 CPU (measured ~150 GFLOP/s for fp32
# attention), well under 0.1 s on a current GPU, so normal runs split large calls into a few pieces only.
WORK_PER_CHECK = {"cpu": 16e9, "cuda": 64e12}
OTHER_DEVICE_WORK = 4e12
# Output elements between two checks for memory-bound calls (convolutions with few channels run at a few million
# outputs per second on a loaded 2-core CPU, far below their flop rate). With the VAE's convs on oneDNN (see
# vae/model.py _conv) 1e6 and 4e6 decode equally fast (9.1 / 9.9 s, bench.speed_cpu's 5-frame row, 2026-12-02).
ELEMENTS_PER_CHECK = {"cpu": 1e6, "cuda": 4e9}
OTHER_DEVICE_ELEMENTS = 2e8


@dataclass(frozen=True)
class Pace:
    """A run's cancel check (None: nobody watches) and its work budget per chunk (None: the device's default)."""

    check: Callable[[], None] | None = None
    budget: float | None = None

    def work(self, device: torch.device | str) -> float:
        """Floating-point operations one chunk may take on `device`."""
        if self.budget is not None:
            return self.budget
        kind = torch.device(device).type
        return WORK_PER_CHECK.get(kind, OTHER_DEVICE_WORK)

    def elements(self, device: torch.device | str) -> float:
        """Output elements one chunk of a memory-bound call may write on `device` (scaled with a given budget)."""
        kind = torch.device(device).type
        default = ELEMENTS_PER_CHECK.get(kind, OTHER_DEVICE_ELEMENTS)
        return default if self.budget is None else default * self.budget / WORK_PER_CHECK.get(kind, OTHER_DEVICE_WORK)

    def rows(self, total: int, work_per_row: float, device: torch.device | str, multiple: int = 1,
             elements_per_row: float = 0.0) -> int:
        """How many of `total` independent rows one chunk holds: within the work (and, when given, the output
        elements) per check, a multiple of `multiple` (at least one multiple)."""
        if total <= 0 or work_per_row <= 0:
            return max(total, 1)
        rows = int(min(total, self.work(device) // work_per_row))
        if elements_per_row > 0:
            rows = min(rows, int(self.elements(device) // elements_per_row))
        return min(total, max(multiple, rows - rows % multiple))

    def tick(self) -> None:
        """The cancel check: raises whatever the run's check raises when the user cancelled."""
        if self.check is not None:
            self.check()


_CURRENT: ContextVar[Pace] = ContextVar("wanmoe_pace", default=Pace())


def current() -> Pace:
    """The pace of the run in progress (no check and the device's budget outside any run)."""
    return _CURRENT.get()


@contextmanager
def pacing(check: Callable[[], None] | None = None, budget: float | None = None) -> Iterator[Pace]:
    """Within the block, chunked calls check `check` and use `budget`; what is not given is kept from the outer pace."""
    outer = _CURRENT.get()
    pace = Pace(check if check is not None else outer.check, budget if budget is not None else outer.budget)
    token = _CURRENT.set(pace)
    try:
        yield pace
    finally:
        _CURRENT.reset(token)


@contextmanager
def unwatched() -> Iterator[Pace]:
    """Within the block chunked calls do not check for cancel: for calls every rank of a group must leave at the same
    point (a multi-GPU forward stops only between blocks, where the ranks agree)."""
    outer = _CURRENT.get()
    token = _CURRENT.set(Pace(None, outer.budget))
    try:
        yield _CURRENT.get()
    finally:
        _CURRENT.reset(token)


# Attention backends process queries in blocks of 32-256 rows; chunks that are whole multiples of 64 rows give
# every query the same arithmetic as one call (bit-identical on the CPU kernels tested in tests/engine/memory).
QUERY_MULTIPLE = 64


def map_rows(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, dim: int, work_per_row: float,
             pace: Pace | None = None, multiple: int = QUERY_MULTIPLE) -> torch.Tensor:
    """`fn(x)` for a row-wise `fn` (each row of the result depends on its row of `x` only, e.g. attention queries),
    computed in chunks of rows along `dim` with the cancel check before each chunk; the same rows as one call."""
    pace = pace or current()
    total = x.shape[dim]
    rows = pace.rows(total, work_per_row, x.device, multiple)
    spans = [(start, min(rows, total - start)) for start in range(0, total, rows)]
    return _in_chunks(fn, dim, total, spans, pace, lambda start, count: x.narrow(dim, start, count))


def _in_chunks(fn: Callable[[torch.Tensor], torch.Tensor], dim: int, total: int, spans: list[tuple[int, int]],
               pace: Pace, take: Callable[[int, int], torch.Tensor], into: torch.Tensor | None = None) -> torch.Tensor:
    """`fn` over the chunks (start, count) of the `total` output rows along `dim`, each from the input
    `take(start, count)` gives, with the cancel check before each chunk; one call when one chunk holds them all.
    With `into`, each chunk's result is added to its rows of `into` (returned) instead of filling a new tensor."""
    pace.tick()
    if len(spans) == 1:
        return fn(take(0, total)) if into is None else into.add_(fn(take(0, total)))
    out = into
    for start, count in spans:
        if start:
            pace.tick()
        part = fn(take(start, count))
        if into is not None:
            out.narrow(dim, start, count).add_(part)
            continue
        if out is None:
            out = empty_as(part, part.shape[:dim] + (total,) + part.shape[dim + 1:])
        out.narrow(dim, start, count).copy_(part)
    return out


def empty_as(part: torch.Tensor, shape: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """An empty tensor of `shape` with `part`'s dtype, memory layout and device (or `device`): a channels-last part
    stays channels-last, so a result assembled from parts is laid out as one call's would be."""
    device = part.device if device is None else device
    for layout, dims in ((torch.channels_last, 4), (torch.channels_last_3d, 5)):
        if part.dim() == dims and not part.is_contiguous() and part.is_contiguous(memory_format=layout):
            return torch.empty(tuple(shape), dtype=part.dtype, device=device, memory_format=layout)
    return part.new_empty(tuple(shape), device=device)


def banded(fn: Callable, x: torch.Tensor | Sequence[torch.Tensor], *, dim: int, kernel: int, stride: int,
           work: float, outputs: float = 0.0, padding: int = 0, pace: Pace | None = None,
           into: torch.Tensor | None = None) -> torch.Tensor:
    """`fn(x)` for a convolution along `dim` (`kernel`, `stride`, and `padding` zeros on both sides there, which
    `fn` must not add itself), computed in bands of output rows, each from its input rows plus the kernel's halo,
    with the cancel check before each band. `work` is the whole call's floating-point operations, `outputs` its
    output elements (both bound a band, which may be up to twice that so that bands are even). Only a band at an
    edge is padded (a copy of that band, never of `x`). `x` may be several tensors of one shape (a sum of
    convolutions): `fn` then gets the same band of each, as a list. With `into` (a residual), each band's result is
    added to it in place and `into` returned: the whole result never exists as a tensor of its own.

    Every output row sees exactly the inputs it sees in one call; the bands only change how the backend blocks the
    work (bit-identical for most shapes, within float rounding where the backend picks another algorithm)."""
    pace = pace or current()
    several = not isinstance(x, torch.Tensor)
    inputs = list(x) if several else [x]
    size = inputs[0].shape[dim]
    total = (size + 2 * padding - kernel) // stride + 1
    rows = pace.rows(total, work / max(total, 1), inputs[0].device, elements_per_row=outputs / max(total, 1))

    def take(start: int, count: int) -> torch.Tensor | list[torch.Tensor]:
        lo = start * stride - padding
        hi = lo + (count - 1) * stride + kernel
        before, after = max(0, -lo), max(0, hi - size)
        bands = [t.narrow(dim, max(lo, 0), min(hi, size) - max(lo, 0)) for t in inputs]
        if before or after:
            bands = [F.pad(band, [0, 0] * (band.dim() - 1 - dim) + [before, after]) for band in bands]
        return bands if several else bands[0]

    count = max(1, total // rows)  # bands of at least `rows`, spread evenly (no thin last band)
    spans = [(k * total // count, (k + 1) * total // count - k * total // count) for k in range(count)]
    return _in_chunks(fn, dim, total, spans, pace, take, into)
