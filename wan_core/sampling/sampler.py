"""The MoE sampling loop of Wan2.2-T2V-A14B: one run, two experts, switched per step at the boundary.

Mirrors the official loop (Wan-Video/Wan2.2 wan/text2video.py `generate`): for each truncated integer
timestep t, the high-noise expert and its guidance while t >= boundary * 1000, the low-noise expert
below; velocity = uncond + g * (cond - uncond); the solver steps on the guided velocity.

Differences that are choices, not accidents:
  * noise comes from a CPU torch.Generator (fp32 randn in the latent's shape, as ComfyUI's
    `prepare_noise`), so a seed gives the same video on any machine (official: CUDA generator);
  * cond and uncond may run as one batch of 2 (same result, fewer kernel launches);
  * guidance 1.0 skips the unconditional pass for that expert;
  * VACE control (sampling.control) reaches each expert call only at the steps its streams apply at.
Beyond the official loop: context windows for videos longer than the model's window (windows.py: every expert
call per window, velocities blended, each frame range stepped in place once its last window ran), prompt lists
over those windows, and kept regions (masking.py: ComfyUI's noise_mask, how a clip is continued from its last
frames).
Latents are the normalised latents the DiT sees: [B, 16, T, H, W] float32.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Iterable, Sequence

import torch

from ..config import BOUNDARY, CFG_BATCH_MODES, GUIDE_HIGH, GUIDE_LOW, SHIFT, STEPS
from ..dit.sizes import activation_bytes, token_count
from ..memory.budget import NotEnoughMemoryError, fits, free_bytes, gib, room, tier_of
from ..memory.pace import pacing
from ..requests import ContextWindows
from .control import BoundControl, Control
from .experts import ExpertSource
from .masking import KeptRegion
from .schedule import Schedule, build_schedule
from .solvers import Solver, make_solver
from .step_cache import StepCache
from .windows import FrameRange, Window, WindowPlan, plan_windows, stream

# (step, timestep, expert, x0 estimate); the estimate may be the solver's own history: read it during the call
StepCallback = Callable[[int, int, str, torch.Tensor], None]


def make_noise(shape: Sequence[int], seed: int) -> torch.Tensor:
    """Initial noise of ComfyUI's samplers: CPU generator seeded with `seed`, fp32 randn in `shape`."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32, device="cpu")


def sample_moe(experts: ExpertSource, positive: Sequence[torch.Tensor], negative: Sequence[torch.Tensor] | None, *,
               latent: torch.Tensor | None = None, shape: Sequence[int] | None = None,
               noise: torch.Tensor | None = None, seed: int = 0, steps: int = STEPS, shift: float = SHIFT,
               solver: str = "unipc", cfg_high: float = GUIDE_HIGH, cfg_low: float = GUIDE_LOW,
               boundary: float = BOUNDARY, denoise: float = 1.0, sigmas: Sequence[float] | None = None,
               callback: StepCallback | None = None, check_cancel: Callable[[], None] | None = None,
               cfg_batch: str = "auto", device: torch.device | str = "cpu", grid: str = "official",
               switch_step: int | None = None, **run) -> torch.Tensor:
    """Build the schedule (see `schedule.build_schedule`) and run it; returns the final latent (fp32, CPU).

    `run`: sample_schedule's windows / travel / mask.
    """
    schedule = build_schedule(steps, shift, solver, boundary=boundary, cfg_high=cfg_high, cfg_low=cfg_low,
                              denoise=denoise, sigmas=sigmas, grid=grid, switch_step=switch_step)
    return sample_schedule(experts, schedule, positive, negative, latent=latent, shape=shape, noise=noise, seed=seed,
                           callback=callback, check_cancel=check_cancel, cfg_batch=cfg_batch, device=device, **run)


