"""Sampling schedules of Wan2.2-T2V-A14B: sigma grids, shift, timestep truncation and the expert split.

A `Schedule` is computed before anything runs, so a UI can show which step goes to which expert.

Grids (`grid`; first and last timesteps at 40 steps, shift 12 / at 4 steps, shift 12):
  unipc_grid  shift-warp of linspace(sigma_max, 0, steps+1)[:-1], sigma_max = float32(0.999)  (t 999..235 / 999..799)
              (Wan-Video/Wan2.2 wan/utils/fm_solvers_unipc.py)
  dpm_grid    shift-warp of linspace(1, 0, steps+1)[:steps], `get_sampling_sigmas`   (t 1000..235 / 1000..800)
              (wan/utils/fm_solvers.py)
  simple      ComfyUI's `simple` scheduler on a discrete-flow model (ModelSamplingSD3 with this shift): every
              1000/steps-th entry of its 1000-sigma float32 table from the top          (t 1000..235 / 1000..800)
  beta        ComfyUI's `beta` scheduler (alpha = beta = 0.6) on that table; equal indices are merged, as
              ComfyUI does, so it can have fewer steps than asked                    (t 1000..56 / 1000..720)
  official    the solver's own grid: unipc -> unipc_grid; dpm++ and euler -> dpm_grid (sigma 1 is pure noise,
              exact for flow matching, and Euler needs no log-SNR, so starting there is harmless).
Timesteps are int64(sigma * 1000) of the float64 sigmas (truncation, not rounding); the sigmas the solver uses
are stored as float32 with a final 0 appended, as the official code does.
What the DiT is fed (`model_timesteps`): those integers for unipc and dpm++ (the official loop); for euler the
untruncated float32 sigma * 1000, as the Lightning distillation's Euler scheduler (ModelTC/Wan2.2-Lightning
wan/utils/fm_solvers_euler.py) and ComfyUI feed it: 4 steps at shift 5 give 1000, 937.5, 833.33, 625, the
timesteps Lightning was distilled on (displayed truncated: 1000, 937, 833, 625; 2 high-noise + 2 low-noise).
The expert split compares the integer timesteps with boundary * 1000 (the same for euler at integer thresholds).

Custom `sigmas` (ComfyUI's SIGMAS convention: n+1 descending values in [0, 1] ending at 0) replace the grid:
their timesteps are truncated the same way from their float64 values, so our own grid passed as float64 SIGMAS
(the WanMoESchedule node) gives exactly the built-in run. A custom run starts from pure noise, as the official
loop, when its first timestep is 999 or 1000 (the top of the 1000-step range); below, the input latent is noised
to the first sigma, as ComfyUI's samplers do.

Expert split: by default the high-noise expert while t >= boundary * 1000 (official); with `switch_step` k the
first k steps of the full schedule are high-noise and the rest low-noise (per-expert step counts).

Denoise: `steps` is always the length of the full schedule; denoise d < 1 keeps its last
round(steps * d) steps (timesteps identical to the tail of the full run), so denoise 0.3 at 40 steps
runs the official steps 29..40, all with the low-noise expert. This is not ComfyUI's KSampler
convention (which stretches the schedule to steps/d and runs the last `steps`); it is chosen so a
refine pass reuses exactly the official timesteps and expert split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..config import (BOUNDARY, InputRefused, GUIDE_HIGH, GUIDE_LOW, NUM_TRAIN_TIMESTEPS, SCHEDULES, SHIFT, SOLVERS, STEPS,
                      choice)

# Official FlowUniPC: sigma_max is read back from a float32 tensor of 1 - 1/1000 (fm_solvers_unipc.py __init__).
UNIPC_SIGMA_MAX = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))
OFFICIAL_GRID = {"unipc": "unipc_grid", "dpm++": "dpm_grid", "euler": "dpm_grid"}
CUSTOM = "custom"  # Schedule.grid of a run on custom sigmas
NOISE_START_T = NUM_TRAIN_TIMESTEPS - 1  # a custom run whose first timestep is >= this starts from pure noise
BETA_ALPHA = BETA_BETA = 0.6  # ComfyUI's `beta` scheduler defaults (comfy/samplers.py beta_scheduler)


@dataclass(frozen=True)
class Schedule:
    """What a run will do: sigmas (with the end sigma), truncated timesteps, expert and guidance per step."""

    solver: str
    sigmas: tuple[float, ...]  # len(timesteps) + 1, float32 values; the last is 0
    timesteps: tuple[int, ...]
    experts: tuple[str, ...]  # "high" / "low" per step
    guidance: tuple[float, ...]
    boundary: float  # ratio; "high" while t >= boundary * 1000 (unless switch_step is set)
    total_steps: int  # steps of the full schedule this run was cut from
    denoise: float = 1.0
    grid: str = "unipc_grid"  # one of config.SCHEDULES but "official", or CUSTOM
    switch_step: int | None = None  # first low-noise step of the full schedule, when switching by step
    from_noise: bool = True  # the run starts from pure noise; else an input latent is noised to sigmas[0]
    model_timesteps: tuple[float, ...] = ()  # fed to the DiT (see the module docstring); () = the timesteps

    def model_timestep(self, step: int) -> float:
        """The timestep value step `step` feeds the DiT."""
        return self.model_timesteps[step] if self.model_timesteps else float(self.timesteps[step])

    @property
    def steps(self) -> int:
        """Number of steps this run executes."""
        return len(self.timesteps)

    @property
    def start_step(self) -> int:
        """Index in the full schedule of this run's first step (0 unless denoise < 1)."""
        return self.total_steps - self.steps

    def count(self, expert: str) -> int:
        """Steps given to `expert`."""
        return sum(1 for e in self.experts if e == expert)

    def summary(self) -> str:
        """One line for people, e.g. '26 steps high-noise (t 999-877, cfg 4), 14 low-noise (t 865-235, cfg 3)'."""
        if not self.timesteps:
            return f"0 steps ({self.solver}, denoise {self.denoise:g}): the latent passes through unchanged"
        parts = []
        for name, label in (("high", "high-noise"), ("low", "low-noise")):
            idx = [i for i, e in enumerate(self.experts) if e == name]
            if idx:
                t0, t1 = self.timesteps[idx[0]], self.timesteps[idx[-1]]
                span = f"t {t0}" if len(idx) == 1 else f"t {t0}-{t1}"
                parts.append(f"{len(idx)} step{'s' if len(idx) > 1 else ''} {label} ({span}, cfg {self.guidance[idx[0]]:g})")
        head = [self.solver]
        if self.grid == CUSTOM:
            head.append("custom sigmas")
        elif self.grid != OFFICIAL_GRID[self.solver]:
            head[0] += f" on the {self.grid}"
        if self.start_step:
            head.append(f"{self.steps} of {self.total_steps} steps")
        head.append(f"switch at step {self.switch_step}" if self.switch_step is not None
                    else f"boundary t {self.boundary * NUM_TRAIN_TIMESTEPS:g}")
        return f"{', '.join(parts)} [{', '.join(head)}]"


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Flow shift warp sigma' = shift*sigma / (1 + (shift-1)*sigma), in float64."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def base_grid(solver: str, steps: int) -> np.ndarray:
    """The official unshifted grid (float64, `steps` values, no final 0) of a solver."""
    _check_solver(solver)
    _check_steps(steps)
    if solver == "unipc":
        return np.linspace(UNIPC_SIGMA_MAX, 0.0, steps + 1)[:-1].copy()
    return np.linspace(1.0, 0.0, steps + 1)[:steps].copy()


