"""The MoE sampling loop of Wan2.2-T2V-A14B: one run, two experts, switched per step at the boundary.

Mirrors the official loop (Wan-Video/Wan2.2 wan/text2video.py `generate`): for each truncated integer
timestep t, the high-noise expert and its guidance while t >= boundary * 1000, the low-noise expert
below; velocity = uncond + g * (cond - uncond); the solver steps on the guided velocity.

Differences that are choices, not accidents:
  * noise comes from a CPU torch.Generator (fp32 randn in the latent's shape, as ComfyUI's
    `prepare_noise`), so a seed gives the same video on any machine (official: CUDA generator);
  * cond and uncond may run as one batch of 2 (same result, fewer kernel launches);
  * guidance 1.0 skips the unconditional pass for that expert.
Latents are the normalised latents the DiT sees: [B, 16, T, H, W] float32.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import torch

from ..config import BOUNDARY, CFG_BATCH_MODES, GUIDE_HIGH, GUIDE_LOW, SHIFT, STEPS
from ..dit.sizes import activation_bytes, token_count
from .experts import ExpertSource
from ..memory.budget import fits
from .schedule import Schedule, build_schedule
from .solvers import make_solver
from .step_cache import StepCache

StepCallback = Callable[[int, int, str, torch.Tensor], None]  # (step, timestep, expert, x0 estimate)


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
               cfg_batch: str = "auto", device: torch.device | str = "cpu") -> torch.Tensor:
    """Build the schedule (see `schedule.build_schedule`) and run it; returns the final latent (fp32, CPU)."""
    schedule = build_schedule(steps, shift, solver, boundary=boundary, cfg_high=cfg_high, cfg_low=cfg_low,
                              denoise=denoise, sigmas=sigmas)
    return sample_schedule(experts, schedule, positive, negative, latent=latent, shape=shape, noise=noise, seed=seed,
                           callback=callback, check_cancel=check_cancel, cfg_batch=cfg_batch, device=device)


@torch.no_grad()
def sample_schedule(experts: ExpertSource, schedule: Schedule, positive: Sequence[torch.Tensor],
                    negative: Sequence[torch.Tensor] | None, *, latent: torch.Tensor | None = None,
                    shape: Sequence[int] | None = None, noise: torch.Tensor | None = None, seed: int = 0,
                    callback: StepCallback | None = None, check_cancel: Callable[[], None] | None = None,
                    cfg_batch: str = "auto", device: torch.device | str = "cpu",
                    step_cache: StepCache | None = None) -> torch.Tensor:
    """Run a prepared `Schedule` with the experts of `experts`; returns the final latent (fp32, CPU).

    positive / negative: text contexts [L, 4096], one per batch item or one for all (negative may be
    None when both guidance scales are 1). Start: pure `noise` when `schedule.from_noise` (denoise 1,
    the official loop; `latent` then only gives the shape), else sigma0 * noise + (1 - sigma0) * latent.
    noise: given, or `make_noise(shape, seed)`. `check_cancel()` runs between steps and before every
    transformer block; whatever it raises propagates. `experts.release()` runs however the run ends.
    `step_cache`: a StepCache deciding per step whether the experts' blocks run (its counters tell what it skipped).
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
    needs_uncond = any(g != 1.0 for g in schedule.guidance)
    cond = _contexts(positive, batch, "positive")
    uncond = _contexts(negative, batch, "negative") if needs_uncond else None

    if schedule.steps == 0:
        if latent is None:
            raise ValueError("denoise keeps no step, so there is nothing to sample without an input latent")
        return latent.detach().to("cpu", torch.float32).clone()
    if schedule.from_noise:
        x = noise.to(torch.float32)
    else:
        if latent is None:
            raise ValueError(f"denoise {schedule.denoise:g} < 1 needs an input latent to start from")
        sigma0 = schedule.sigmas[0]
        x = sigma0 * noise.to(torch.float32) + (1.0 - sigma0) * latent.detach().to("cpu", torch.float32)
    x = x.to(device)

    before_block = (lambda _index: check_cancel()) if check_cancel is not None else None
    solver = make_solver(schedule.solver, schedule.sigmas)
    batched: dict[str, bool] = {}
    used: dict[int, torch.nn.Module] = {}  # experts that ran: their kept text keys/values go at the end of the run
    try:
        for i, (t, name, guidance) in enumerate(zip(schedule.timesteps, schedule.experts, schedule.guidance)):
            if check_cancel is not None:
                check_cancel()
            model = experts.expert(name)
            used[id(model)] = model
            # The official loop feeds the truncated integer timestep (ComfyUI feeds sigma * 1000 untruncated).
            timestep = torch.full((batch,), float(t), dtype=torch.float32, device=device)
            call = model
            if step_cache is not None:
                step_cache.begin_step(i, name)
                call = partial(step_cache, model)
            if guidance == 1.0:
                velocity = call(x, timestep, cond, before_block=before_block).float()
            else:
                if name not in batched:
                    batched[name] = _use_cfg_batch(cfg_batch, model, x, device)
                velocity = _guided(call, x, timestep, cond, uncond, guidance, batched[name], before_block)
            if callback is not None:
                callback(i, t, name, solver.x0(velocity, x, i))
            x = solver.step(velocity, x, i)
    finally:
        for model in used.values():
            getattr(model, "forget_text", lambda: None)()
        experts.release()
    return x.to("cpu", torch.float32)


def _guided(model: Callable[..., torch.Tensor], x: torch.Tensor, timestep: torch.Tensor, cond: list[torch.Tensor],
            uncond: list[torch.Tensor], guidance: float, batched: bool,
            before_block: Callable[[int], None] | None) -> torch.Tensor:
    """Classifier-free guided velocity, cond and uncond as one batch of 2B or as two passes."""
    if batched:
        both = model(torch.cat([x, x]), torch.cat([timestep, timestep]), cond + uncond, before_block=before_block)
        v_cond, v_uncond = both.float().chunk(2)
    else:
        v_cond = model(x, timestep, cond, before_block=before_block).float()
        v_uncond = model(x, timestep, uncond, before_block=before_block).float()
    # Same operation order as the official loop: uncond + g * (cond - uncond).
    return v_uncond + guidance * (v_cond - v_uncond)


def cfg_batch_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Rough peak activation bytes of one forward of the latent `x` (for the batch-of-2 decision)."""
    return activation_bytes(model.config, token_count(model.config, x.shape), batch=x.shape[0])


def _use_cfg_batch(mode: str, model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> bool:
    """'on' / 'off' as forced; 'auto': batch when twice a single pass's activations fit in free memory."""
    if mode != "auto":
        return mode == "on"
    return fits(2 * cfg_batch_bytes(model, x), device)


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
