"""Context windows: placement and weights, one window = the plain run, no seam at joins, determinism, prompt lists."""

from __future__ import annotations

import pytest
import torch

from wan_core.testing.tiny.dit import perturbed_dit
from wan_core.requests import ContextWindows
from wan_core.sampling.experts import ResidentExperts
from wan_core.sampling.sampler import sample_moe
from wan_core.sampling.windows import plan_windows, stream, window_starts

RUN = dict(steps=4, shift=5.0, seed=11)  # t 999, 937 high-noise; 833, 624 low-noise


@pytest.fixture(scope="module")
def experts() -> ResidentExperts:
    return ResidentExperts(perturbed_dit(1), perturbed_dit(2))


@pytest.fixture(scope="module")
def text() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(7, 64, generator=g), torch.randn(5, 64, generator=g)


def run(experts, text, **kwargs) -> torch.Tensor:
    params = {**RUN, **kwargs}
    if "noise" not in params:
        params.setdefault("shape", (1, 16, 5, 8, 8))
    return sample_moe(experts, [text[0]], [text[1]], **params)


# --- placement and weights --------------------------------------------------------------------------------
def test_default_windows_are_81_frames_with_16_overlap_in_latent_frames():
    w = ContextWindows()
    assert (w.frames, w.overlap, w.fuse, w.latent_frames, w.latent_overlap) == (81, 16, "pyramid", 21, 4)


@pytest.mark.parametrize("frames, length, overlap, starts", [
    (21, 21, 4, [0]),  # exactly one window
    (41, 21, 4, [0, 10, 20]),  # 161 px frames: 3 windows sharing 11 frames (even spacing, >= 4)
    (38, 21, 4, [0, 17]),  # 149 px frames: the regular stride 17 lands exactly on the end
    (81, 21, 4, [0, 15, 30, 45, 60]),  # 321 px frames
    (21, 7, 0, [0, 7, 14]),  # no overlap: abutting windows
])
def test_window_starts(frames, length, overlap, starts):
    got = window_starts(frames, length, overlap)
    assert got == starts
    shared = [got[k] + length - got[k + 1] for k in range(len(got) - 1)]
    assert all(s >= overlap for s in shared) and got[-1] + length == frames


@pytest.mark.parametrize("fuse", ["pyramid", "linear"])
def test_weights_are_a_partition_of_unity_and_single_cover_is_exactly_one(fuse):
    plan = plan_windows(ContextWindows(41, 16, fuse), 23)  # 11-frame windows, overlap >= 4, over 23 latent frames
    total = [0.0] * 23
    covers = [0] * 23
    for w in plan.windows:
        for i, a in enumerate(w.weights):
            total[w.start + i] += a
            covers[w.start + i] += 1
            assert a > 0
    assert max(abs(t - 1.0) for t in total) < 1e-12
    assert all(w.weights[i] == 1.0 for w in plan.windows for i in range(len(w.weights)) if covers[w.start + i] == 1)


def test_linear_weights_ramp_over_the_shared_frames():
    plan = plan_windows(ContextWindows(17, 8, "linear"), 8)  # windows 0-4 and 3-7: two shared frames
    (a, b) = plan.windows
    assert (a.start, b.start) == (0, 3)
    assert a.weights == (1.0, 1.0, 1.0, 2 / 3, 1 / 3) and b.weights == (1 / 3, 2 / 3, 1.0, 1.0, 1.0)


def test_pyramid_cross_fades_over_all_shared_frames_linear_over_the_overlap():
    # 161 px frames in 81-frame windows: windows 0-20 and 10-30 share 11 frames (even spacing), overlap setting 4.
    pyramid, linear = (plan_windows(ContextWindows(81, 16, f), 41).windows[0] for f in ("pyramid", "linear"))
    # linear: the next window ramps in over frames 10-13, an equal average 14-16, this one ramps out over 17-20
    # (frame 20 is the third window's first frame too)
    assert [round(a, 3) for a in linear.weights[10:]] == [0.833, 0.714, 0.625, 0.556, 0.5, 0.5, 0.5, 0.444, 0.375,
                                                          0.286, 0.143]
    assert [round(a, 3) for a in pyramid.weights[10:]] == [0.917, 0.833, 0.75, 0.667, 0.583, 0.5, 0.417, 0.333,
                                                           0.25, 0.167, 0.077]