def comfy_flow_sigmas(shift: float) -> torch.Tensor:
    """The 1000 float32 sigmas (ascending) of ComfyUI's ModelSamplingDiscreteFlow at `shift`, multiplier 1000.

    Same operations in the same order as comfy/model_sampling.py set_parameters + time_snr_shift, so the values
    are ComfyUI's bit for bit.
    """
    timesteps = (torch.arange(1, NUM_TRAIN_TIMESTEPS + 1, 1) / NUM_TRAIN_TIMESTEPS) * NUM_TRAIN_TIMESTEPS
    t = timesteps / NUM_TRAIN_TIMESTEPS
    return t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)


def comfy_grid(name: str, steps: int, shift: float) -> np.ndarray:
    """ComfyUI's `simple` or `beta` scheduler on a flow model at `shift`: the sigmas without the final 0."""
    table = comfy_flow_sigmas(shift)
    if name == "simple":
        stride = len(table) / steps
        return np.asarray([float(table[-(1 + int(x * stride))]) for x in range(steps)], dtype=np.float64)
    from scipy.stats import beta as beta_distribution  # ComfyUI's own dependency for this scheduler

    ts = np.rint(beta_distribution.ppf(1 - np.linspace(0, 1, steps, endpoint=False), BETA_ALPHA, BETA_BETA)
                 * (len(table) - 1))
    kept = [t for i, t in enumerate(ts) if i == 0 or t != ts[i - 1]]  # ComfyUI skips a repeated index
    return np.asarray([float(table[int(t)]) for t in kept], dtype=np.float64)


