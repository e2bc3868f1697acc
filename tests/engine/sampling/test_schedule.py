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
    assert s.grid == "custom" and s.from_noise and "[unipc, custom sigmas, boundary t 875]" in s.summary()
    tail = build_schedule(sigmas=[0.8, 0.5, 0.0])  # SplitSigmas' low_sigmas: starts below the top
    assert tail.steps == 2 and not tail.from_noise  # the input latent is noised to 0.8, as ComfyUI does


@pytest.mark.parametrize("kwargs, message", [
    (dict(solver="ddim"), "unknown solver"),
    (dict(steps=0), "steps must be at least 1"),
    (dict(shift=0.0), "shift must be > 0"),
    (dict(denoise=1.5), "denoise must be between 0 and 1"),
    (dict(boundary=2.0), "boundary must be between 0 and 1"),
    (dict(cfg_high=float("nan")), "cfg_high must be a finite"),
    (dict(sigmas=[0.5, 0.7, 0.0]), "strictly decreasing"),
    (dict(sigmas=[0.8, 0.5, 0.3]), "must end at 0 .* low_sigmas of SplitSigmas"),
    (dict(grid="karras"), "schedule must be one of official, unipc_grid, dpm_grid, simple, beta; got 'karras'"),
    (dict(switch_step=-1), "switch step must be >= 0"),
    (dict(sigmas=[1.5, 0.0]), "must lie in"),
    (dict(sigmas=[0.5]), "at least two values"),
])
def test_errors_for_users(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_schedule(**kwargs)


# Timesteps of each grid at shift 12, for 4, 20 and 40 steps (the unipc / dpm lists at 40 are the official ones above).
GRID_TIMESTEPS = {
    "unipc_grid": {
        4: [999, 972, 922, 799],
        20: [999, 995, 990, 985, 979, 972, 965, 956, 947, 936, 922, 907, 888, 865, 837, 799, 749, 678, 571, 386],
        40: UNIPC_40,
    },
    "dpm_grid": {
        4: [1000, 972, 923, 800],
        20: [1000, 995, 990, 985, 979, 972, 965, 957, 947, 936, 923, 907, 888, 865, 837, 800, 750, 679, 571, 387],
        40: DPMPP_40,
    },
    # ComfyUI `simple` on a flow model: every 1000/steps-th sigma of the table; where steps divides 1000 these are
    # the dpm_grid's timesteps (the table's float32 values truncate the same way at these counts).
    "simple": {
        4: [1000, 972, 923, 800],
        20: [1000, 995, 990, 985, 979, 972, 965, 957, 947, 936, 923, 907, 888, 865, 837, 800, 750, 679, 571, 387],
        40: DPMPP_40,
    },
    "beta": {
        4: [1000, 982, 923, 720],
        20: [1000, 998, 996, 993, 988, 982, 975, 966, 954, 940, 923, 900, 872, 835, 786, 720, 629, 503, 339, 145],
        40: [1000, 999, 998, 997, 996, 994, 993, 990, 988, 985, 982, 979, 975, 970, 966, 960, 954, 948, 940, 932,
             923, 912, 900, 887, 872, 855, 835, 813, 786, 755, 720, 677, 629, 571, 503, 424, 339, 242, 145, 56],
    },
}


@pytest.mark.parametrize("grid", list(GRID_TIMESTEPS))
@pytest.mark.parametrize("steps", [4, 20, 40])
def test_each_schedule_gives_its_documented_timesteps(grid: str, steps: int) -> None:
    s = build_schedule(steps, 12.0, "unipc", grid=grid)
    assert list(s.timesteps) == GRID_TIMESTEPS[grid][steps]
    assert len(s.sigmas) == steps + 1 and s.sigmas[-1] == 0.0 and s.from_noise
    assert s.grid == grid


@pytest.mark.parametrize("solver, grid", [("unipc", "unipc_grid"), ("dpm++", "dpm_grid"), ("euler", "dpm_grid")])
def test_official_schedule_is_the_solver_grid_and_the_summary_says_so(solver: str, grid: str) -> None:
    official = build_schedule(20, 12.0, solver)
    assert official == build_schedule(20, 12.0, solver, grid=grid)
    assert official.summary().endswith(f"[{solver}, boundary t 875]")
    other = "beta" if grid != "beta" else "simple"
    assert build_schedule(20, 12.0, solver, grid=other).summary().endswith(f"[{solver} on the {other}, boundary t 875]")


def test_simple_is_not_the_dpm_grid_where_steps_do_not_divide_1000() -> None:
    # 30 steps: ComfyUI's stride 33.33 picks table entries int(x * 33.33) from the top, not linspace(1, 0, 31).
    simple, dpm = build_schedule(30, 12.0, grid="simple"), build_schedule(30, 12.0, grid="dpm_grid")
    assert simple.timesteps[-5:] == (706, 649, 571, 462, 296) and dpm.timesteps[-5:] == (705, 648, 571, 461, 292)


def test_switch_at_a_step_gives_per_expert_step_counts() -> None:
    s = build_schedule(20, 12.0, switch_step=6, cfg_high=3.5, cfg_low=1.0)
    assert s.experts == ("high",) * 6 + ("low",) * 14
    assert s.guidance == (3.5,) * 6 + (1.0,) * 14
    assert s.summary() == "6 steps high-noise (t 999-972, cfg 3.5), 14 steps low-noise (t 965-386, cfg 1) [unipc, switch at step 6]"
    # The index is in the full schedule, so a refine pass cut by denoise keeps the same split.
    tail = build_schedule(20, 12.0, switch_step=6, denoise=0.75)
    assert tail.start_step == 5 and tail.experts == ("high",) + ("low",) * 14
    assert build_schedule(20, 12.0, switch_step=0).experts == ("low",) * 20
    assert build_schedule(20, 12.0, switch_step=99).experts == ("high",) * 20


@pytest.mark.parametrize("grid", ["official", "dpm_grid", "simple", "beta"])
def test_our_grid_as_float64_sigmas_is_the_built_in_schedule(grid: str) -> None:
    # What the WanMoESchedule node outputs, fed back as custom sigmas: same timesteps, solver sigmas, split, start.
    from wan_core.sampling.schedule import full_sigmas

    for steps, shift in ((4, 12.0), (37, 1.0), (111, 16.0)):  # 37 / 111 steps: float32 sigmas would truncate differently
        built = build_schedule(steps, shift, grid=grid)
        custom = build_schedule(sigmas=full_sigmas(steps, shift, "unipc", grid))
        assert (custom.timesteps, custom.sigmas, custom.experts, custom.from_noise) == \
            (built.timesteps, built.sigmas, built.experts, built.from_noise)


def test_float32_sigmas_of_the_unipc_grid_would_truncate_differently() -> None:
    # Why WanMoESchedule outputs float64: at 37 steps, shift 1, ten float32-rounded sigmas truncate to another t.
    s64 = shift_sigmas(base_grid("unipc", 37), 1.0)
    t32 = (s64.astype(np.float32).astype(np.float64) * 1000).astype(np.int64)
    assert int((t32 != (s64 * 1000).astype(np.int64)).sum()) == 10


def test_lightning_schedule_euler_4_steps_shift_5_is_the_distilled_timesteps_2_high_2_low():
    """Wan2.2-Lightning's Euler scheduler (ModelTC/Wan2.2-Lightning wan/utils/fm_solvers_euler.py): float32
    linspace(1000, 0, steps + 1), / 1000, shift, * 1000, the last dropped; fed to the DiT untruncated."""
    lightning = np.linspace(1000, 0, 5, dtype=np.float32) / np.float32(1000)
    lightning = (np.float32(5.0) * lightning / (1 + (np.float32(5.0) - 1) * lightning)) * np.float32(1000)
    schedule = build_schedule(4, 5.0, "euler", boundary=0.875, cfg_high=1.0, cfg_low=1.0)
    assert schedule.model_timesteps == tuple(float(t) for t in lightning[:-1])
    assert schedule.model_timesteps[:2] == (1000.0, 937.5) and abs(schedule.model_timesteps[2] - 833.333) < 1e-3
    assert schedule.timesteps == (1000, 937, 833, 625)  # shown truncated, as every schedule
    assert schedule.experts == ("high", "high", "low", "low") and schedule.guidance == (1.0,) * 4
    assert schedule.sigmas == tuple(float(s) for s in np.float32([1.0, 0.9375, 2.5 / 3, 0.625, 0.0]))
    assert "2 steps high-noise (t 1000-937, cfg 1), 2 steps low-noise (t 833-625, cfg 1)" in schedule.summary()


def test_unipc_and_dpm_feed_the_official_truncated_integer_timesteps():
    for solver in ("unipc", "dpm++"):
        schedule = build_schedule(40, 12.0, solver)
        assert schedule.model_timesteps == tuple(float(t) for t in schedule.timesteps)
