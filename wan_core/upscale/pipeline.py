"""Video super-resolution: a spandrel upscale model (tiled, frame-batched) or Lanczos/bicubic resampling, then
temporal stabilisation and a colour fix, chunk by chunk into a preallocated output (memory independent of length).

Pipeline per chunk of frames: source crop -> model (tiles with feathered overlaps) -> resample to the target
content size -> optional unsharp mask -> stabiliser -> colour fix -> placed on the (padded) canvas.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F

from ..config import RESAMPLES
from ..config import UPSCALE_FITS as FITS
from ..memory.pace import current, pacing
from ..memory.tiling import tiled_apply
from .cost import auto_tile_and_batch, check_memory
from .temporal import TemporalStabilizer
from .temporal import color_fix as match_colors

log = logging.getLogger("wan_core.upscale")
Fit = Literal["crop", "pad", "stretch"]
Resample = Literal["lanczos", "bicubic", "bilinear"]
ProgressFn = Callable[[int, int], None]


# ----------------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Geometry:
    """Where the output comes from and goes: source crop box, content size, canvas size and content offset."""

    src_box: tuple[int, int, int, int]  # x0, y0, x1, y1 in input pixels
    content: tuple[int, int]  # width, height the source box is upscaled to
    canvas: tuple[int, int]  # output width, height
    offset: tuple[int, int]  # x, y of the content on the canvas (pad)


def plan_geometry(
    width: int, height: int, *, scale: float | None = None, target: tuple[int, int] | None = None, fit: Fit = "crop"
) -> Geometry:
    """Output geometry for a `width` x `height` input: by `scale`, or to `target` (w, h) fitted by crop, pad or stretch."""
    if fit not in FITS:
        raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    full = (0, 0, width, height)
    if target is None:
        if scale is None or scale <= 0:
            raise ValueError(f"give a positive scale factor or a target (width, height); got scale={scale}")
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return Geometry(full, size, size, (0, 0))
    tw, th = int(target[0]), int(target[1])
    if tw < 1 or th < 1:
        raise ValueError(f"target size must be at least 1x1, got {tw}x{th}")
    if fit == "stretch" or width * th == height * tw:
        return Geometry(full, (tw, th), (tw, th), (0, 0))
    wider = width * th > height * tw  # source is wider than the target's aspect
    if fit == "crop":
        if wider:
            cw = max(1, round(height * tw / th))
            x0 = (width - cw) // 2
            return Geometry((x0, 0, x0 + cw, height), (tw, th), (tw, th), (0, 0))
        ch = max(1, round(width * th / tw))
        y0 = (height - ch) // 2
        return Geometry((0, y0, width, y0 + ch), (tw, th), (tw, th), (0, 0))
    if wider:
        ch = max(1, round(tw * height / width))
        return Geometry(full, (tw, ch), (tw, th), (0, (th - ch) // 2))
    cw = max(1, round(th * width / height))
    return Geometry(full, (cw, th), (tw, th), ((tw - cw) // 2, 0))


# ----------------------------------------------------------------------------------------------- resampling


def _lanczos3(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x.abs() < 3, torch.sinc(x) * torch.sinc(x / 3), torch.zeros_like(x))


def _cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _triangle(x: torch.Tensor) -> torch.Tensor:
    return (1 - x.abs()).clamp(min=0)


_KERNELS = {"lanczos": (_lanczos3, 3.0), "bicubic": (_cubic, 2.0), "bilinear": (_triangle, 1.0)}


def _taps(n_in: int, n_out: int, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Input indices and weights [n_out, taps] of a separable resampling (filter widened when shrinking)."""
    kernel, support = _KERNELS[method]
    ratio = n_in / n_out
    stretch = max(1.0, ratio)
    centers = (torch.arange(n_out, dtype=torch.float64) + 0.5) * ratio
    reach = support * stretch
    first = torch.floor(centers - reach + 0.5).long()
    taps = int(math.ceil(reach)) * 2 + 1
    idx = first[:, None] + torch.arange(taps)[None, :]
    weights = kernel((idx.double() + 0.5 - centers[:, None]) / stretch)
    weights = torch.where((idx >= 0) & (idx < n_in), weights, torch.zeros_like(weights))
    weights = weights / weights.sum(dim=1, keepdim=True)
    return idx.clamp(0, n_in - 1), weights.float()