@torch.no_grad()
def sample_schedule(experts: ExpertSource, schedule: Schedule, positive: Sequence[torch.Tensor],
                    negative: Sequence[torch.Tensor] | None, *, latent: torch.Tensor | None = None,
                    shape: Sequence[int] | None = None, noise: torch.Tensor | None = None, seed: int = 0,
                    callback: StepCallback | None = None, check_cancel: Callable[[], None] | None = None,
                    cfg_batch: str = "auto", device: torch.device | str = "cpu",
                    step_cache: StepCache | None = None, windows: ContextWindows | None = None,
                    travel: Sequence[Sequence[torch.Tensor]] | None = None,
                    mask: torch.Tensor | None = None, control: Control | None = None) -> torch.Tensor:
    """Run a prepared `Schedule` with the experts of `experts`; returns the final latent (fp32, CPU).

    positive / negative: text contexts [L, 4096], one per batch item or one for all (negative may be
    None when both guidance scales are 1). Start: pure `noise` when `schedule.from_noise` (denoise 1,
    the official loop; `latent` then only gives the shape), else sigma0 * noise + (1 - sigma0) * latent.
    noise: given, or `make_noise(shape, seed)`, always for the whole latent. `check_cancel()` runs between steps,
    windows, before every transformer block and between the chunks of long calls (memory.pace); whatever it raises
    propagates. `experts.release()` runs however the run ends. `step_cache`: a StepCache deciding per step whether
    the experts' blocks run (its counters tell what it skipped; not used with windows, see `_denoiser`). windows: sample in overlapping temporal windows
    (sampling/windows.py); travel: a prompt list (each like `positive`) scheduled over those windows instead of
    `positive`. mask: keep `latent` where it is 0 (sampling/masking.py). control: VACE streams of the positive /
    negative conditioning (checked against the latent's shape; not with windows).
    """
    if cfg_batch not in CFG_BATCH_MODES:
        raise ValueError(f"cfg_batch must be one of {CFG_BATCH_MODES}, got '{cfg_batch}'")
    device = torch.device(device)
    shape = _latent_shape(latent, shape, noise)
    if noise is None:
        noise = make_noise(shape, seed)
    elif tuple(noise.shape) != shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)} but the latent is {shape}")
    batch = shape[0]
    prompts = [_contexts(p, batch, "positive") for p in (travel if travel else [positive])]
    uncond = _contexts(negative, batch, "negative") if any(g != 1.0 for g in schedule.guidance) else None
    plan = plan_windows(windows, shape[2], len(prompts)) if windows is not None else None
    if plan is None and len(prompts) > 1:
        raise ValueError(f"{len(prompts)} prompts need context windows to be spread over; connect context windows, "
                         "or give one prompt")
    if mask is not None and latent is None:
        raise ValueError("a noise mask keeps parts of the input latent, so it needs an input latent")
    bound = _bind_control(control, plan, schedule, shape, device)

    if schedule.steps == 0:
        if latent is None:
            raise ValueError("denoise keeps no step, so there is nothing to sample without an input latent")
        return latent.detach().to("cpu", torch.float32).clone()
    x = _start(schedule, noise, latent, device)
    kept = KeptRegion(mask, latent, noise, device) if mask is not None else None
    noise = None  # x (or `kept`) holds what is still needed: one latent-sized buffer fewer for the whole run
    velocity_at = _denoiser(prompts, uncond, plan, cfg_batch, device, check_cancel, step_cache)
    solver = make_solver(schedule.solver, schedule.sigmas)
    used: dict[int, torch.nn.Module] = {}  # experts that ran: their kept text keys/values go at the end of the run
    previous: torch.nn.Module | None = None
    try:
        with pacing(check=check_cancel):  # attention and other long calls check it between chunks
            for i, (t, name, guidance) in enumerate(zip(schedule.timesteps, schedule.experts, schedule.guidance)):
                if check_cancel is not None:
                    check_cancel()
                if kept is not None:
                    x.copy_(kept.noised(x, schedule.sigmas[i]))
                model = experts.expert(name)
                if used and model is not previous:  # the switch: the last expert's kept text keys/values go now
                    getattr(previous, "forget_text", lambda: None)()
                used[id(model)], previous = model, model
                if step_cache is not None and plan is None:
                    step_cache.begin_step(i, name)
                # The official loop feeds the truncated integer timestep; euler feeds sigma * 1000 (see schedule).
                timestep = torch.full((batch,), schedule.model_timestep(i), dtype=torch.float32, device=device)
                preview = torch.empty_like(x) if callback is not None and not solver.keeps_x0 else None  # _finish_frames
                solver.begin(i, x)
                velocity_at(model, name, x, timestep, guidance, lambda which, i=i: _vace(bound, i, which),
                            partial(_finish_frames, solver, x, i, schedule.sigmas[i], kept, preview))
                if callback is not None:
                    callback(i, t, name, preview if preview is not None else solver.estimate())
                del preview
            if kept is not None:
                x = kept.final(x)
    finally:
        _end_run(experts, used.values(), step_cache)
    return x.to("cpu", torch.float32)


def _end_run(experts: ExpertSource, used: Iterable[torch.nn.Module], step_cache: StepCache | None) -> None:
    """However the run ended: the experts' kept text keys/values and the step cache's residuals go, and the
    experts are released."""
    for model in used:
        getattr(model, "forget_text", lambda: None)()
    if step_cache is not None:
        step_cache.end_run()
    experts.release()


