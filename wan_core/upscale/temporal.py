"""Temporal stability for per-frame upscaling: a flow-guided stabiliser of the detail residual, and a colour fix.

The stabiliser works on the residual `upscaled - base`, where `base` is a plain smooth resampling of the
input frame: only the detail a model invents (the part that flickers) is blended with the previous
frame's, after warping it along optical flow (OpenCV Farneback, or DIS) measured on the small input frames; pixels
where the warp does not explain the input (occlusions, cuts) keep the current frame's detail. The colour fix
replaces each output frame's low frequencies with the input's, so colours cannot drift.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..memory.pace import current

MAX_BLEND = 0.8  # strength 1.0 keeps this much of the warped previous detail where the warp is trusted


def _gray(frame: torch.Tensor, method: str) -> np.ndarray:
    """[3, h, w] 0..1 -> [h, w] luma on the CPU: float32 0..255 for Farneback, uint8 for DIS."""
    luma = (frame[0] * 0.299 + frame[1] * 0.587 + frame[2] * 0.114).float().clamp(0, 1) * 255
    return (luma if method == "farneback" else luma.round().to(torch.uint8)).cpu().numpy()


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample `x` [B, C, H, W] at each pixel + `flow` [B, 2, H, W] (dx, dy in pixels), edges replicated."""
    b, _, h, w = x.shape
    ys = torch.arange(h, device=x.device, dtype=torch.float32)
    xs = torch.arange(w, device=x.device, dtype=torch.float32)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    px = (gx + flow[:, 0]) * (2.0 / w) + (1.0 / w - 1.0)
    py = (gy + flow[:, 1]) * (2.0 / h) + (1.0 / h - 1.0)
    grid = torch.stack((px, py), dim=-1)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False).to(x.dtype)


class TemporalStabilizer:
    """Blends each frame's detail residual with the flow-warped stabilised residual of the previous frame.

    Call it on consecutive chunks of one clip in order; it keeps the last frame's state between calls.
    """

    def __init__(self, strength: float, *, flow: str = "farneback", error_scale: float = 0.04) -> None:
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"stabilize strength must be within 0..1, got {strength}")
        if flow not in ("farneback", "dis"):
            raise ValueError(f"flow must be 'farneback' or 'dis', got {flow!r}")
        self.strength = float(strength)
        self.method = flow
        self.error_scale = error_scale  # input-space warp error (0..1 units) at which trust falls to 1/e
        self._flow = None
        self._prev_src: torch.Tensor | None = None
        self._prev_gray: np.ndarray | None = None
        self._prev_res: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget the previous frame (start of a new clip)."""
        self._prev_src = self._prev_gray = self._prev_res = None

    def _flow_to_prev(self, gray: np.ndarray) -> np.ndarray | None:
        """Backward flow [h, w, 2]: current pixel x is found at x + flow in the previous frame."""
        h, w = gray.shape
        if min(h, w) < 16:
            return None
        if self.method == "farneback":
            return cv2.calcOpticalFlowFarneback(gray, self._prev_gray, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        if self._flow is None:
            self._flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        return self._flow.calc(gray, self._prev_gray, None)

    def __call__(self, out: torch.Tensor, base: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """Stabilise `out` [B, 3, H, W] given `base` (smooth upsampling of `src`) and `src` [B, 3, h, w]."""
        if self.strength <= 0:
            return out
        H, W = out.shape[-2:]
        h, w = src.shape[-2:]
        result = torch.empty_like(out)
        for i in range(out.shape[0]):
            current().tick()  # the run's cancel check (memory.pace): output-size warps take a while per frame
            res = out[i : i + 1] - base[i : i + 1]
            gray = _gray(src[i], self.method)
            if self._prev_res is not None and self._prev_res.shape == res.shape:
                flow_np = self._flow_to_prev(gray)
                flow = (torch.zeros(1, 2, h, w) if flow_np is None else torch.from_numpy(flow_np).permute(2, 0, 1)[None])
                flow = flow.to(out.device, torch.float32)
                err = (warp(self._prev_src, flow) - src[i : i + 1].float()).abs().amax(dim=1, keepdim=True)
                trust = torch.exp(-err / self.error_scale)
                flow_hi = F.interpolate(flow, size=(H, W), mode="bilinear", align_corners=False)
                flow_hi = flow_hi * torch.tensor([W / w, H / h], device=out.device).view(1, 2, 1, 1)
                alpha = MAX_BLEND * self.strength * F.interpolate(trust, size=(H, W), mode="bilinear", align_corners=False)
                res = torch.lerp(res, warp(self._prev_res, flow_hi), alpha.to(res.dtype))
            self._prev_res, self._prev_gray, self._prev_src = res, gray, src[i : i + 1].float()
            result[i : i + 1] = base[i : i + 1] + res
        return result


def color_fix(
    out: torch.Tensor, ref: torch.Tensor, *, cell: int = 16, target_mean: torch.Tensor | None = None
) -> torch.Tensor:
    """Give `out` [B, 3, H, W] the low frequencies (cells of ~`cell` px) of `ref` (same size) and its exact mean colour.

    `target_mean` [B, 3] is the mean colour to reach (default: `ref`'s); the result is clamped to 0..1.
    """
    h, w = out.shape[-2:]
    grid = (max(1, round(h / cell)), max(1, round(w / cell)))
    diff = F.interpolate(ref.float(), size=grid, mode="area") - F.interpolate(out.float(), size=grid, mode="area")
    fixed = (out.float() + F.interpolate(diff, size=(h, w), mode="bilinear", align_corners=False)).clamp_(0, 1)
    want = (ref.float().mean(dim=(-2, -1)) if target_mean is None else target_mean.float().to(out.device))[..., None, None]
    # Clamping moves the mean a little; a few shift-and-clamp rounds bring it back (exact unless saturated).
    for _ in range(4):
        err = want - fixed.mean(dim=(-2, -1), keepdim=True)
        if err.abs().max() < 1e-5:
            break
        fixed = (fixed + err).clamp_(0, 1)
    return fixed.to(out.dtype)


def match_color(frames: torch.Tensor, measured: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`frames` [N, H, W, 3] in 0..1 with the colour statistics of `reference` where `measured` shows the same scene.

    Per channel, the affine map that takes `measured`'s mean and standard deviation to `reference`'s (both
    [M, H, W, 3], the same frames rendered twice, e.g. a clip's overlap and its re-generation) is applied to every
    frame of `frames`, then clamped to 0..1. For frames with no counterpart (a continuation's new frames), where
    `color_fix`'s per-frame low-frequency transfer has nothing to copy from.
    """
    dims = (0, 1, 2)
    m, r = measured.float(), reference.float().to(measured.device)
    mean_m, mean_r = m.mean(dim=dims), r.mean(dim=dims)
    std_m, std_r = m.std(dim=dims), r.std(dim=dims)
    scale = torch.where(std_m > 1e-6, std_r / std_m.clamp_min(1e-6), torch.ones_like(std_m))
    out = (frames.float() - mean_m.to(frames.device)) * scale.to(frames.device) + mean_r.to(frames.device)
    return out.clamp_(0, 1).to(frames.dtype)