def _resample_last(x: torch.Tensor, n_out: int, method: str) -> torch.Tensor:
    idx, weights = _taps(x.shape[-1], n_out, method)
    idx, weights = idx.to(x.device), weights.to(x.device, x.dtype)
    out = torch.zeros(*x.shape[:-1], n_out, dtype=x.dtype, device=x.device)
    for k in range(idx.shape[1]):  # one tap at a time: temporaries stay the size of the output
        out.add_(x.index_select(-1, idx[:, k]) * weights[:, k])
    return out


def resize(x: torch.Tensor, size: tuple[int, int], method: Resample = "lanczos") -> torch.Tensor:
    """Resample `x` [..., H, W] to `size` (h, w) with a separable Lanczos-3 / bicubic / bilinear filter (antialiased down)."""
    if method not in RESAMPLES:
        raise ValueError(f"resample must be one of {', '.join(RESAMPLES)}, got {method!r}")
    h, w = size
    if x.shape[-1] != w:
        x = _resample_last(x, w, method)
    if x.shape[-2] != h:
        x = _resample_last(x.transpose(-1, -2), h, method).transpose(-1, -2)
    return x


def unsharp_mask(x: torch.Tensor, amount: float, sigma: float = 1.0) -> torch.Tensor:
    """Unsharp mask: `x + amount * (x - gaussian_blur(x, sigma))` on [B, C, H, W]."""
    if amount <= 0:
        return x
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    g = torch.exp(-(t * t) / (2 * sigma * sigma))
    g = (g / g.sum()).to(x.dtype)
    c = x.shape[1]
    pad = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    if pad < radius:
        return x
    blurred = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    blurred = F.conv2d(blurred, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    blurred = F.conv2d(blurred, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return x + amount * (x - blurred)


# ----------------------------------------------------------------------------------------------- the clip


def compute_dtype(model, device: torch.device) -> torch.dtype:
    """The dtype an upscale model runs in on `device`: fp16 or bf16 on CUDA when it supports them, else fp32."""
    if device.type == "cuda" and getattr(model, "supports_half", False):
        return torch.float16
    if device.type == "cuda" and getattr(model, "supports_bfloat16", False):
        return torch.bfloat16
    return torch.float32


def upscale_video(
    frames: torch.Tensor,
    model=None,
    *,
    scale: float | None = None,
    target: tuple[int, int] | None = None,
    fit: Fit = "crop",
    resample: Resample = "lanczos",
    sharpen: float = 0.0,
    tile: int | None = None,
    overlap: int | None = None,
    frame_batch: int | None = None,
    stabilize: float = 0.5,
    color_fix: bool = True,
    device: torch.device | str | None = None,
    out_device: torch.device | str | None = None,
    progress: ProgressFn | None = None,
    check: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Upscale a clip [F, H, W, 3] (0..1) by `scale` or to `target` (w, h); returns [F, H', W', 3] float32.

    `model` is a spandrel ImageModelDescriptor (None: resampling only; `stabilize` then has nothing to do).
    `tile`/`frame_batch` None = chosen from free memory and the work between cancel checks. `progress(done_frames,
    total)` is called after each chunk and may raise to cancel; `check()` runs before every model tile and chunk.
    A request whose output or working memory cannot fit raises NotEnoughMemoryError before anything is allocated.
    """
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [F, H, W, 3] (ComfyUI IMAGE), got shape {tuple(frames.shape)}")
    _check_values(scale=scale, sharpen=sharpen, stabilize=stabilize)
    n, h, w, _ = frames.shape
    if scale is None and target is None:
        scale = float(model.scale) if model is not None else 2.0
    geo = plan_geometry(w, h, scale=scale, target=target, fit=fit)
    x0, y0, x1, y1 = geo.src_box
    device = torch.device(device) if device is not None else frames.device
    out_device = torch.device(out_device) if out_device is not None else frames.device
    with pacing(check=check):
        tile, overlap, batch = _chunking(model, y1 - y0, x1 - x0, device, tile=tile, overlap=overlap,
                                         frame_batch=frame_batch)
        check_memory(frames=n, canvas=geo.canvas, content=geo.content, source=(x1 - x0, y1 - y0), model=model,
                     tile=tile, batch=batch, device=device, out_device=out_device)
        log.info("upscaling %d frame(s) %dx%d -> %dx%d on %s: %s, %d frame(s) per chunk", n, w, h, *geo.canvas, device,
                 f"{tile}-px tiles" if tile else "whole frames", batch)
        output = torch.zeros(n, geo.canvas[1], geo.canvas[0], 3, dtype=torch.float32, device=out_device)
        run = _Chunk(model, geo, tile, overlap, resample, sharpen, stabilize, color_fix)
        restore = None
        if model is not None:
            restore = (model.device, model.dtype)
            model.to(device).to(compute_dtype(model, device))
        try:
            with torch.inference_mode():
                for start in range(0, n, batch):
                    src = frames[start: start + batch, y0:y1, x0:x1].to(device, torch.float32).permute(0, 3, 1, 2)
                    run(src, output[start: start + batch])
                    del src
                    if progress is not None:
                        progress(min(n, start + batch), n)
        finally:
            if restore is not None:
                model.to(restore[0]).to(restore[1])
    return output


def _check_values(**values: float | None) -> None:
    """Finite numbers in range for the float settings (NaN passes every comparison, so it is refused by name)."""
    ranges = {"scale": (0.0, None), "sharpen": (0.0, None), "stabilize": (0.0, 1.0)}
    for name, value in values.items():
        if value is None:
            continue
        low, high = ranges[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < low or (high is not None and value > high) or (name == "scale" and value == 0):
            span = f"between {low:g} and {high:g}" if high is not None else f"a finite number above {low:g}"
            raise ValueError(f"{name} must be {span}; got {value!r}")


class _Chunk:
    """One chunk of frames through model (or resampling), sharpening, stabiliser and colour fix, onto the canvas."""

    def __init__(self, model, geo: Geometry, tile: int | None, overlap: int | None, resample: str, sharpen: float,
                 stabilize: float, color_fix: bool) -> None:
        self.model, self.geo, self.tile, self.overlap = model, geo, tile, overlap
        self.resample, self.sharpen, self.color_fix = resample, sharpen, color_fix
        # Resampling alone is linear and consistent from frame to frame: only a model's invented detail flickers.
        self.stabilizer = TemporalStabilizer(stabilize) if stabilize > 0 and model is not None else None
        x0, y0, x1, y1 = geo.src_box
        cw, ch = geo.content
        self.cell = max(4, 4 * math.ceil(max(cw / (x1 - x0), ch / (y1 - y0))))

    def __call__(self, src: torch.Tensor, out: torch.Tensor) -> None:
        cw, ch = self.geo.content
        if self.model is None:
            up = resize(src, (ch, cw), self.resample)
        else:
            up = _run_model(self.model, src, self.tile, self.overlap)
            up = resize(up, (ch, cw), self.resample) if up.shape[-2:] != (ch, cw) else up
        current().tick()  # each full-frame stage below is one call: checked between them
        up = unsharp_mask(up, self.sharpen)
        if self.stabilizer is not None or self.color_fix:
            current().tick()
            base = resize(src, (ch, cw), "bilinear")
            if self.stabilizer is not None:
                up = self.stabilizer(up, base, src)
            if self.color_fix:
                current().tick()
                up = match_colors(up, base, cell=self.cell, target_mean=src.mean(dim=(-2, -1)))
        current().tick()
        up = up.clamp(0, 1).permute(0, 2, 3, 1)
        ox, oy = self.geo.offset
        out[:, oy: oy + ch, ox: ox + cw] = up.to(out.device)


def _chunking(model, height: int, width: int, device: torch.device, *, tile: int | None, overlap: int | None,
              frame_batch: int | None) -> tuple[int | None, int | None, int]:
    """(model tile or None, tile overlap, frames per chunk): as given, else chosen from free memory and work."""
    auto_tile, auto_batch = auto_tile_and_batch(model, height, width, device) \
        if (tile is None or frame_batch is None) else (None, 1)
    tile = tile if tile else auto_tile
    batch = max(1, frame_batch or auto_batch)
    if model is not None and getattr(getattr(model, "tiling", None), "name", "") == "INTERNAL":
        tile = None  # the model tiles itself or needs the whole frame
    if tile is not None:
        tile = max(8, int(tile))
        overlap = min(max(0, overlap if overlap is not None else min(32, tile // 4)), tile - 1)
    return tile, overlap, batch


def _run_model(model, src: torch.Tensor, tile: int | None, overlap: int | None) -> torch.Tensor:
    """The model on a batch [B, 3, h, w]: whole frames, or tiles blended over the middle third of each overlap."""
    x = src.to(model.dtype)
    if tile is None:
        current().tick()
        return model(x).float()
    overlap = overlap or 0
    return tiled_apply(model, x, tile=tile, overlap=overlap, margin=overlap // 3, scale=model.scale, out_dtype=torch.float32)
