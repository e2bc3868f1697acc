"""Flow-matching ODE solvers of Wan2.2: the official flow UniPC (default), flow DPM++ 2M, and Euler.

The model predicts a velocity v with x_sigma = (1 - sigma) * x0 + sigma * noise, so x0 = x - sigma * v
(official `convert_model_output`, prediction_type "flow_prediction"). With alpha = 1 - sigma the
log-SNR is lambda = log(alpha) - log(sigma); it is -inf at sigma 1 and +inf at sigma 0, and the
formulas below are written so those ends give the exact limits instead of NaN.

Usage: `solver = make_solver(name, sigmas)`, then for i in range(len(sigmas) - 1):
`x = solver.step(velocity_at(x, sigmas[i]), x, i)`. Step-size coefficients are computed in float64
from the float32 sigmas of the schedule; tensors stay in their dtype (float32 latents).
"""

from __future__ import annotations

import math
from typing import Protocol, Sequence

import torch

from ..config import SOLVERS


class Solver(Protocol):
    """A stateful multistep solver over a fixed list of sigmas (with the end sigma)."""

    sigmas: tuple[float, ...]

    def step(self, velocity: torch.Tensor, x: torch.Tensor, step_index: int) -> torch.Tensor:
        """x at sigmas[step_index] and the model velocity there -> x at sigmas[step_index + 1]."""
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
    """Shared bookkeeping: sigma list, sequential step index."""

    def __init__(self, sigmas: Sequence[float]) -> None:
        self.sigmas = tuple(float(s) for s in sigmas)
        if len(self.sigmas) < 2:
            raise ValueError("a solver needs at least two sigmas (start and end of one step)")
        self._next = 0

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

    def x0(self, velocity: torch.Tensor, x: torch.Tensor, step_index: int) -> torch.Tensor:
        """The model's clean-latent estimate x - sigma * v at step `step_index`."""
        return x - self.sigmas[step_index] * velocity


class FlowEuler(_Base):
    """First-order flow Euler: x <- x + (sigma_next - sigma) * v (also DPM++ 1st order / DDIM for flow)."""

    def step(self, velocity: torch.Tensor, x: torch.Tensor, step_index: int) -> torch.Tensor:
        """One Euler step."""
        self._advance(step_index)
        return x + (self.sigmas[step_index + 1] - self.sigmas[step_index]) * velocity


class FlowDPMPP2M(_Base):
    """Official flow DPM-Solver++ 2M (dpmsolver++, midpoint, order 2, first order at the first and last step)."""

    def __init__(self, sigmas: Sequence[float]) -> None:
        super().__init__(sigmas)
        self._prev_x0: torch.Tensor | None = None

    def step(self, velocity: torch.Tensor, x: torch.Tensor, step_index: int) -> torch.Tensor:
        """One DPM++ 2M step."""
        self._advance(step_index)
        i = step_index
        s0, t = self.sigmas[i], self.sigmas[i + 1]
        m0 = x - s0 * velocity
        # Official FlowDPMSolverMultistepScheduler.step: first order at step 0 (warm-up) and at the last step
        # (final_sigmas_type "zero" forces `lower_order_final`), second order otherwise.
        first_order = self._prev_x0 is None or i == self.num_steps - 1
        # alpha_t * (exp(-h) - 1) with exp(-h) = alpha_s0 * sigma_t / (alpha_t * sigma_s0); finite at both ends.
        ratio = t / s0
        c = (1.0 - s0) * ratio - (1.0 - t)
        out = ratio * x - c * m0
        if not first_order:
            h = _lambda(t) - _lambda(s0)
            h0 = _lambda(s0) - _lambda(self.sigmas[i - 1])
            inv_r0 = _ratio(h, h0)  # 1 / r0; 0 when the previous sigma was 1 (h0 infinite)
            if inv_r0 != 0.0:
                out = out - (0.5 * c * inv_r0) * (m0 - self._prev_x0)
        self._prev_x0 = m0
        return out


class FlowUniPC(_Base):
    """Official flow UniPC: bh2, order 2, predictor + corrector (from step 1), lower order at the last step."""

    order = 2

    def __init__(self, sigmas: Sequence[float]) -> None:
        super().__init__(sigmas)
        self._x0s: list[torch.Tensor] = []  # model x0 estimates, newest last (at most 2)
        self._last_sample: torch.Tensor | None = None  # x before the previous predictor
        self._last_order = 0  # order of the previous predictor = order of this step's corrector

    def step(self, velocity: torch.Tensor, x: torch.Tensor, step_index: int) -> torch.Tensor:
        """Correct x with the new model output (UniC), then predict the next x (UniP)."""
        self._advance(step_index)
        i = step_index
        m_new = x - self.sigmas[i] * velocity
        if self._last_sample is not None:
            x = self._corrector(m_new, x, i)
        self._x0s = (self._x0s + [m_new])[-self.order:]
        # lower_order_final: order min(2, steps left); warm-up: at most 1 + previous steps.
        order = min(self.order, self.num_steps - i, len(self._x0s))
        self._last_sample = x
        self._last_order = order
        return self._predictor(x, i, order)

    @staticmethod
    def _coefficients(h: float) -> tuple[float, float, float, float]:
        """For hh = -h (data prediction): h*phi_1 = expm1(hh), B(h) = expm1(hh) (bh2), b_1, b_2 of the UniPC system."""
        hh = -h
        h_phi_1 = math.expm1(hh)
        b_h = h_phi_1
        h_phi_k1 = _ratio(h_phi_1, hh) - 1.0
        h_phi_k2 = _ratio(h_phi_k1, hh) - 0.5
        return h_phi_1, b_h, h_phi_k1 / b_h, h_phi_k2 * 2.0 / b_h

    def _predictor(self, x: torch.Tensor, i: int, order: int) -> torch.Tensor:
        s0, t = self.sigmas[i], self.sigmas[i + 1]
        m0 = self._x0s[-1]
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
                out = out - (alpha_t * b_h * 0.5 / r1) * (self._x0s[-2] - m0)
        return out

    def _corrector(self, m_new: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        """UniC at sigma_i using the predictor's start x (at sigma_{i-1}) and the new model output."""
        order = self._last_order
        s0, t = self.sigmas[i - 1], self.sigmas[i]
        m0 = self._x0s[-1]
        lam_s0 = _lambda(s0)
        h = _lambda(t) - lam_s0
        h_phi_1, b_h, b1, b2 = self._coefficients(h)
        alpha_t = 1.0 - t
        out = (t / s0) * self._last_sample - (alpha_t * h_phi_1) * m0
        if order == 1:
            rho_prev, rho_new = 0.0, 0.5
        else:
            r1 = _ratio(_lambda(self.sigmas[i - 2]) - lam_s0, h)
            # Solve [[1, 1], [r1, 1]] @ [rho_prev, rho_new] = [b1, b2] in closed form.
            rho_prev = (b1 - b2) / (1.0 - r1) if not math.isinf(r1) else 0.0
            rho_new = b1 - rho_prev
            if rho_prev != 0.0:
                out = out - (alpha_t * b_h * rho_prev / r1) * (self._x0s[-2] - m0)
        return out - (alpha_t * b_h * rho_new) * (m_new - m0)
