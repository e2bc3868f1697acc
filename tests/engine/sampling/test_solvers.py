"""Flow solvers: parity with diffusers' UniPC / DPM++ on an analytic velocity field, exactness and convergence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from wan_core.sampling.schedule import base_grid, build_schedule
from wan_core.sampling.solvers import make_solver

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def smooth_field(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A nonlinear velocity field depending on x and sigma (no closed-form solution needed)."""
    return torch.tanh(x) * (1 + sigma) + torch.sin(3 * x * sigma) - 0.3 * x


def start(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(seed))


def run(solver: str, sigmas, x: torch.Tensor, field) -> torch.Tensor:
    s = make_solver(solver, sigmas)
    for i in range(len(sigmas) - 1):
        x = s.step(field(x, sigmas[i]), x, i)
    return x


@pytest.mark.parametrize("steps, shift", [(1, 3.0), (2, 3.0), (3, 1.0), (8, 5.0), (40, 12.0)])
def test_unipc_matches_diffusers_unipc_with_official_sigmas(steps: int, shift: float) -> None:
    schedule = build_schedule(steps, shift, "unipc")
    ref = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                                  flow_shift=shift)
    # diffusers applies flow_shift to passed sigmas (set_timesteps: shift * s / (1 + (shift - 1) * s)), so pass the
    # official *unshifted* grid; it must be a numpy array (a list raises TypeError).
    ref.set_timesteps(sigmas=base_grid("unipc", steps))
    assert ref.timesteps.tolist() == list(schedule.timesteps)
    assert torch.equal(ref.sigmas, torch.tensor(schedule.sigmas, dtype=torch.float32))
    x_ref = x_ours = start()
    ours = make_solver("unipc", schedule.sigmas)
    for i, t in enumerate(ref.timesteps):
        x_ours = ours.step(smooth_field(x_ours, schedule.sigmas[i]), x_ours, i)
        x_ref = ref.step(smooth_field(x_ref, float(ref.sigmas[i])), t, x_ref, return_dict=False)[0]
    # Coefficients: ours float64, diffusers float32 scalars; measured <= 2.3e-6 at 40 steps (|x| ~ 3).
    assert (x_ours - x_ref).abs().max().item() <= 5e-6


@pytest.mark.parametrize("steps", [2, 6, 40])
def test_dpmpp_matches_diffusers_dpmsolver_on_official_grid(steps: int) -> None:
    schedule = build_schedule(steps, 12.0, "dpm++")
    ref = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=1.0,
                                      algorithm_type="dpmsolver++", solver_type="midpoint", solver_order=2,
                                      lower_order_final=True, final_sigmas_type="zero")
    ref.set_timesteps(steps)
    # diffusers' DPM has no `sigmas=` argument; install the official grid (starts at sigma 1) directly.
    ref.sigmas = torch.tensor(schedule.sigmas, dtype=torch.float32)
    ref.timesteps = torch.tensor(schedule.timesteps, dtype=torch.int64)
    ref.set_begin_index(0)
    x_ref = x_ours = start(1)
    ours = make_solver("dpm++", schedule.sigmas)
    for i, t in enumerate(ref.timesteps):
        x_ours = ours.step(smooth_field(x_ours, schedule.sigmas[i]), x_ours, i)
        x_ref = ref.step(smooth_field(x_ref, float(ref.sigmas[i])), t, x_ref, return_dict=False)[0]
    assert torch.isfinite(x_ours).all()
    assert (x_ours - x_ref).abs().max().item() <= 5e-6


@pytest.mark.parametrize("solver", ["unipc", "dpm++", "euler"])
def test_exact_when_velocity_points_at_known_x0(solver: str) -> None:
    # v = (x - x0) / sigma is the exact flow towards a single point x0: every x0 estimate is x0, and every
    # solver (all are exact for a constant x0 prediction) lands on it.
    x0 = start(5)
    schedule = build_schedule(10, 5.0, solver)
    out = run(solver, schedule.sigmas, start(6), lambda x, s: (x - x0) / s)
    assert (out - x0).abs().max().item() <= 1e-5


def gaussian_flow(mu: float, std: float):
    """Exact velocity of data N(mu, std^2) under x_s = (1 - s) x0 + s n, and the exact ODE map noise -> data."""
    def velocity(x: torch.Tensor, s: float) -> torch.Tensor:
        var = (1 - s) ** 2 * std ** 2 + s ** 2
        x0 = mu + (1 - s) * std ** 2 / var * (x - (1 - s) * mu)
        return (x - x0) / s

    def at(s: float, n: torch.Tensor) -> torch.Tensor:
        return (1 - s) * mu + math.sqrt((1 - s) ** 2 * std ** 2 + s ** 2) * n
    return velocity, at


