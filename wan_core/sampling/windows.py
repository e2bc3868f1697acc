"""Context windows: a video longer than the model's window sampled as overlapping temporal windows of latent frames.

At every step each expert call runs once per window on that window's slice of the latent (so a step's activations
grow with the window, not with the video) and the windows' guided velocities are blended per frame:

  v[f] = sum_w  a_w[f] * v_w[f],   a_w[f] = r_w[f] / sum_u r_u[f]   (a partition of unity over the windows at f)

with raw weights r_w from the `fuse` method:
  pyramid  1, 2, ..., peak, ..., 2, 1 over the window (FreeNoise's weighted average; what ComfyUI core offers)
  linear   1 inside, ramps (k + 1) / (O + 1), k = 0..O-1, over the first / last O frames (O = the overlap setting)
           on the sides that have a neighbour (ComfyUI core's overlap-linear, without its zero end weight): two
           windows sharing exactly O frames cross-fade linearly and sum to exactly 1 there; where the even spacing
           makes them share more, the middle of the shared frames is an equal average.
With two windows sharing exactly O frames both methods give the same blend; pyramid cross-fades over all the shared
frames, linear only over O of them at each end.
A frame covered by one window takes that window's velocity unchanged (a_w = 1 exactly), so a video of exactly one
window is the plain run bit for bit.

Why velocities: the solver steps on velocity, and blending the x0 estimates instead (ComfyUI core blends the
model's denoised output) is the same thing up to rounding, because x0 = x - sigma * v is affine in v with the same
x and sigma for every window at a frame. Guidance is applied per window before blending (also linear).

Placement: the fewest windows of the given length whose neighbours share at least `overlap` frames, spread evenly
from the first frame to the last (starts round(k * (T - L) / (W - 1))). It depends only on the frame counts, never on
the step, so a seed and settings always give the same video. Prompt travel: with P prompts over W windows, window w
reads prompt floor(w * P / W) (consecutive windows share a prompt; the first and last prompts open and close).
VACE control (when the sampler gets it) is sliced per window with `Window.take` along the frame axis.

Streaming (`stream`): windows run in order, and the frames before the next window's start are handed to the solver
as soon as their blend is complete; it steps them in place. So besides x and the solver's history nothing of the
whole latent's size exists: the blend buffer is one window, the carry to the next window the frames they share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..config import VAE_STRIDE, InputRefused
from ..requests import ContextWindows


@dataclass(frozen=True)
class Window:
    """One window: latent frames [start, end), its blend weight per frame, and which prompt it reads."""

    start: int
    end: int
    weights: tuple[float, ...]  # a_w over the window's frames (float64 values)
    prompt: int = 0

    def take(self, tensor: torch.Tensor, dim: int = 2) -> torch.Tensor:
        """This window's frames of `tensor` along `dim` (the latent's frame axis by default)."""
        return tensor.narrow(dim, self.start, self.end - self.start)


@dataclass(frozen=True)
class WindowPlan:
    """Where the windows of a run lie over `frames` latent frames."""

    settings: ContextWindows
    frames: int
    windows: tuple[Window, ...]

    def summary(self) -> str:
        """One line for people: how many windows of which size, where they start, how they blend."""
        s = self.settings
        spans = ", ".join(f"{w.start}-{w.end - 1}" for w in self.windows)
        prompts = len({w.prompt for w in self.windows})
        travel = f", {prompts} prompts" if prompts > 1 else ""
        return (f"{len(self.windows)} context window{'s' if len(self.windows) > 1 else ''} of {s.latent_frames} "
                f"latent frames ({s.frames} px frames), overlap {s.latent_overlap} ({s.overlap}), {s.fuse}{travel}: "
                f"latent frames {spans} of {self.frames}")


def pixel_frames(latent_frames: int) -> int:
    """Pixel frames a latent of `latent_frames` decodes to (4(T-1)+1)."""
    return VAE_STRIDE[0] * (latent_frames - 1) + 1


def window_starts(frames: int, length: int, overlap: int) -> list[int]:
    """Start frames of the fewest `length`-frame windows over `frames` with >= `overlap` frames shared, spread evenly."""
    if frames <= length:
        return [0]
    count = 1 + -(-(frames - length) // (length - overlap))  # ceil((T - L) / (L - O)) steps of at most L - O
    return [round(k * (frames - length) / (count - 1)) for k in range(count)]


def _raw_weights(fuse: str, starts: list[int], length: int, overlap: int, k: int) -> list[float]:
    """r_w over window k's frames before normalisation."""
    if fuse == "pyramid":
        return [float(min(i + 1, length - i)) for i in range(length)]
    left, right = k > 0, k + 1 < len(starts)
    return [min(1.0, (i + 1) / (overlap + 1) if left else 1.0, (length - i) / (overlap + 1) if right else 1.0)
            for i in range(length)]