def _finish_frames(solver: Solver, x: torch.Tensor, i: int, sigma: float, kept: KeptRegion | None,
                   preview: torch.Tensor | None, lo: int, hi: int, velocity: torch.Tensor) -> None:
    """Frames [lo, hi) of step i have their velocity: step them in place (x's other frames stay as they are).

    `preview`: the sampler's buffer for the step's x0 estimate when the solver keeps none (Euler); UniPC and DPM++
    write exactly x - sigma * v to their history, which the callback then gets."""
    if kept is not None:
        velocity = kept.velocity(velocity, x.narrow(2, lo, hi - lo), sigma, lo, hi)
    if preview is not None:
        preview.narrow(2, lo, hi - lo).copy_(solver.x0(velocity, x.narrow(2, lo, hi - lo), i))
    solver.frames(velocity, x, lo, hi)


def _bind_control(control: Control | None, plan: WindowPlan | None, schedule: Schedule, shape: tuple[int, ...],
                  device: torch.device | str) -> BoundControl | None:
    """The run's VACE control checked against the latent and bound to its steps (None without one)."""
    if not control:
        return None
    if plan is not None:
        raise ValueError("a VACE control video with context windows is not supported yet: sample the controlled "
                         "video without context windows (at most 81 frames), or disconnect the control")
    control.check(shape)
    return control.bind(schedule, shape[0], device)


def _start(schedule: Schedule, noise: torch.Tensor, latent: torch.Tensor | None,
           device: torch.device) -> torch.Tensor:
    """The first x, the sampler's own tensor (it is stepped in place): pure noise (the official start), or the input
    latent noised to the first sigma."""
    if schedule.from_noise:
        return noise.to(device, torch.float32, copy=True)
    if latent is None:
        raise ValueError(f"denoise {schedule.denoise:g} < 1 (or sigmas starting below the top) needs an input "
                         "latent to start from")
    sigma0 = schedule.sigmas[0]
    return (sigma0 * noise.to(torch.float32) + (1.0 - sigma0) * latent.detach().to("cpu", torch.float32)).to(device)


Denoiser = Callable[[torch.nn.Module, str, torch.Tensor, torch.Tensor, float, Callable[[str], dict], FrameRange], None]


def _denoiser(prompts: list[list[torch.Tensor]], uncond: list[torch.Tensor] | None, plan: WindowPlan | None,
              cfg_batch: str, device: torch.device, check_cancel: Callable[[], None] | None,
              step_cache: StepCache | None) -> Denoiser:
    """(expert, its name, x, timestep, guidance, vace, finish): the guided velocity of the whole latent handed to
    `finish(lo, hi, v)` frame range by frame range (once, all frames, without `plan`; per window, streamed, with it);
    vace(which) gives the `control` argument of the "cond", "uncond" or "both" call.

    The step cache runs only without windows: it keeps a residual per pass, which with windows would be one per
    window and grow with the video (the run is then as without it).
    """
    before_block = (lambda _index: check_cancel()) if check_cancel is not None else None
    batched: dict[str, bool] = {}
    cached = step_cache is not None and plan is None

    def velocity_at(model: torch.nn.Module, name: str, x: torch.Tensor, timestep: torch.Tensor,
                    guidance: float, vace: Callable[[str], dict], finish: FrameRange) -> None:
        call = partial(step_cache, model) if cached else model

        def run(window: Window | None, xs: torch.Tensor) -> torch.Tensor:
            cond = prompts[window.prompt if window is not None else 0]
            if guidance == 1.0:
                return call(xs, timestep, cond, before_block=before_block, **vace("cond")).float()
            if name not in batched:  # decided on the first call's (window-sized) latent
                batched[name] = _use_cfg_batch(cfg_batch, model, xs, device)
            return _guided(call, xs, timestep, cond, uncond, guidance, batched[name], before_block, vace)

        if plan is None:
            finish(0, x.shape[2], run(None, x))
        else:
            stream(plan, x, run, finish, check_cancel)

    return velocity_at


def _vace(bound: BoundControl | None, step: int, which: str) -> dict:
    """The `control` argument of one expert call ({} when no VACE stream applies: the plain call)."""
    vace = bound.forward_input(step, which) if bound is not None else None
    return {"control": vace} if vace is not None else {}


