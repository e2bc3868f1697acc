"""Flow-matching ODE solvers of Wan2.2: the official flow UniPC (default), flow DPM++ 2M, and Euler.

The model predicts a velocity v with x_sigma = (1 - sigma) * x0 + sigma * noise, so x0 = x - sigma * v
(official `convert_model_output`, prediction_type "flow_prediction"). With alpha = 1 - sigma the
log-SNR is lambda = log(alpha) - log(sigma); it is -inf at sigma 1 and +inf at sigma 0, and the
formulas below are written so those ends give the exact limits instead of NaN.

Usage: `solver = make_solver(name, sigmas)`, then for i in range(len(sigmas) - 1):
`x = solver.step(velocity_at(x, sigmas[i]), x, i)`. Step-size coefficients are computed in float64
from the float32 sigmas of the schedule; tensors stay in their dtype (float32 latents).

Every solver is elementwise in x, the velocity and its history, so a step can also run frame range by frame range
in place (`begin(i, x)`, then `frames(v, x, lo, hi)` once for each latent frame range): the sampler's context
windows finish a window's frames as soon as no later window reads them, without a whole-latent velocity, and the
result is the whole-latent step bit for bit (the same operations in the same order on each element).
"""

from __future__ import annotations

import math
from typing import Protocol, Sequence

import torch

from ..config import SOLVERS
from ..memory.buffers import kept_buffer


class Solver(Protocol):
    """A stateful multistep solver over a fixed list of sigmas (with the end sigma)."""

    sigmas: tuple[float, ...]
    keeps_x0: bool  # whether `estimate` gives the x0 estimate of the last step

    def step(self, velocity: torch.Tensor, x: torch.Tensor, step_index: int) -> torch.Tensor:
        """x at sigmas[step_index] and the model velocity there -> x at sigmas[step_index + 1] (x is not changed)."""
        ...

    def begin(self, step_index: int, x: torch.Tensor) -> None:
        """Start step `step_index` in place on the whole latent `x` (its history buffers are shaped like x)."""
        ...

    def frames(self, velocity: torch.Tensor, x: torch.Tensor, lo: int, hi: int) -> None:
        """Step latent frames [lo, hi) of `x` in place with their velocity [B, C, hi - lo, H, W]."""
        ...

    def estimate(self) -> torch.Tensor | None:
        """The last step's whole-latent x0 estimate when the solver keeps it as history (None: it does not)."""
        ...


def make_solver(name: str, sigmas: Sequence[float]) -> Solver:
    """A fresh solver `name` ("unipc", "dpm++", "euler") over `sigmas` (descending, end sigma included)."""
    classes = {"unipc": FlowUniPC, "dpm++": FlowDPMPP2M, "euler": FlowEuler}
    if name not in classes:
        raise ValueError(f"unknown solver '{name}'; expected one of {SOLVERS}")
    return classes[name](sigmas)


def _lambda(sigma: float) -> float:
    """log-SNR of flow matching, log((1 - sigma) / sigma), with the infinite ends."""
    if sigma <= 0.0:
        return math.inf
    if sigma >= 1.0:
        return -math.inf
    return math.log(1.0 - sigma) - math.log(sigma)


def _ratio(a: float, b: float) -> float:
    """a / b where an infinite b (infinite step) makes the ratio 0 and an infinite a makes it +-inf."""
    if math.isinf(b):
        return 0.0 if not math.isinf(a) else math.copysign(math.inf, a * b)
    return a / b


class _Base:
    """Shared bookkeeping: sigma list, sequential step index, the whole-latent step over the frame-range one."""

    def __init__(self, sigmas: Sequence[float]) -> None:
        self.sigmas = tuple(float(s) for s in sigmas)
        if len(self.sigmas) < 2:
            raise ValueError("a solver needs at least two sigmas (start and end of one step)")
        self._next = 0
        self._i = -1  # the step `frames` works on

    @property
    def num_steps(self) -> int:
        """Number of steps over the sigma list."""
        return len(self.sigmas) - 1

    def _advance(self, step_index: int) -> None:
        if step_index != self._next:
            raise ValueError(f"solver steps must run in order: expected step {self._next}, got {step_index}")
        if step_index >= self.num_steps:
            raise ValueError(f"step {step_index} is past the last step {self.num_steps - 1}")
        self._next += 1
        self._i = step_index

    def begin(self, step_index: int, x: torch.Tensor) -> None:
        """Start step `step_index` on the latent `x`, which `frames` then updates in place."""
        self._advance(step_index)

    def frames(self, velocity: torch.Tensor, x: torch.Tensor, lo: int, hi: int) -> None:
        """Step latent frames [lo, hi) of `x` in place (each frame once per step, any order)."""
        raise NotImplementedError

    def step(self, velocity: torch.Tensor, x: torch.Tensor, step_index: int) -> torch.Tensor:
        """One whole-latent step into a new tensor (x itself is left as it was)."""
        x = x.clone()
        self.begin(step_index, x)
        self.frames(velocity, x, 0, x.shape[2])
        return x

    def x0(self, velocity: torch.Tensor, x: torch.Tensor, step_index: int) -> torch.Tensor:
        """The model's clean-latent estimate x - sigma * v at step `step_index`."""
        return x - self.sigmas[step_index] * velocity

    keeps_x0 = False

    def estimate(self) -> torch.Tensor | None:
        """The last step's x0 estimate, kept as history (valid until the next step; None when none is kept)."""
        return None


