"""Schedules: official timestep lists, the 26/14 expert split, truncation, denoise and custom sigmas."""

from __future__ import annotations

import numpy as np
import pytest

from wan_core.sampling.schedule import UNIPC_SIGMA_MAX, base_grid, build_schedule, shift_sigmas

# 40 steps, shift 12 (reference §4; the UniPC list measured on the official FlowUniPCMultistepScheduler).
UNIPC_40 = [999, 997, 995, 993, 990, 988, 985, 982, 979, 976, 972, 969, 965, 961, 956, 952, 947, 941, 936, 929,
            922, 915, 907, 898, 888, 877, 865, 852, 837, 819, 799, 776, 749, 717, 678, 631, 571, 492, 386, 235]
# Official dpm++: get_sampling_sigmas(40, 12) -> int64(sigma * 1000); starts at 1000 (sigma 1), 26 steps >= 875.
DPMPP_40 = [1000, 997, 995, 993, 990, 988, 985, 982, 979, 976, 972, 969, 965, 961, 957, 952, 947, 941, 936, 929,
            923, 915, 907, 898, 888, 878, 865, 852, 837, 819, 800, 776, 750, 717, 679, 631, 571, 493, 387, 235]


def test_unipc_40_steps_shift_12_equal_official_list() -> None:
    s = build_schedule(40, 12.0, "unipc")
    assert list(s.timesteps) == UNIPC_40
    assert s.experts == ("high",) * 26 + ("low",) * 14
    assert s.guidance == (4.0,) * 26 + (3.0,) * 14
    assert s.count("high") == 26 and s.count("low") == 14
    assert len(s.sigmas) == 41 and s.sigmas[-1] == 0.0
    assert s.summary().startswith("26 steps high-noise (t 999-877, cfg 4), 14 steps low-noise (t 865-235, cfg 3)")


@pytest.mark.parametrize("solver", ["dpm++", "euler"])
def test_dpmpp_grid_40_steps_shift_12(solver: str) -> None:
    s = build_schedule(40, 12.0, solver)
    assert list(s.timesteps) == DPMPP_40
    assert s.sigmas[0] == 1.0 and s.sigmas[-1] == 0.0
    assert s.count("high") == 26 and s.count("low") == 14


def test_grids_and_truncation() -> None:
    # UniPC grid starts at float32(0.999) like the official scheduler; DPM++ at exactly 1.
    assert UNIPC_SIGMA_MAX == float(np.float32(0.999))
    assert base_grid("unipc", 4).tolist() == np.linspace(UNIPC_SIGMA_MAX, 0, 5)[:-1].tolist()
    assert base_grid("dpm++", 4).tolist() == [1.0, 0.75, 0.5, 0.25]
    # Truncation, not rounding: step 26 of the official list is sigma 0.8779.. -> 877, rounded would be 878.
    sigma = shift_sigmas(base_grid("unipc", 40), 12.0)[25]
    assert 877.5 < sigma * 1000 < 878 and build_schedule(40, 12.0).timesteps[25] == 877
    # The solver sees float32 sigmas (official `.astype(np.float32)`).
    s = build_schedule(40, 12.0)
    assert all(float(np.float32(v)) == v for v in s.sigmas)


def test_boundary_and_guidance_overrides() -> None:
    s = build_schedule(40, 12.0, boundary=0.9, cfg_high=5.0, cfg_low=1.0)
    assert all((t >= 900) == (e == "high") for t, e in zip(s.timesteps, s.experts))
    assert s.count("high") == 23  # down to t 907
    assert set(s.guidance[:23]) == {5.0} and set(s.guidance[23:]) == {1.0}
    assert build_schedule(40, 12.0, boundary=0.0).experts == ("high",) * 40
    assert build_schedule(40, 12.0, boundary=1.0).experts == ("low",) * 40  # no t reaches 1000 on the UniPC grid


def test_denoise_keeps_last_steps_of_full_schedule() -> None:
    full = build_schedule(40, 12.0)
    s = build_schedule(40, 12.0, denoise=0.3)
    assert s.steps == 12 and s.total_steps == 40 and s.start_step == 28
    assert s.timesteps == full.timesteps[28:] and s.sigmas == full.sigmas[28:]
    assert s.experts == ("low",) * 12 and not s.from_noise
    assert "12 of 40 steps" in s.summary()
    half = build_schedule(40, 12.0, denoise=0.5)  # 20 steps: 6 high (t 922-877) then 14 low
    assert half.count("high") == 6 and half.timesteps[0] == 922
    assert build_schedule(40, 12.0, denoise=1.0).from_noise
    none = build_schedule(40, 12.0, denoise=0.0)
    assert none.steps == 0 and "unchanged" in none.summary()


def test_custom_sigmas_used_as_given() -> None:
    s = build_schedule(sigmas=[1.0, 0.9, 0.875, 0.5, 0.0], shift=99.0, steps=3)
    assert s.timesteps == (1000, 900, 875, 500)
    assert s.experts == ("high", "high", "high", "low")
    assert s.sigmas == (1.0, float(np.float32(0.9)), 0.875, 0.5, 0.0)
    split = build_schedule(sigmas=[0.8, 0.5, 0.3])  # ComfyUI SplitSigmas-like: ends with leftover noise
    assert split.steps == 2 and split.sigmas[-1] == float(np.float32(0.3))


@pytest.mark.parametrize("kwargs, message", [
    (dict(solver="ddim"), "unknown solver"),
    (dict(steps=0), "steps must be at least 1"),
    (dict(shift=0.0), "shift must be > 0"),
    (dict(denoise=1.5), "denoise must be between 0 and 1"),
    (dict(boundary=2.0), "boundary must be between 0 and 1"),
    (dict(cfg_high=float("nan")), "cfg_high must be a finite"),
    (dict(sigmas=[0.5, 0.7, 0.0]), "strictly decreasing"),
    (dict(sigmas=[1.5, 0.0]), "must lie in"),
    (dict(sigmas=[0.5]), "at least two values"),
])
def test_errors_for_users(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_schedule(**kwargs)