def _guided(model: Callable[..., torch.Tensor], x: torch.Tensor, timestep: torch.Tensor, cond: list[torch.Tensor],
            uncond: list[torch.Tensor], guidance: float, batched: bool,
            before_block: Callable[[int], None] | None, vace: Callable[[str], dict] = lambda _which: {}) -> torch.Tensor:
    """Classifier-free guided velocity, cond and uncond as one batch of 2B or as two passes."""
    if batched:
        both = model(torch.cat([x, x]), torch.cat([timestep, timestep]), cond + uncond, before_block=before_block,
                     **vace("both"))
        v_cond, v_uncond = both.float().chunk(2)
    else:
        v_cond = model(x, timestep, cond, before_block=before_block, **vace("cond")).float()
        v_uncond = model(x, timestep, uncond, before_block=before_block, **vace("uncond")).float()
    # Same operation order as the official loop: uncond + g * (cond - uncond).
    return v_uncond + guidance * (v_cond - v_uncond)


def cfg_batch_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Rough peak activation bytes of one forward of the latent `x` (for the batch-of-2 decision)."""
    return activation_bytes(model.config, token_count(model.config, x.shape), batch=x.shape[0])


def _use_cfg_batch(mode: str, model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> bool:
    """'on' / 'off' as forced; 'auto': on an accelerator, batch when twice a single pass's activations fit in free
    memory; on the CPU never: there the two passes' matmuls are already large enough that a batch of 2 runs no
    faster (measured 9.97 s batched, 9.90 s apart, a 1536-wide 12-step run) while it holds twice the activations."""
    if mode != "auto":
        return mode == "on"
    return torch.device(device).type != "cpu" and fits(2 * cfg_batch_bytes(model, x), device)


def working_bytes(config: object, shape: Sequence[int]) -> int:
    """Least working memory of a run on a latent `shape` besides the weights: the latent's copies (noise, x, the
    velocities, the solver's history, the preview estimate) and one forward's activations and RoPE rotations."""
    latent = math.prod(shape) * 4
    tokens = token_count(config, shape)
    rope = tokens * (config.head_dim // 2) * 16  # complex128
    return 8 * latent + activation_bytes(config, tokens, int(shape[0])) + rope


def check_working_memory(config: object, shape: Sequence[int], device: torch.device | str) -> None:
    """Refuse, before anything is allocated, a latent whose sampling cannot fit on `device` even without weights."""
    need, available = working_bytes(config, shape), room(device)
    if need > available:
        b, _, t, h, w = shape
        raise NotEnoughMemoryError(
            f"sampling a latent of {list(shape)} ({w * 8}x{h * 8} pixels, {1 + 4 * (t - 1)} frames, batch {b}) needs "
            f"about {gib(need)} of working memory on {tier_of(device)} besides the model weights, but {gib(available)} "
            f"is available ({gib(free_bytes(device))} free). To fit: lower the width/height, the length or the "
            "batch_size of the empty latent.", needed=need, free=available, device=tier_of(device))


def _latent_shape(latent: torch.Tensor | None, shape: Sequence[int] | None,
                  noise: torch.Tensor | None) -> tuple[int, ...]:
    """The [B, 16, T, H, W] shape of the run, from whichever of latent / shape / noise is given (they must agree)."""
    shapes = {tuple(int(s) for s in v) for v in (latent.shape if latent is not None else None, shape,
                                                  noise.shape if noise is not None else None) if v is not None}
    if not shapes:
        raise ValueError("give a latent, a shape or the noise so the sampler knows the latent size")
    if len(shapes) > 1:
        raise ValueError(f"latent, shape and noise disagree: {sorted(shapes)}")
    result = shapes.pop()
    if len(result) != 5:
        raise ValueError(f"latent shape {result} is not a video latent [batch, channels, frames, height, width]")
    return result


def _contexts(contexts: Sequence[torch.Tensor] | None, batch: int, label: str) -> list[torch.Tensor]:
    """One [L, D] context per batch item (a single one is shared by the whole batch)."""
    if contexts is None or len(contexts) == 0:
        raise ValueError(f"the {label} text conditioning is missing (needed whenever guidance is not 1)")
    items = [c[0] if c.dim() == 3 and c.shape[0] == 1 else c for c in contexts]
    for item in items:
        if item.dim() != 2:
            raise ValueError(f"each {label} text context must be [tokens, dim]; got shape {tuple(item.shape)}")
    if len(items) == 1:
        return items * batch
    if len(items) != batch:
        raise ValueError(f"{len(items)} {label} text contexts for a batch of {batch} latents; give one or {batch}")
    return items
