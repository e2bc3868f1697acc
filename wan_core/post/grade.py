"""Colour grading of a clip: match to a reference image, exposure/contrast/saturation/temperature, a .cube LUT.

Every step is one transform for the whole clip (the same for every frame), so grading cannot flicker:
  1. colour match (optional): the clip's pixel distribution in CIE Lab (mean μs, covariance Σs, measured over
     all its frames) is moved to the reference image's (μr, Σr) by the linear Monge-Kantorovich map
     x -> A(x - μs) + μr, A = Σs^-1/2 (Σs^1/2 Σr Σs^1/2)^1/2 Σs^-1/2 (the smallest change with A Σs Aᵀ = Σr);
     `match_strength` s blends it with the identity (A_s = (1-s)I + sA, mean shifted by s(μr - μs)).
  2. exposure in stops, on linear light (sRGB decoded, multiplied by 2^stops, encoded again).
  3. in Lab: contrast scales L* about 50, saturation scales a*, b* (chroma), temperature adds to b* (+ warmer,
     - cooler) and tint adds to a* (+ magenta, - green), in Lab units.
  4. a .cube LUT (see `lut`), mixed with the graded colours by `lut_strength`.
Colours are clamped to 0..1 when they return to RGB. Lab conversions are kornia's (sRGB, D65).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from kornia.color import lab_to_rgb, linear_rgb_to_rgb, rgb_to_lab, rgb_to_linear_rgb

from .lut import CubeLUT, apply_lut

CHUNK = 8  # frames converted at once (each needs a few float32 copies of itself)
EPS = 1e-6  # covariance regularisation (Lab units²): a flat clip or reference still gives a finite map

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Adjustments:
    """The user's controls; the defaults change nothing."""

    exposure: float = 0.0  # stops
    contrast: float = 1.0  # L* scale about 50
    saturation: float = 1.0  # a*, b* scale
    temperature: float = 0.0  # b* offset
    tint: float = 0.0  # a* offset

    def lab_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 3 as one affine map in Lab: (M [3, 3], d [3]) with lab' = M lab + d."""
        m = torch.diag(torch.tensor([self.contrast, self.saturation, self.saturation], dtype=torch.float64))
        d = torch.tensor([50.0 * (1.0 - self.contrast), self.tint, self.temperature], dtype=torch.float64)
        return m, d

    @property
    def changes_lab(self) -> bool:
        """Whether step 3 does anything."""
        return (self.contrast, self.saturation, self.temperature, self.tint) != (1.0, 1.0, 0.0, 0.0)


@dataclass(frozen=True)
class LabStats:
    """Mean [3] and covariance [3, 3] of Lab colours (float64), and how many pixels they came from."""

    mean: torch.Tensor
    cov: torch.Tensor
    count: int


def _lab(frames: torch.Tensor) -> torch.Tensor:
    """IMAGE [B, H, W, 3] 0..1 -> Lab [B, 3, H, W] float32."""
    return rgb_to_lab(frames.permute(0, 3, 1, 2).float().clamp(0, 1))


def _rgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab [B, 3, H, W] -> IMAGE [B, H, W, 3] 0..1 (clamped)."""
    return lab_to_rgb(lab, clip=True).permute(0, 2, 3, 1)


def lab_stats(frames: torch.Tensor, *, device: torch.device | str = "cpu") -> LabStats:
    """Lab mean and covariance over every pixel of every frame [F, H, W, 3] (accumulated in float64 by chunks)."""
    total, outer, count = torch.zeros(3, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64), 0
    for start in range(0, frames.shape[0], CHUNK):
        lab = _lab(frames[start : start + CHUNK].to(device)).permute(1, 0, 2, 3).reshape(3, -1).double()
        total += lab.sum(1).cpu()
        outer += (lab @ lab.T).cpu()
        count += lab.shape[1]
    mean = total / count
    return LabStats(mean, outer / count - torch.outer(mean, mean), count)


def _sqrtm(m: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Square root (or inverse square root) of a symmetric positive semi-definite 3x3 matrix."""
    values, vectors = torch.linalg.eigh(m)
    values = values.clamp(min=EPS)
    return vectors @ torch.diag(values.rsqrt() if inverse else values.sqrt()) @ vectors.T


def match_transform(source: LabStats, target: LabStats, strength: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The Lab affine (A [3, 3], b [3]) with lab' = A lab + b moving `source`'s statistics to `target`'s."""
    cov_s = source.cov + EPS * torch.eye(3, dtype=torch.float64)
    root_s, inv_root_s = _sqrtm(cov_s), _sqrtm(cov_s, inverse=True)
    a = inv_root_s @ _sqrtm(root_s @ target.cov @ root_s) @ inv_root_s
    a = (1.0 - strength) * torch.eye(3, dtype=torch.float64) + strength * a
    b = source.mean + strength * (target.mean - source.mean) - a @ source.mean
    return a, b


def apply_lab_affine(frames: torch.Tensor, m: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Frames [B, H, W, 3] through lab' = M lab + d (one transform for every frame), back to RGB."""
    lab = _lab(frames)
    out = torch.einsum("ij,bjhw->bihw", m.to(lab.device, lab.dtype), lab) + d.to(lab.device, lab.dtype)[:, None, None]
    return _rgb(out)


def _expose(frames: torch.Tensor, stops: float) -> torch.Tensor:
    linear = rgb_to_linear_rgb(frames.permute(0, 3, 1, 2).float().clamp(0, 1)) * (2.0 ** stops)
    return linear_rgb_to_rgb(linear.clamp(0, 1)).permute(0, 2, 3, 1)


def _grade_chunk(frames: torch.Tensor, match: tuple[torch.Tensor, torch.Tensor] | None, adjust: Adjustments,
                 lut: CubeLUT | None, lut_strength: float) -> torch.Tensor:
    out = frames.float()
    if match is not None:
        out = apply_lab_affine(out, *match)
    if adjust.exposure:
        out = _expose(out, adjust.exposure)
    if adjust.changes_lab:
        out = apply_lab_affine(out, *adjust.lab_affine())
    if lut is not None and lut_strength > 0:
        out = torch.lerp(out, apply_lut(out, lut), lut_strength)
    return out.clamp(0, 1)


def grade_clip(frames: torch.Tensor, *, reference: torch.Tensor | None = None, match_strength: float = 1.0,
               adjust: Adjustments = Adjustments(), lut: CubeLUT | None = None, lut_strength: float = 1.0,
               device: torch.device | str = "cpu", progress: ProgressFn | None = None) -> torch.Tensor:
    """Grade a clip [F, H, W, 3] 0..1 (steps in the module docstring); float32 on the CPU, same shape.

    `reference` [N, H', W', 3]: the image(s) whose colours to match (all their pixels together).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [F, H, W, 3] (a ComfyUI IMAGE batch), got shape {tuple(frames.shape)}")
    match = None
    if reference is not None and match_strength > 0:
        match = match_transform(lab_stats(frames, device=device), lab_stats(reference, device=device), match_strength)
    out = torch.empty(frames.shape, dtype=torch.float32)
    for start in range(0, frames.shape[0], CHUNK):
        chunk = frames[start : start + CHUNK].to(device)
        out[start : start + chunk.shape[0]] = _grade_chunk(chunk, match, adjust, lut, lut_strength).cpu()
        if progress is not None:
            progress(start + chunk.shape[0], frames.shape[0])
    return out