def plan_windows(settings: ContextWindows, frames: int, prompts: int = 1) -> WindowPlan:
    """The windows over a latent of `frames` frames (ValueError for users when they cannot fit)."""
    length, overlap = settings.latent_frames, settings.latent_overlap
    if length > frames:
        raise InputRefused(f"the context windows ({settings.frames} frames) are longer than the video "
                         f"({pixel_frames(frames)} frames, {frames} latent frames); use windows of at most "
                         f"{pixel_frames(frames)} frames, or disconnect the windows for a video this short")
    starts = window_starts(frames, length, overlap)
    if prompts > len(starts):
        raise InputRefused(f"{prompts} prompts for {len(starts)} context window{'s' if len(starts) > 1 else ''} "
                         f"({pixel_frames(frames)} frames in windows of {settings.frames}, overlap {settings.overlap}); "
                         f"give at most {len(starts)} prompts, or a longer video / shorter windows")
    raw = [_raw_weights(settings.fuse, starts, length, overlap, k) for k in range(len(starts))]
    total = [0.0] * frames
    for start, weights in zip(starts, raw):
        for i, r in enumerate(weights):
            total[start + i] += r
    windows = tuple(
        Window(start, start + length, tuple(r / total[start + i] for i, r in enumerate(weights)),
               prompt=k * prompts // len(starts))
        for k, (start, weights) in enumerate(zip(starts, raw)))
    return WindowPlan(settings, frames, windows)


FrameRange = Callable[[int, int, torch.Tensor], None]  # (lo, hi, blended velocity of latent frames [lo, hi))


def stream(plan: WindowPlan, x: torch.Tensor, run: Callable[[Window, torch.Tensor], torch.Tensor], finish: FrameRange,
           check_cancel: Callable[[], None] | None = None) -> None:
    """Blend the windows' velocities over the latent `x` [B, C, T, H, W], `run(window, x slice)` once per window, and
    hand each frame range to `finish` as soon as its blend is complete.

    Windows run in order of their starts (their ends follow, all having one length), so after window k the frames
    before window k + 1's start are read by no later window: `finish` may step them in `x` in place. Only the
    frames two neighbours share are carried to the next window, so no buffer here is larger than a window. Each
    frame's sum is accumulated in window order from 0 (0 + a_0 v_0 + a_1 v_1 ...), and a frame alone in its window
    gets 0 + v * 1.0, exactly v.
    """
    windows = plan.windows
    carry: torch.Tensor | None = None  # the blended sum so far of the frames window k shares with window k - 1
    for k, window in enumerate(windows):
        if check_cancel is not None:
            check_cancel()
        v = run(window, window.take(x)).float()
        weights = torch.tensor(window.weights, dtype=torch.float32, device=v.device).view(1, 1, -1, 1, 1)
        total = torch.zeros_like(v)
        if carry is not None:
            total.narrow(2, 0, carry.shape[2]).copy_(carry)
        total.add_(v.mul_(weights))
        del v
        done = windows[k + 1].start if k + 1 < len(windows) else window.end  # frames no later window reads
        finish(window.start, done, total.narrow(2, 0, done - window.start))
        carry = total.narrow(2, done - window.start, window.end - done).clone() if done < window.end else None
        del total
