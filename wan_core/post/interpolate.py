"""Frame interpolation by optical flow (OpenCV DIS or Farneback): k-1 new frames between each pair, no model.

Per pair (I0, I1): flows both ways on the luma and their forward-backward consistency (a pixel with no
consistent match in the other frame is occluded there). Each new frame at time t is sampled backwards from both
frames along flows projected to time t: every pixel is splatted to where it is at t, weighted by its
consistency, so content that is being covered loses to the content covering it (where nothing lands, the
linear-motion estimates F_t0 = -(1-t)·t·F01 + t²·F10 and F_t1 = (1-t)²·F01 - t·(1-t)·F10 fill in). The two
samples are blended with weights (1-t)·m0 and t·m1, m being how much consistent content of that side arrives.

Scene cuts: a pair whose share of forward-backward consistent pixels is below `scene_threshold` is a cut, and
its new frames repeat the nearer original instead of blending two shots. Measured on synthetic clips (tests/
engine/post/test_interpolate.py): within a shot the share is ~0.95, also under a 20% brightness change or noise
(where a motion-compensated mean absolute difference, 0.10 and 0.03, would pass for a cut or nearly); across a
cut between unrelated textures it is 0.13-0.19. Memory: the output plus one pair's flows and maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np
import torch

FLOW_METHODS = ("dis", "farneback")
FACTORS = (2, 3, 4)
MIN_FLOW_SIDE = 16  # smaller frames get zero flow (a plain time blend): the pyramids need a few levels
SCENE_THRESHOLD = 0.5  # share of consistent pixels below which a pair is a cut (see the module docstring)
FLOW_SCALES = {"full": 1.0, "half": 0.5, "quarter": 0.25}
AUTO_FULL_SIDE = 960  # "auto" computes flow at full resolution up to this long side, at half above
OCCLUDED_WEIGHT = 0.02  # weight left to an inconsistent (occluded) sample, so a pixel seen in neither still blends

ProgressFn = Callable[[int, int], None]


@dataclass
class InterpolationReport:
    """What the interpolator did: frames in and out, factor, and the pairs it treated as scene cuts."""

    frames_in: int
    frames_out: int
    factor: int
    method: str
    cuts: list[int] = field(default_factory=list)  # pair i = frames i and i+1 (0-based)
    flow_scale: float = 1.0
    matched: list[float] = field(default_factory=list)  # share of consistent pixels of each pair

    def summary(self) -> str:
        """One line for the node's log: counts, and the cuts with their scores."""
        cuts = ", ".join(f"{i}->{i + 1} ({self.matched[i]:.2f} matched)" for i in self.cuts) or "none"
        return (f"{self.frames_in} -> {self.frames_out} frames (x{self.factor}, {self.method} flow at "
                f"{self.flow_scale:g}x); "
                f"scene cuts held, not blended: {cuts}")


def output_length(frames: int, factor: int) -> int:
    """Frames after interpolating `frames` by `factor`: (n - 1)·k + 1 (the originals stay, k-1 between each pair)."""
    return (frames - 1) * factor + 1 if frames > 0 else 0


class FlowEstimator:
    """Dense flow between two frames [H, W, 3] float32 0..1, by DIS (fast, default) or Farneback."""

    def __init__(self, method: str = "dis") -> None:
        if method not in FLOW_METHODS:
            raise ValueError(f"flow method must be one of {FLOW_METHODS}, got {method!r}")
        self.method = method
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) if method == "dis" else None

    def gray(self, frame: np.ndarray) -> np.ndarray:
        """Luma (Rec.601 weights) as the method wants it: uint8 for DIS, float32 0..255 for Farneback."""
        luma = np.clip(frame @ np.float32([0.299, 0.587, 0.114]), 0.0, 1.0) * 255.0
        return np.round(luma).astype(np.uint8) if self.method == "dis" else luma.astype(np.float32)

    def __call__(self, g0: np.ndarray, g1: np.ndarray) -> np.ndarray:
        """Flow [H, W, 2] (dx, dy): pixel x of frame 0 is found at x + flow(x) in frame 1."""
        h, w = g0.shape
        if min(h, w) < MIN_FLOW_SIDE:
            return np.zeros((h, w, 2), np.float32)
        if self._dis is not None:
            return self._dis.calc(g0, g1, None)
        return cv2.calcOpticalFlowFarneback(g0, g1, None, 0.5, 4, 15, 3, 5, 1.2, 0)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return xs, ys