class FlowEuler(_Base):
    """First-order flow Euler: x <- x + (sigma_next - sigma) * v (also DPM++ 1st order / DDIM for flow)."""

    def frames(self, velocity: torch.Tensor, x: torch.Tensor, lo: int, hi: int) -> None:
        """One Euler step of frames [lo, hi)."""
        i = self._i
        x.narrow(2, lo, hi - lo).add_((self.sigmas[i + 1] - self.sigmas[i]) * velocity)


class FlowDPMPP2M(_Base):
    """Official flow DPM-Solver++ 2M (dpmsolver++, midpoint, order 2, first order at the first and last step)."""

    keeps_x0 = True

    def __init__(self, sigmas: Sequence[float]) -> None:
        super().__init__(sigmas)
        self._prev_x0: torch.Tensor | None = None  # the previous step's x0 estimate, whole latent
        self._has_prev = False
        self._first_order = True

    def begin(self, step_index: int, x: torch.Tensor) -> None:
        """Start a step: first order at step 0 (warm-up) and at the last step."""
        super().begin(step_index, x)
        # Official FlowDPMSolverMultistepScheduler.step: first order at step 0 (warm-up) and at the last step
        # (final_sigmas_type "zero" forces `lower_order_final`), second order otherwise.
        self._first_order = not self._has_prev or step_index == self.num_steps - 1
        self._prev_x0 = kept_buffer(self._prev_x0, x)
        self._has_prev = True

    def frames(self, velocity: torch.Tensor, x: torch.Tensor, lo: int, hi: int) -> None:
        """One DPM++ 2M step of frames [lo, hi)."""
        i = self._i
        xs, prev = x.narrow(2, lo, hi - lo), self._prev_x0.narrow(2, lo, hi - lo)
        s0, t = self.sigmas[i], self.sigmas[i + 1]
        m0 = xs - s0 * velocity
        # alpha_t * (exp(-h) - 1) with exp(-h) = alpha_s0 * sigma_t / (alpha_t * sigma_s0); finite at both ends.
        ratio = t / s0
        c = (1.0 - s0) * ratio - (1.0 - t)
        out = ratio * xs - c * m0
        if not self._first_order:
            h = _lambda(t) - _lambda(s0)
            h0 = _lambda(s0) - _lambda(self.sigmas[i - 1])
            inv_r0 = _ratio(h, h0)  # 1 / r0; 0 when the previous sigma was 1 (h0 infinite)
            if inv_r0 != 0.0:
                out = out - (0.5 * c * inv_r0) * (m0 - prev)
        prev.copy_(m0)
        xs.copy_(out)

    def estimate(self) -> torch.Tensor | None:
        """The last step's x0 estimate (x - sigma * v, as `x0`)."""
        return self._prev_x0 if self._i >= 0 else None