def test_prompt_travel_spreads_prompts_over_consecutive_windows():
    plan = plan_windows(ContextWindows(21, 8), 26, prompts=3)  # 6-frame windows, overlap 2: 6 windows
    assert [w.prompt for w in plan.windows] == [0, 0, 1, 1, 2, 2]
    assert [w.prompt for w in plan_windows(ContextWindows(21, 8), 26, prompts=4).windows] == [0, 0, 1, 2, 2, 3]
    assert "6 context windows of 6 latent frames (21 px frames), overlap 2 (8), pyramid, 3 prompts" in plan.summary()


@pytest.mark.parametrize("fuse", ["pyramid", "linear"])
@pytest.mark.parametrize("frames, length, overlap", [(23, 41, 16), (12, 17, 12), (9, 9, 0)])
def test_stream_hands_each_frame_once_with_the_dense_blend_after_its_last_window(fuse, frames, length, overlap):
    # The dense blend sum_w a_w v_w accumulated over a whole-latent buffer in window order is what the velocity of
    # a frame must be, bit for bit; `finish` may step a frame in place, so no window may read it afterwards.
    plan = plan_windows(ContextWindows(length, overlap, fuse), frames)
    x = torch.randn(1, 2, frames, 3, 2, generator=torch.Generator().manual_seed(4))
    velocity = {w.start: torch.randn(1, 2, w.end - w.start, 3, 2, generator=torch.Generator().manual_seed(w.start))
                for w in plan.windows}
    dense = torch.zeros_like(x)
    for w in plan.windows:
        weights = torch.tensor(w.weights, dtype=torch.float32).view(1, 1, -1, 1, 1)
        w.take(dense).add_(velocity[w.start] * weights)
    events, got = [], torch.full_like(x, float("nan"))

    def run(window, xs):
        assert torch.equal(xs, window.take(x))
        events.append(("run", window.start, window.end))
        return velocity[window.start].clone()

    def finish(lo, hi, v):
        events.append(("finish", lo, hi))
        got.narrow(2, lo, hi - lo).copy_(v)

    stream(plan, x, run, finish)
    finished = [(lo, hi) for kind, lo, hi in events if kind == "finish"]
    assert [lo for lo, _ in finished] == [0] + [hi for _, hi in finished[:-1]] and finished[-1][1] == frames
    for k, (kind, lo, hi) in enumerate(events):
        if kind == "finish":
            assert all(start >= hi for later, start, _ in events[k + 1:] if later == "run")
    assert torch.equal(got, dense)
    assert len(plan.windows) > 1 or torch.equal(got, velocity[0])


@pytest.mark.parametrize("make, message", [
    (lambda: ContextWindows(17, 20), "overlap_frames \\(20\\) must be smaller than window_frames \\(17\\)"),
    (lambda: ContextWindows(81, 84), "must be smaller than window_frames"),
    (lambda: ContextWindows(80, 16), "window_frames must be 4n\\+1 pixel frames .* got 80; try 77 or 81"),
    (lambda: ContextWindows(81, 10), "overlap_frames must be a multiple of 4 .* got 10; try 8 or 12"),
    (lambda: ContextWindows(81, 16, "flat"), "fuse must be one of pyramid, linear; got 'flat'"),
    (lambda: plan_windows(ContextWindows(81, 16), 11),
     "the context windows \\(81 frames\\) are longer than the video \\(41 frames, 11 latent frames\\); use windows of at most 41"),
    (lambda: plan_windows(ContextWindows(21, 8), 26, prompts=7), "7 prompts for 6 context windows .* give at most 6 prompts"),
])
def test_bad_window_settings_are_errors_for_users(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# --- sampling ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fuse", ["pyramid", "linear"])
def test_a_video_of_exactly_one_window_is_the_plain_run_bit_for_bit(experts, text, fuse):
    plain = run(experts, text)
    windowed = run(experts, text, windows=ContextWindows(17, 8, fuse))  # 17 px frames = the 5 latent frames
    assert torch.equal(windowed, plain)


def smooth_noise(frames: int) -> torch.Tensor:
    """Unit-variance noise that turns slowly over the frames, so the single-window run changes smoothly in time and a
    seam (a jump between neighbouring frames) would stand out."""
    a, b = (torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(s)) for s in (5, 6))
    f = torch.linspace(0, 1, frames).view(1, 1, frames, 1, 1)
    return a * torch.cos(f) + b * torch.sin(f)


