"""Sampling schedules of Wan2.2-T2V-A14B: official sigma grids, shift, timestep truncation and the expert split.

A `Schedule` is computed before anything runs, so a UI can show which step goes to which expert.

Grids (Wan-Video/Wan2.2 wan/utils/fm_solvers_unipc.py, fm_solvers.py; wan/text2video.py):
  unipc  shift-warp of linspace(sigma_max, 0, steps+1)[:-1], sigma_max = float32(0.999)
  dpm++  shift-warp of linspace(1, 0, steps+1)[:steps]  (`get_sampling_sigmas`)
  euler  the dpm++ grid: it starts at sigma 1 (pure noise, exact for flow matching) like ComfyUI's
         flow `simple` schedule, and Euler needs no log-SNR, so sigma 1 is harmless.
Timesteps are int64(sigma * 1000) of the float64 shifted sigmas (truncation, not rounding); the
sigmas the solver uses are stored as float32 with a final 0 appended, as the official code does.

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

from ..config import BOUNDARY, GUIDE_HIGH, GUIDE_LOW, NUM_TRAIN_TIMESTEPS, SHIFT, SOLVERS, STEPS

# Official FlowUniPC: sigma_max is read back from a float32 tensor of 1 - 1/1000 (fm_solvers_unipc.py __init__).
UNIPC_SIGMA_MAX = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))


@dataclass(frozen=True)
class Schedule:
    """What a run will do: sigmas (with the end sigma), truncated timesteps, expert and guidance per step."""

    solver: str
    sigmas: tuple[float, ...]  # len(timesteps) + 1, float32 values; the last is 0 for a full denoise
    timesteps: tuple[int, ...]
    experts: tuple[str, ...]  # "high" / "low" per step
    guidance: tuple[float, ...]
    boundary: float  # ratio; "high" while t >= boundary * 1000
    total_steps: int  # steps of the full schedule this run was cut from
    denoise: float = 1.0

    @property
    def steps(self) -> int:
        """Number of steps this run executes."""
        return len(self.timesteps)

    @property
    def start_step(self) -> int:
        """Index in the full schedule of this run's first step (0 unless denoise < 1)."""
        return self.total_steps - self.steps

    @property
    def from_noise(self) -> bool:
        """True when the run starts from pure noise (denoise 1); else an input latent is noised to sigmas[0]."""
        return self.denoise >= 1.0

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
        head = f"{self.solver}, {self.steps} of {self.total_steps} steps" if self.start_step else f"{self.solver}"
        return f"{', '.join(parts)} [{head}, boundary t {self.boundary * NUM_TRAIN_TIMESTEPS:g}]"


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Flow shift warp sigma' = shift*sigma / (1 + (shift-1)*sigma), in float64."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def base_grid(solver: str, steps: int) -> np.ndarray:
    """The official unshifted grid (float64, `steps` values, no final 0) of a solver."""
    _check_solver(solver)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if solver == "unipc":
        return np.linspace(UNIPC_SIGMA_MAX, 0.0, steps + 1)[:-1].copy()
    return np.linspace(1.0, 0.0, steps + 1)[:steps].copy()


def build_schedule(steps: int = STEPS, shift: float = SHIFT, solver: str = "unipc", *, boundary: float = BOUNDARY,
                   cfg_high: float = GUIDE_HIGH, cfg_low: float = GUIDE_LOW, denoise: float = 1.0,
                   sigmas: Sequence[float] | None = None) -> Schedule:
    """The schedule of one run: official grid (or custom `sigmas`, used as given), shift, truncation, expert split.

    Custom `sigmas` follow ComfyUI's SIGMAS convention: the actual (already shifted) sigmas including the
    end one, n+1 values for n steps, descending in [0, 1]; `steps` and `shift` are then ignored.
    """
    _check_solver(solver)
    if not 0.0 <= boundary <= 1.0:
        raise ValueError(f"boundary must be between 0 and 1 (a fraction of {NUM_TRAIN_TIMESTEPS} timesteps), got {boundary}")
    if not 0.0 <= denoise <= 1.0:
        raise ValueError(f"denoise must be between 0 and 1, got {denoise}")
    for name, g in (("cfg_high", cfg_high), ("cfg_low", cfg_low)):
        if not np.isfinite(g) or g < 0:
            raise ValueError(f"{name} must be a finite guidance scale >= 0, got {g}")

    if sigmas is None:
        if shift <= 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        shifted = shift_sigmas(base_grid(solver, steps), shift)
        end = 0.0
    else:
        custom = np.asarray([float(s) for s in sigmas], dtype=np.float64)
        if custom.ndim != 1 or len(custom) < 2:
            raise ValueError("custom sigmas need at least two values (start and end sigma of one step)")
        if not np.all(np.isfinite(custom)) or custom.min() < 0 or custom.max() > 1:
            raise ValueError(f"custom sigmas must lie in [0, 1] (flow matching); got {custom.tolist()}")
        if np.any(np.diff(custom) >= 0):
            raise ValueError(f"custom sigmas must be strictly decreasing; got {custom.tolist()}")
        shifted, end = custom[:-1], float(custom[-1])

    # Official: timesteps from the float64 sigmas, truncated; the solver sees float32 sigmas.
    timesteps = (shifted * NUM_TRAIN_TIMESTEPS).astype(np.int64)
    solver_sigmas = np.concatenate([shifted, [end]]).astype(np.float32)

    total = len(timesteps)
    keep = total if denoise >= 1.0 else int(round(total * denoise))
    start = total - keep
    timesteps = timesteps[start:]
    solver_sigmas = solver_sigmas[start:] if keep else solver_sigmas[:0]

    threshold = boundary * NUM_TRAIN_TIMESTEPS
    experts = tuple("high" if int(t) >= threshold else "low" for t in timesteps)
    return Schedule(
        solver=solver,
        sigmas=tuple(float(s) for s in solver_sigmas),
        timesteps=tuple(int(t) for t in timesteps),
        experts=experts,
        guidance=tuple(float(cfg_high) if e == "high" else float(cfg_low) for e in experts),
        boundary=float(boundary),
        total_steps=total,
        denoise=float(denoise),
    )


def _check_solver(solver: str) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver '{solver}'; expected one of {SOLVERS}")