class FlowUniPC(_Base):
    """Official flow UniPC: bh2, order 2, predictor + corrector (from step 1), lower order at the last step."""

    order = 2
    keeps_x0 = True

    def __init__(self, sigmas: Sequence[float]) -> None:
        super().__init__(sigmas)
        # Model x0 estimates of the last two steps, newest last, as whole-latent buffers: a step reads both and
        # writes its own estimate over the older one (they swap roles in `begin`).
        self._x0s: list[torch.Tensor] = []
        self._kept = 0  # how many estimates the buffers hold (0..2)
        self._last_sample: torch.Tensor | None = None  # x before the previous predictor (None before step 1)
        self._last_order = 0  # order of the previous predictor = order of this step's corrector
        self._order = 1  # this step's predictor order

    def begin(self, step_index: int, x: torch.Tensor) -> None:
        """Start a step: the corrector from step 1, the predictor's order from the history it will have."""
        super().begin(step_index, x)
        if self._kept == self.order:  # the older estimate's buffer takes this step's estimate
            self._x0s.reverse()
        elif self._kept < self.order:
            self._x0s.insert(0, torch.empty_like(x))
        self._correct = self._kept > 0
        self._last_order = self._order
        self._kept = min(self._kept + 1, self.order)
        # lower_order_final: order min(2, steps left); warm-up: at most 1 + previous steps.
        self._order = min(self.order, self.num_steps - step_index, self._kept)
        self._last_sample = kept_buffer(self._last_sample, x)

    def frames(self, velocity: torch.Tensor, x: torch.Tensor, lo: int, hi: int) -> None:
        """Correct frames [lo, hi) with the new model output (UniC), then predict their next x (UniP)."""
        i, n = self._i, hi - lo
        xs, last = x.narrow(2, lo, n), self._last_sample.narrow(2, lo, n)
        slot = self._x0s[0].narrow(2, lo, n)  # the older estimate now, this step's once written
        newest = self._x0s[-1].narrow(2, lo, n) if self._correct else None  # the previous step's estimate
        m_new = xs - self.sigmas[i] * velocity
        corrected = self._corrector(m_new, last, newest, slot, i) if self._correct else xs
        predicted = self._predictor(corrected, m_new, newest, i, self._order)
        last.copy_(corrected)
        slot.copy_(m_new)
        xs.copy_(predicted)

    def estimate(self) -> torch.Tensor | None:
        """The last step's x0 estimate (x - sigma * v, as `x0`): the buffer `frames` wrote it to."""
        return self._x0s[0] if self._x0s else None

    @staticmethod
    def _coefficients(h: float) -> tuple[float, float, float, float]:
        """For hh = -h (data prediction): h*phi_1 = expm1(hh), B(h) = expm1(hh) (bh2), b_1, b_2 of the UniPC system."""
        hh = -h
        h_phi_1 = math.expm1(hh)
        b_h = h_phi_1
        h_phi_k1 = _ratio(h_phi_1, hh) - 1.0
        h_phi_k2 = _ratio(h_phi_k1, hh) - 0.5
        return h_phi_1, b_h, h_phi_k1 / b_h, h_phi_k2 * 2.0 / b_h

    def _predictor(self, x: torch.Tensor, m0: torch.Tensor, m_prev: torch.Tensor | None, i: int,
                   order: int) -> torch.Tensor:
        """UniP from sigma_i to sigma_{i+1}: m0 this step's estimate, m_prev the previous one (order 2)."""
        s0, t = self.sigmas[i], self.sigmas[i + 1]
        # At t = 0 (last step, order 1) h = +inf and h*phi_1 = -1, so this gives exactly x_t = m0.
        lam_t, lam_s0 = _lambda(t), _lambda(s0)
        h = lam_t - lam_s0
        h_phi_1, b_h, _, _ = self._coefficients(h)
        alpha_t = 1.0 - t
        out = (t / s0) * x - (alpha_t * h_phi_1) * m0
        if order == 2:
            r1 = _ratio(_lambda(self.sigmas[i - 1]) - lam_s0, h)
            if not math.isinf(r1):
                # rhos_p = 0.5 for order 2 (official multistep_uni_p_bh_update); D1 = (m_prev - m0) / r1.
                out = out - (alpha_t * b_h * 0.5 / r1) * (m_prev - m0)
        return out

    def _corrector(self, m_new: torch.Tensor, last: torch.Tensor, m0: torch.Tensor, m_older: torch.Tensor,
                   i: int) -> torch.Tensor:
        """UniC at sigma_i from the predictor's start `last` (at sigma_{i-1}), its estimate m0 (and the one before,
        m_older, at order 2) and the new model output."""
        order = self._last_order
        s0, t = self.sigmas[i - 1], self.sigmas[i]
        lam_s0 = _lambda(s0)
        h = _lambda(t) - lam_s0
        h_phi_1, b_h, b1, b2 = self._coefficients(h)
        alpha_t = 1.0 - t
        out = (t / s0) * last - (alpha_t * h_phi_1) * m0
        if order == 1:
            rho_prev, rho_new = 0.0, 0.5
        else:
            r1 = _ratio(_lambda(self.sigmas[i - 2]) - lam_s0, h)
            # Solve [[1, 1], [r1, 1]] @ [rho_prev, rho_new] = [b1, b2] in closed form.
            rho_prev = (b1 - b2) / (1.0 - r1) if not math.isinf(r1) else 0.0
            rho_new = b1 - rho_prev
            if rho_prev != 0.0:
                out = out - (alpha_t * b_h * rho_prev / r1) * (m_older - m0)
        return out - (alpha_t * b_h * rho_new) * (m_new - m0)