def sample(image: np.ndarray, flow: np.ndarray, grid: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """`image` sampled at x + flow(x) (bilinear, edges replicated) and a 0/1 map of samples inside the frame."""
    h, w = flow.shape[:2]
    mx, my = grid[0] + flow[..., 0], grid[1] + flow[..., 1]
    warped = cv2.remap(image, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = ((mx >= -0.5) & (mx <= w - 0.5) & (my >= -0.5) & (my <= h - 0.5)).astype(np.float32)
    return warped, inside


def consistency(f01: np.ndarray, f10: np.ndarray, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Per pixel of frame 0, how well its match in frame 1 maps back (1 = consistent, ~0 = occluded or out of frame).

    Forward-backward check: F01(x) + F10(x + F01(x)) should vanish; the tolerance grows with the motion
    (0.01·(|F01|² + |F10|²) + 0.5 px²), as in the usual occlusion test of variational flow.
    """
    back, inside = sample(f10, f01, grid)
    err2 = ((f01 + back) ** 2).sum(-1)
    tol = 0.01 * ((f01 ** 2).sum(-1) + (back ** 2).sum(-1)) + 0.5
    return np.exp(-err2 / tol).astype(np.float32) * inside


def project_flow(flow: np.ndarray, weight: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
    """Flow from time t back to the source frame, and how much source lands on each pixel at time t.

    Each source pixel x travels to x + t·flow(x) and is splatted there bilinearly with `weight` (its
    consistency): where moving content covers content that is disappearing, the consistent (visible) one
    wins. Returns the weighted mean of -t·flow at each target pixel [H, W, 2] (0 where nothing lands) and the
    splatted weight [H, W].
    """
    h, w = weight.shape
    tx = np.arange(w, dtype=np.float32)[None, :] + t * flow[..., 0]
    ty = np.arange(h, dtype=np.float32)[:, None] + t * flow[..., 1]
    x0, y0 = np.floor(tx), np.floor(ty)
    ax, ay = tx - x0, ty - y0
    mass = np.zeros(h * w)
    moved = np.zeros((2, h * w))
    for dx, dy, share in ((0, 0, (1 - ax) * (1 - ay)), (1, 0, ax * (1 - ay)), (0, 1, (1 - ax) * ay), (1, 1, ax * ay)):
        xi, yi = x0.astype(np.int64) + dx, y0.astype(np.int64) + dy
        ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        target, wt = (yi * w + xi)[ok], (share * weight)[ok]
        mass += np.bincount(target, wt, h * w)
        for k in range(2):
            moved[k] += np.bincount(target, wt * flow[..., k][ok], h * w)
    mass = mass.reshape(h, w)
    back = -t * moved.reshape(2, h, w).transpose(1, 2, 0) / np.maximum(mass, 1e-12)[..., None]
    return np.where((mass > 1e-6)[..., None], back, 0.0).astype(np.float32), mass.astype(np.float32)


def middle_frame(i0: np.ndarray, i1: np.ndarray, f01: np.ndarray, f10: np.ndarray, c0: np.ndarray, c1: np.ndarray,
                 t: float, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The frame at time t in (0, 1) between i0 and i1 [H, W, 3], from both flows and their consistency maps.

    Flows to time t are projected from each side (see `project_flow`); where nothing lands, the linear-motion
    estimate from both flows fills in. Each side's sample is weighted by the time and by how much consistent
    content of that side arrives there, so a region only one frame shows (occluded in the other) comes from it.
    """
    ft0, mass0 = project_flow(f01, c0 + OCCLUDED_WEIGHT, t)
    ft1, mass1 = project_flow(f10, c1 + OCCLUDED_WEIGHT, 1.0 - t)
    ft0 = np.where((mass0 > 1e-6)[..., None], ft0, -(1.0 - t) * t * f01 + t * t * f10)
    ft1 = np.where((mass1 > 1e-6)[..., None], ft1, (1.0 - t) ** 2 * f01 - t * (1.0 - t) * f10)
    s0, in0 = sample(i0, ft0, grid)
    s1, in1 = sample(i1, ft1, grid)
    w0 = (1.0 - t) * (np.minimum(mass0, 1.0) + 1e-3) * in0
    w1 = t * (np.minimum(mass1, 1.0) + 1e-3) * in1
    lost = w0 + w1 < 1e-9  # sampled outside both frames: a plain time blend of the edge samples
    w0, w1 = np.where(lost, 1.0 - t, w0), np.where(lost, t, w1)
    return (w0[..., None] * s0 + w1[..., None] * s1) / (w0 + w1)[..., None]


def flow_scale_for(choice: str, width: int, height: int) -> float:
    """The resolution factor flow is computed at: a FLOW_SCALES name, or "auto" (full up to 960 px, half above)."""
    if choice == "auto":
        return 1.0 if max(width, height) <= AUTO_FULL_SIDE else 0.5
    if choice not in FLOW_SCALES:
        raise ValueError(f"flow resolution must be 'auto' or one of {list(FLOW_SCALES)}, got {choice!r}")
    return FLOW_SCALES[choice]


def scaled_flow(flow: FlowEstimator, g0: np.ndarray, g1: np.ndarray, scale: float) -> np.ndarray:
    """Flow between two luma frames computed at `scale` of their size, brought back to full size in pixels."""
    if scale == 1.0:
        return flow(g0, g1)
    h, w = g0.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = flow(cv2.resize(g0, size, interpolation=cv2.INTER_AREA), cv2.resize(g1, size, interpolation=cv2.INTER_AREA))
    full = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return full * np.float32([w / size[0], h / size[1]])


def _frame(frames: torch.Tensor, i: int) -> np.ndarray:
    return np.ascontiguousarray(frames[i].detach().to("cpu", torch.float32).numpy())


def interpolate_frames(frames: torch.Tensor, factor: int, *, method: str = "dis",
                       scene_threshold: float = SCENE_THRESHOLD, flow_resolution: str = "auto",
                       progress: ProgressFn | None = None) -> tuple[torch.Tensor, InterpolationReport]:
    """IMAGE [F, H, W, 3] 0..1 -> [(F-1)·factor + 1, H, W, 3] float32 on the CPU, and what was done.

    `scene_threshold` 0 turns cut detection off. `progress(done, total)` is called after each pair (and may
    raise to cancel).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [F, H, W, 3] (a ComfyUI IMAGE batch), got shape {tuple(frames.shape)}")
    if factor not in FACTORS:
        raise ValueError(f"factor must be one of {FACTORS}, got {factor}")
    n, h, w, _ = frames.shape
    out = torch.empty((output_length(n, factor), h, w, 3), dtype=torch.float32)
    report = InterpolationReport(n, out.shape[0], factor, method, flow_scale=flow_scale_for(flow_resolution, w, h))
    if n == 0:
        return out, report
    flow, grid = FlowEstimator(method), _grid(h, w)
    i0 = _frame(frames, 0)
    g0 = flow.gray(i0)
    out[0] = torch.from_numpy(i0)
    for pair in range(n - 1):
        i1 = _frame(frames, pair + 1)
        g1 = flow.gray(i1)
        f01, f10 = scaled_flow(flow, g0, g1, report.flow_scale), scaled_flow(flow, g1, g0, report.flow_scale)
        c0, c1 = consistency(f01, f10, grid), consistency(f10, f01, grid)
        report.matched.append(float(c0.mean() + c1.mean()) / 2)
        is_cut = report.matched[-1] < scene_threshold
        if is_cut:
            report.cuts.append(pair)
        for j in range(1, factor):
            t = j / factor
            new = (i0 if t < 0.5 else i1) if is_cut else middle_frame(i0, i1, f01, f10, c0, c1, t, grid)
            out[pair * factor + j] = torch.from_numpy(np.clip(new, 0.0, 1.0))
        out[(pair + 1) * factor] = torch.from_numpy(i1)
        i0, g0 = i1, g1
        if progress is not None:
            progress(pair + 1, n - 1)
    return out, report
