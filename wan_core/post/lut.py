"""`.cube` LUT files (Adobe Cube LUT Specification 1.0, with Resolve's shaper and input-range keywords), applied in float.

A file holds a 1D LUT (`LUT_1D_SIZE N`, N rows), a 3D LUT (`LUT_3D_SIZE N`, N³ rows, red changing fastest,
then green, then blue), or both (Resolve: a 1D shaper applied first, then the 3D cube). `DOMAIN_MIN` /
`DOMAIN_MAX` (three values each) or Resolve's `LUT_1D_INPUT_RANGE` / `LUT_3D_INPUT_RANGE` (two values) give the
input range (default 0..1); inputs outside it are clamped to it, as the specification says. `TITLE "..."` and
`#` comments are read and ignored. The 3D cube is interpolated trilinearly, the 1D table linearly, in float32.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

MAX_3D, MAX_1D = 256, 65536  # the specification's size limits
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class LUTFileError(ValueError):
    """A .cube file that does not follow the specification: the message names the file, line and what was expected."""


@dataclass(frozen=True)
class LUTStage:
    """One table: `table` [N, 3] (1D) or [N, N, N, 3] indexed [blue, green, red] (3D), and its input domain."""

    dim: int
    table: torch.Tensor
    domain_min: tuple[float, float, float] = (0.0, 0.0, 0.0)
    domain_max: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def size(self) -> int:
        return self.table.shape[0]


@dataclass(frozen=True)
class CubeLUT:
    """A parsed .cube file: its title and its stages in the order they apply (1D shaper first)."""

    title: str
    stages: tuple[LUTStage, ...]

    def describe(self) -> str:
        """'title: 1D 1024 + 3D 33' for logs and node reports."""
        parts = " + ".join(f"{s.dim}D {s.size}" for s in self.stages)
        return f"{self.title or 'untitled'}: {parts}"


@dataclass
class _Header:
    title: str = ""
    size_1d: int = 0
    size_3d: int = 0
    domain_min: tuple[float, float, float] = (0.0, 0.0, 0.0)
    domain_max: tuple[float, float, float] = (1.0, 1.0, 1.0)
    range_1d: tuple[float, float] | None = None
    range_3d: tuple[float, float] | None = None


def _floats(values: list[str], count: int, where: str) -> tuple[float, ...]:
    if len(values) != count or not all(_NUMBER.match(v) for v in values):
        raise LUTFileError(f"{where}: expected {count} numbers, found {' '.join(values)[:60]!r}")
    return tuple(float(v) for v in values)


def _size(values: list[str], limit: int, where: str) -> int:
    if len(values) != 1 or not values[0].isdigit() or not 2 <= int(values[0]) <= limit:
        raise LUTFileError(f"{where}: the size must be one whole number from 2 to {limit}")
    return int(values[0])


def _keyword(header: _Header, key: str, values: list[str], where: str) -> None:
    """Record one keyword line in `header`."""
    if key == "TITLE":
        header.title = " ".join(values).strip('"')
    elif key == "LUT_1D_SIZE":
        header.size_1d = _size(values, MAX_1D, where)
    elif key == "LUT_3D_SIZE":
        header.size_3d = _size(values, MAX_3D, where)
    elif key == "DOMAIN_MIN":
        header.domain_min = _floats(values, 3, where)
    elif key == "DOMAIN_MAX":
        header.domain_max = _floats(values, 3, where)
    elif key == "LUT_1D_INPUT_RANGE":
        header.range_1d = _floats(values, 2, where)
    elif key == "LUT_3D_INPUT_RANGE":
        header.range_3d = _floats(values, 2, where)
    else:
        raise LUTFileError(f"{where}: unknown keyword {key!r} (expected TITLE, LUT_1D_SIZE, LUT_3D_SIZE, DOMAIN_MIN, "
                           "DOMAIN_MAX, LUT_1D_INPUT_RANGE or LUT_3D_INPUT_RANGE before the table rows)")


def parse_cube(text: str, name: str = "<cube>") -> CubeLUT:
    """Parse the text of a .cube file; `name` is used in error messages."""
    header, rows = _Header(), []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{name} line {number}"
        parts = line.split()
        if _NUMBER.match(parts[0]):
            rows.append(_floats(parts, 3, where))
        elif rows:
            raise LUTFileError(f"{where}: keyword {parts[0]!r} after the table rows; keywords come first")
        else:
            _keyword(header, parts[0].upper(), parts[1:], where)
    return _build(header, rows, name)


def _domain(header: _Header, given: tuple[float, float] | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if given is not None:
        return (given[0],) * 3, (given[1],) * 3
    return header.domain_min, header.domain_max


def _build(header: _Header, rows: list[tuple[float, ...]], name: str) -> CubeLUT:
    """The stages a header announces, cut from the rows in file order (1D first, then 3D)."""
    if not header.size_1d and not header.size_3d:
        raise LUTFileError(f"{name}: no LUT_3D_SIZE or LUT_1D_SIZE line; is this a .cube LUT file?")
    expected = header.size_1d + header.size_3d ** 3
    if len(rows) != expected:
        sizes = " + ".join(x for x in (header.size_1d and f"{header.size_1d} (1D)",
                                       header.size_3d and f"{header.size_3d}³ (3D)") if x)
        raise LUTFileError(f"{name}: expected {expected} table rows ({sizes}), found {len(rows)}")
    data = torch.tensor(rows, dtype=torch.float32).reshape(-1, 3)
    stages = []
    if header.size_1d:
        lo, hi = _domain(header, header.range_1d)
        stages.append(LUTStage(1, data[: header.size_1d], lo, hi))
    if header.size_3d:
        n = header.size_3d
        lo, hi = _domain(header, header.range_3d)
        stages.append(LUTStage(3, data[header.size_1d:].reshape(n, n, n, 3), lo, hi))
    for stage in stages:
        if any(b <= a for a, b in zip(stage.domain_min, stage.domain_max)):
            raise LUTFileError(f"{name}: the domain minimum {stage.domain_min} must be below the maximum {stage.domain_max}")
    return CubeLUT(header.title, tuple(stages))


def read_cube(path: str | os.PathLike) -> CubeLUT:
    """Read and parse a .cube file."""
    with open(path, encoding="utf-8", errors="strict") as f:
        return parse_cube(f.read(), os.path.basename(os.fspath(path)))


def identity_cube(size: int) -> CubeLUT:
    """The 3D LUT that maps every colour to itself (for tests and as a neutral default)."""
    axis = torch.linspace(0, 1, size)
    b, g, r = torch.meshgrid(axis, axis, axis, indexing="ij")
    return CubeLUT("identity", (LUTStage(3, torch.stack((r, g, b), dim=-1)),))


def _positions(rgb: torch.Tensor, stage: LUTStage) -> torch.Tensor:
    """Inputs [..., 3] as fractional table positions 0..N-1 (clamped to the domain)."""
    lo = torch.tensor(stage.domain_min, dtype=rgb.dtype, device=rgb.device)
    hi = torch.tensor(stage.domain_max, dtype=rgb.dtype, device=rgb.device)
    return ((rgb - lo) / (hi - lo)).clamp(0.0, 1.0) * (stage.size - 1)


def _apply_1d(rgb: torch.Tensor, stage: LUTStage) -> torch.Tensor:
    pos = _positions(rgb, stage)
    i0 = pos.floor().clamp(max=stage.size - 2).long()
    frac = pos - i0
    table = stage.table.to(rgb.device, rgb.dtype)
    channel = torch.arange(3, device=rgb.device)
    lo, hi = table[i0, channel], table[i0 + 1, channel]
    return lo + (hi - lo) * frac


def _apply_3d(rgb: torch.Tensor, stage: LUTStage) -> torch.Tensor:
    n = stage.size
    pos = _positions(rgb, stage)
    i0 = pos.floor().clamp(max=n - 2).long()
    frac = pos - i0
    flat = stage.table.to(rgb.device, rgb.dtype).reshape(-1, 3)
    out = torch.zeros_like(rgb)
    for dr in (0, 1):
        wr = frac[..., 0] if dr else 1 - frac[..., 0]
        for dg in (0, 1):
            wg = frac[..., 1] if dg else 1 - frac[..., 1]
            for db in (0, 1):
                wb = frac[..., 2] if db else 1 - frac[..., 2]
                index = (i0[..., 0] + dr) + n * (i0[..., 1] + dg) + n * n * (i0[..., 2] + db)
                out += (wr * wg * wb)[..., None] * flat[index]
    return out


def apply_lut(rgb: torch.Tensor, lut: CubeLUT) -> torch.Tensor:
    """Colours [..., 3] (float) through every stage of `lut`; the result is not clamped (a LUT may leave 0..1)."""
    out = rgb
    for stage in lut.stages:
        out = _apply_1d(out, stage) if stage.dim == 1 else _apply_3d(out, stage)
    return out