def grid_sigmas(grid: str, solver: str, steps: int, shift: float) -> np.ndarray:
    """The shifted sigmas (float64, no final 0) of sigma grid `grid` (config.SCHEDULES) for `solver`."""
    choice("schedule", grid, SCHEDULES)
    _check_solver(solver)
    _check_steps(steps)
    if not (np.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be > 0, got {shift}")
    grid = OFFICIAL_GRID[solver] if grid == "official" else grid
    if grid in ("simple", "beta"):
        return comfy_grid(grid, steps, shift)
    return shift_sigmas(base_grid("unipc" if grid == "unipc_grid" else "dpm++", steps), shift)


def sigmas_refusal(custom: np.ndarray, source: str | None = None) -> ValueError | None:
    """Why these sigmas cannot drive the sampler, or None. With `source` (a description of the nodes that make them,
    for a check before they exist: `custom` then only stands in for their order and length) it is named in place of
    their values."""
    if custom.ndim != 1 or len(custom) < 2:
        return ValueError(f"sigmas need at least two values (start and end sigma of one step); got {custom.size}"
                          + (f" from {source}" if source else ""))
    got = source or str([round(float(v), 4) for v in custom[:8]] + (["..."] if len(custom) > 8 else []))
    if source is None and (not np.all(np.isfinite(custom)) or custom.min() < 0 or custom.max() > 1):
        return ValueError(f"sigmas must lie in [0, 1] (a flow-matching model); got {got}")
    if np.any(np.diff(custom) >= 0):
        return InputRefused(f"sigmas must be strictly decreasing (highest noise first); got {got}. A FlipSigmas or "
                            "an ascending custom list does not fit this sampler")
    if custom[-1] != 0.0:
        end = f"{custom[-1]:.4g}" if source is None else f"a sigma above 0 ({source})"
        return InputRefused(f"sigmas must end at 0 so the video comes out clean; they end at {end}. Use the "
                            "low_sigmas of SplitSigmas, not high_sigmas, or a scheduler node's full output")
    return None


def check_sigmas(sigmas: Sequence[float]) -> np.ndarray:
    """Custom sigmas as float64 after the checks ComfyUI's SIGMAS must pass here (a ValueError for users)."""
    custom = np.asarray([float(s) for s in sigmas], dtype=np.float64)
    problem = sigmas_refusal(custom)
    if problem is not None:
        raise problem
    return custom


def build_schedule(steps: int = STEPS, shift: float = SHIFT, solver: str = "unipc", *, boundary: float = BOUNDARY,
                   cfg_high: float = GUIDE_HIGH, cfg_low: float = GUIDE_LOW, denoise: float = 1.0,
                   sigmas: Sequence[float] | None = None, grid: str = "official",
                   switch_step: int | None = None) -> Schedule:
    """The schedule of one run: sigma grid (or custom `sigmas`, used as given), shift, truncation, expert split.

    With custom `sigmas` (see the module docstring) `steps`, `shift` and `grid` are ignored.
    """
    _check_solver(solver)
    if not 0.0 <= boundary <= 1.0:
        raise ValueError(f"boundary must be between 0 and 1 (a fraction of {NUM_TRAIN_TIMESTEPS} timesteps), got {boundary}")
    if not 0.0 <= denoise <= 1.0:
        raise ValueError(f"denoise must be between 0 and 1, got {denoise}")
    for name, g in (("cfg_high", cfg_high), ("cfg_low", cfg_low)):
        if not np.isfinite(g) or g < 0:
            raise ValueError(f"{name} must be a finite guidance scale >= 0, got {g}")
    if switch_step is not None and switch_step < 0:
        raise ValueError(f"switch step must be >= 0 (the first low-noise step), got {switch_step}")

    if sigmas is None:
        shifted, grid = grid_sigmas(grid, solver, steps, shift), OFFICIAL_GRID[solver] if grid == "official" else grid
    else:
        shifted, grid = check_sigmas(sigmas)[:-1], CUSTOM

    # Official: timesteps from the float64 sigmas, truncated; the solver sees float32 sigmas.
    timesteps = (shifted * NUM_TRAIN_TIMESTEPS).astype(np.int64)
    solver_sigmas = np.concatenate([shifted, [0.0]]).astype(np.float32)
    fed = (shifted * NUM_TRAIN_TIMESTEPS).astype(np.float32) if solver == "euler" else timesteps.astype(np.float64)

    total = len(timesteps)
    keep = total if denoise >= 1.0 else int(round(total * denoise))
    start = total - keep
    timesteps, fed = timesteps[start:], fed[start:]
    solver_sigmas = solver_sigmas[start:] if keep else solver_sigmas[:0]
    experts = _experts(timesteps, start, boundary, switch_step)
    from_noise = denoise >= 1.0 and (grid != CUSTOM or int(timesteps[0]) >= NOISE_START_T)
    return Schedule(
        solver=solver,
        sigmas=tuple(float(s) for s in solver_sigmas),
        timesteps=tuple(int(t) for t in timesteps),
        experts=experts,
        guidance=tuple(float(cfg_high) if e == "high" else float(cfg_low) for e in experts),
        boundary=float(boundary),
        total_steps=total,
        denoise=float(denoise),
        grid=grid,
        switch_step=switch_step,
        from_noise=from_noise,
        model_timesteps=tuple(float(t) for t in fed),
    )


def full_sigmas(steps: int, shift: float, solver: str, grid: str = "official") -> list[float]:
    """ComfyUI SIGMAS of a grid: the float64 shifted sigmas with the final 0 (what WanMoESchedule outputs)."""
    return [float(s) for s in grid_sigmas(grid, solver, steps, shift)] + [0.0]


def _experts(timesteps: np.ndarray, start: int, boundary: float, switch_step: int | None) -> tuple[str, ...]:
    """'high' / 'low' per step: by the boundary timestep, or by the index in the full schedule."""
    if switch_step is not None:
        return tuple("high" if start + i < switch_step else "low" for i in range(len(timesteps)))
    threshold = boundary * NUM_TRAIN_TIMESTEPS
    return tuple("high" if int(t) >= threshold else "low" for t in timesteps)


MAX_STEPS = 1000  # more is never a useful schedule, and would hold the queue for hours


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise ValueError(f"steps must be a whole number, got {steps!r}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if steps > MAX_STEPS:
        raise ValueError(f"steps must be at most {MAX_STEPS}, got {steps}")


def _check_solver(solver: str) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver '{solver}'; expected one of {SOLVERS}")