def frame_steps(latent: torch.Tensor) -> torch.Tensor:
    """rms change between neighbouring latent frames."""
    return (latent[:, :, 1:] - latent[:, :, :-1]).pow(2).mean(dim=(0, 1, 3, 4)).sqrt()


def test_overlapping_windows_leave_no_seam_at_joins(experts, text):
    noise = smooth_noise(21)  # 81 px frames: the single-window reference still fits this tiny model
    reference = run(experts, text, noise=noise)
    blended = run(experts, text, noise=noise, windows=ContextWindows(33, 16, "pyramid"))  # 4 windows of 9
    hard = run(experts, text, noise=noise, windows=ContextWindows(25, 0, "linear"))  # 3 abutting windows of 7
    ref_steps = frame_steps(reference)
    # Bound: neighbouring frames differ by at most 3% more or less than in the single-window run, at every frame
    # (joins included). Measured: 1.6% worst for the blended windows; abutting windows jump 42% and 45% at their joins
    # (frames 6|7 and 13|14), so the bound separates a seam from the windows' small context loss.
    blended_err = (frame_steps(blended) / ref_steps - 1).abs()
    hard_err = (frame_steps(hard) / ref_steps - 1).abs()
    print(f"frame-step deviation: blended max {blended_err.max():.3%}, abutting at joins {hard_err[6]:.1%}, {hard_err[13]:.1%}")
    assert blended_err.max() < 0.03
    assert hard_err[6] > 0.2 and hard_err[13] > 0.2
    # And the windowed video stays close to the single-window one (measured 3.9% rms at worst: context lost at the ends).
    rel = (blended - reference).pow(2).mean(dim=(0, 1, 3, 4)).sqrt() / reference.pow(2).mean().sqrt()
    print(f"windowed vs single window: {rel.max():.2%} rms at worst")
    assert rel.max() < 0.05


def test_same_seed_and_windows_give_the_same_video_and_noise_is_drawn_once(experts, text):
    windows = ContextWindows(17, 8, "pyramid")
    shape = (1, 16, 13, 8, 8)
    a = run(experts, text, shape=shape, windows=windows)
    assert torch.equal(a, run(experts, text, shape=shape, windows=windows))
    # The noise is the whole latent's, drawn from the seed: passing make_noise(shape, seed) is the same run.
    from wan_core.sampling.sampler import make_noise

    assert torch.equal(a, run(experts, text, noise=make_noise(shape, RUN["seed"]), windows=windows))
    assert not torch.equal(a, run(experts, text, shape=shape, windows=windows, seed=12))


def test_prompt_list_gives_each_window_its_prompt(experts, text):
    other = torch.randn(6, 64, generator=torch.Generator().manual_seed(9))
    shape = (1, 16, 8, 8, 8)
    windows = ContextWindows(17, 8, "linear")  # windows 0-4 and 3-7
    one = run(experts, text, shape=shape, windows=windows)
    same = sample_moe(experts, [text[0]], [text[1]], shape=shape, windows=windows, travel=[[text[0]], [text[0]]], **RUN)
    assert torch.equal(one, same)
    travel = sample_moe(experts, [text[0]], [text[1]], shape=shape, windows=windows, travel=[[text[0]], [other]], **RUN)
    assert not torch.equal(travel, one)
    with pytest.raises(ValueError, match="2 prompts need context windows"):
        sample_moe(experts, [text[0]], [text[1]], shape=shape, travel=[[text[0]], [other]], **RUN)


def test_each_expert_call_runs_on_a_window_slice(experts, text):
    seen: list[int] = []
    handles = [m.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[2]))
               for m in (experts.expert("high"), experts.expert("low"))]
    try:
        run(experts, text, shape=(1, 16, 13, 8, 8), windows=ContextWindows(17, 8), cfg_batch="on")
    finally:
        for h in handles:
            h.remove()
    assert set(seen) == {5} and len(seen) == RUN["steps"] * 4  # 4 windows per step, never the 13 frames