def ode_errors(solver: str, steps_list: tuple[int, ...], mu: float = 0.7, std: float = 1.0) -> list[float]:
    """Max error vs the exact ODE endpoint for data N(mu, std^2), shift 3, float64 latents."""
    velocity, at = gaussian_flow(mu, std)
    n = start(7).double()
    errors = []
    for steps in steps_list:
        sigmas = build_schedule(steps, 3.0, solver).sigmas
        errors.append((run(solver, sigmas, at(sigmas[0], n), velocity) - at(0.0, n)).abs().max().item())
    return errors


# Measured (mu 0.7, std 1, shift 3) at 20/40/80/160 steps: unipc 2.2e-2 1.1e-2 3.2e-3 8.1e-4,
# dpm++ 2.9e-2 2.3e-2 8.7e-3 2.8e-3, euler 0.26 0.13 0.066 0.033.
@pytest.mark.parametrize("solver, order, tol_160", [("unipc", 2, 2e-3), ("dpm++", 2, 5e-3), ("euler", 1, 5e-2)])
def test_converges_to_exact_ode_solution_at_its_order(solver: str, order: int, tol_160: float) -> None:
    errors = ode_errors(solver, (20, 40, 80, 160))
    assert errors == sorted(errors, reverse=True), errors
    ratio = errors[2] / errors[3]  # halving the step size
    assert (ratio > 2.8) if order == 2 else (1.7 < ratio < 2.3), errors
    assert errors[3] <= tol_160, errors


def test_second_order_beats_euler() -> None:
    err = {solver: ode_errors(solver, (40,))[0] for solver in ("unipc", "dpm++", "euler")}
    assert err["unipc"] < err["euler"] / 5 and err["dpm++"] < err["euler"] / 5, err


@pytest.mark.parametrize("solver", ["unipc", "dpm++", "euler"])
def test_custom_sigmas_from_one_and_leftover_noise_stay_finite(solver: str) -> None:
    out = run(solver, (1.0, 0.9, 0.6, 0.3), start(9), smooth_field)
    assert torch.isfinite(out).all()
    out = run(solver, (1.0, 0.5, 0.0), start(9), smooth_field)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("solver", ["unipc", "dpm++", "euler"])
def test_frame_ranges_in_any_order_step_exactly_as_the_whole_latent(solver: str) -> None:
    # The sampler's context windows step each frame range in place once its velocity is complete: every solver is
    # elementwise, so this must be the whole-latent step bit for bit (history included), and `step` keeps x intact.
    sigmas = build_schedule(6, 5.0, solver).sigmas
    whole, ranged = make_solver(solver, sigmas), make_solver(solver, sigmas)
    x_whole = start(3).view(2, 1, 4, 3, 5).repeat(1, 2, 1, 1, 1)  # [B, C, T=4, H, W]
    x_ranged = x_whole.clone()
    for i in range(len(sigmas) - 1):
        v = smooth_field(x_whole, sigmas[i])
        before = x_whole.clone()
        x_next = whole.step(v, x_whole, i)
        assert torch.equal(x_whole, before)
        ranged.begin(i, x_ranged)
        for lo, hi in ((2, 3), (0, 2), (3, 4)):
            ranged.frames(v.narrow(2, lo, hi - lo).clone(), x_ranged, lo, hi)
        assert torch.equal(x_ranged, x_next), i
        if ranged.keeps_x0:
            assert torch.equal(ranged.estimate(), whole.x0(v, x_whole, i)), i
        x_whole = x_next
    assert ranged.keeps_x0 == (solver != "euler") and (ranged.estimate() is None) == (solver == "euler")


def test_steps_must_run_in_order() -> None:
    solver = make_solver("unipc", build_schedule(4, 3.0).sigmas)
    x = start()
    solver.step(smooth_field(x, 0.9), x, 0)
    with pytest.raises(ValueError, match="in order"):
        solver.step(smooth_field(x, 0.9), x, 2)
    with pytest.raises(ValueError, match="unknown solver"):
        make_solver("heun", (1.0, 0.0))


def test_numpy_pitfall_documented() -> None:
    # The reference pitfall: diffusers UniPC needs a numpy array for `sigmas`.
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=12.0)
    with pytest.raises(TypeError):
        sched.set_timesteps(sigmas=list(np.linspace(0.999, 0, 41)[:-1]))
