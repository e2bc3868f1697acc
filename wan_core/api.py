"""The engine's front door: requests and ComfyUI's objects in, ComfyUI's objects out, every model through the cache.

Data flows one way: files -> loaders -> cache -> engine -> this door -> nodes. Each function takes a request
(`wan_core.requests`: files + settings) and ComfyUI's own objects (CONDITIONING, LATENT, IMAGE, the core
UPSCALE_MODEL descriptor), converts them with `wan_core.interop`, and runs the engine; the cache decides
whether that means loading, reusing or moving weights. Nodes import this module and `wan_core.config` only.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, replace
from contextlib import contextmanager
from functools import lru_cache
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from . import interop
from .config import COMFY_FILES, COMPUTE_DTYPES, NEGATIVE_PROMPT, SWITCH_MODES, TILING, VAE_STRIDE, choice
from .control.preprocess import ControlFrames, preprocess
from .control.vace_latents import prepare_vace
from .dit.attention import available_attention
from .dit.loader import inspect_dit
from .dit.sizes import token_count
from .io.checkpoint import file_identity, open_checkpoint
from .memory.budget import NotEnoughMemoryError, free_bytes, gib, room, tier_of
from .memory.cache import CacheKey, FreeMemoryCallback, get_cache
from .lora import read_lora
from .requests import (ContextWindows, LoraRequest, ModelRequest, TextEncoderRequest, VAERequest, vace_module_of,
                       window_problem)
from .dit.model import DiTConfig
from .interop import comfy_step_inputs, velocity_from_denoised, velocity_of
from .parallel import plan as parallel_plan
from .parallel.experts import ParallelExperts
from .parallel.pool import release_pool
from .sampling.experts import ExpertSource
from .sampling.multi_gpu import SHARD, cached_experts, parallel_experts
from .sampling.control import EXPERT_LABELS, Control
from .sampling.sampler import check_working_memory, sample_schedule
from .sampling.schedule import Schedule, build_schedule, full_sigmas, sigmas_refusal
from .sampling.step_cache import StepCache
from .sampling.windows import WindowPlan, plan_windows
from .text.encoder import TextEncoder, encoder_identity, load_text_encoder
from .text.prompt_cache import DEFAULT_CACHE
from .upscale.loader import load_upscale_model, on_device
from .upscale.pipeline import upscale_video
from .upscale.temporal import match_color
from .vae.loader import load_vae
from .vae.preview import latent_to_rgb
from .vae.shapes import frames_problem, latent_frames, latent_shape, size_problem

__all__ = [
    "ContextWindows", "ControlFrames", "DiTConfig", "ExpertSource", "LoraRequest", "ModelRequest", "TextEncoderRequest",
    "VAERequest", "VaceConditioning", "add_loras", "available_attention", "comfy_step_inputs", "decode", "default_gpus",
    "empty_latent", "encode", "encode_prompts", "extend_latent", "extend_problem", "file_identity", "frames_problem",
    "free_device_memory", "join_continuation", "latent_to_rgb", "load_upscale_model", "plan_sampling",
    "plan_windows_for", "preprocess_control", "release_models", "sample", "sample_with", "schedule_sigmas",
    "set_free_memory_callback", "size_problem", "upscale", "vace_control", "velocity_from_denoised", "velocity_of",
    "window_problem", "windows_refusal", "sigmas_problem", "latent_frames",
]

log = logging.getLogger("wan_core.api")
SPATIAL = 8  # VAE pixels per latent pixel

StepCallback = Callable[[int, int, str, torch.Tensor], None]
ProgressCallback = Callable[[int, int], None]


class _Holder(nn.Module):
    """Lets the cache move and account an object whose weights are one nn.Module (a TextEncoder's `model`)."""

    def __init__(self, module: nn.Module, payload: object) -> None:
        super().__init__()
        self.module = module
        self.payload = payload


@lru_cache(maxsize=32)
def _file_weight_bytes(identity: tuple, itemsize: int | None) -> int:
    """Bytes a file's weights take once loaded (as stored, or at `itemsize`): its header is read once per identity."""
    return open_checkpoint(identity[0]).weight_bytes(itemsize)


def _weight_bytes(path: str | os.PathLike, dtype: torch.dtype | None) -> int:
    return _file_weight_bytes(file_identity(path), dtype.itemsize if dtype is not None else None)


@contextmanager
def _advice(advice: str) -> Iterator[None]:
    """Memory refusals inside the block carry `advice`: which of this component's settings would make it fit."""
    try:
        yield
    except NotEnoughMemoryError as exc:
        raise exc.advise(advice) from exc


_TEXT_ADVICE = "To fit: run the text encoder on the CPU (device cpu) or use umt5_xxl_fp8_e4m3fn_scaled.safetensors."
_VAE_ADVICE = "To fit: use the bf16 VAE dtype, tiling on with a smaller tile_size, or free memory (Unload models)."
_UPSCALE_ADVICE = "To fit: set a smaller tile_size or frame_batch, or free memory (Unload models)."


# --- text -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncodedPrompts:
    """CONDITIONING of the positive and negative prompts, and how many tokens each lost to the 512-token limit."""

    positive: list
    negative: list
    dropped: tuple[int, int]


_ENCODER_STORAGE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
                           "fp8": torch.float8_e4m3fn}


def encode_prompts(request: TextEncoderRequest, positive: str | list[str], negative: str, *,
                   compute_device: torch.device) -> EncodedPrompts:
    """Both prompts as core CONDITIONING; an empty negative prompt becomes the official default, as official.

    A list of positive prompts (prompt travel) gives one CONDITIONING entry per prompt, in order, as core
    ConditioningCombine would. The encoder loads and runs only for prompts not in the prompt cache; on a GPU it
    leaves it when done.
    """
    negative = negative if negative.strip() else NEGATIVE_PROMPT
    positives = positive if isinstance(positive, list) else [positive]
    result = _encode_texts(request, [*positives, negative], compute_device)
    entries = [interop.context_to_conditioning(e)[0] for e in result.embeddings]
    dropped = max(result.dropped[:-1])
    return EncodedPrompts(entries[:-1], [entries[-1]], (dropped, result.dropped[-1]))


def _encode_texts(request: TextEncoderRequest, texts: list[str], compute_device: torch.device):
    """umT5 embeddings of `texts` through the prompt cache, the encoder from the model cache when needed."""
    target = compute_device if request.device == "gpu" else torch.device("cpu")
    storage = request.storage
    key = CacheKey.for_file("text_encoder", request.path, dtype=storage)
    cache = get_cache()
    held: list[_Holder] = []

    def load_encoder() -> TextEncoder:
        def load(dev: torch.device) -> nn.Module:
            encoder = load_text_encoder(request.path, device=dev, dtype=storage)
            return _Holder(encoder.model, encoder)

        with _advice(_TEXT_ADVICE):
            holder = cache.get(key, load, device=target, lock=True,
                               size_bytes=_weight_bytes(request.path, _ENCODER_STORAGE_DTYPES.get(storage)))
        held.append(holder)
        return holder.payload

    try:
        return DEFAULT_CACHE.encode_prompts(texts, encoder_identity(request.path, storage), load_encoder)
    finally:
        if held:
            cache.unlock(key)
            if target.type != "cpu":
                cache.offload(key)


# --- latents and sampling ---------------------------------------------------------------------------------
def empty_latent(width: int, height: int, length: int, batch: int, *, device: torch.device | str) -> dict:
    """A core LATENT of zeros for a video of width x height x length (4n+1 frames), as EmptyHunyuanLatentVideo;
    NotEnoughMemoryError, before allocating, when the latent itself cannot fit."""
    for name, value in (("width", width), ("height", height), ("length", length), ("batch_size", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    problem = size_problem(width, height, length)
    if problem:
        raise ValueError(problem)
    shape = latent_shape(width, height, length, batch)
    need, available = math.prod(shape) * 4, room(device)
    if need > available:
        raise NotEnoughMemoryError(
            f"an empty latent of {width}x{height}, {length} frames, batch {batch} takes {gib(need)} on "
            f"{tier_of(device)} before anything runs, but {gib(available)} is available ({gib(free_bytes(device))} "
            "free). To fit: lower the width/height, the length or the batch_size.",
            needed=need, free=available, device=tier_of(device))
    return interop.empty_latent(shape, device)


def plan_sampling(model: ModelRequest | object, *, steps: int, shift: float, solver: str, denoise: float, cfg_high: float,
                  cfg_low: float, schedule: str = "official", sigmas: torch.Tensor | None = None,
                  switch: str = "boundary", switch_step: int = 0) -> Schedule:
    """The run's timesteps, expert per step and guidance, known before anything loads.

    model: anything with the expert switch point as `.boundary` (a ModelRequest, or the nodes' pair of ComfyUI MODELs).

    schedule: a grid of config.SCHEDULES; sigmas: a core SIGMAS tensor that replaces it (steps, shift and schedule
    then unused); switch: "boundary" (the model's boundary timestep) or "step" (the first `switch_step` steps of the
    full schedule on the high-noise expert).
    """
    choice("switch", switch, SWITCH_MODES)
    custom = interop.sigmas_from_comfy(sigmas) if sigmas is not None else None
    return build_schedule(steps, shift, solver, boundary=model.boundary, cfg_high=cfg_high, cfg_low=cfg_low,
                          denoise=denoise, sigmas=custom, grid=schedule,
                          switch_step=switch_step if switch == "step" else None)


def schedule_sigmas(steps: int, shift: float, solver: str, schedule: str = "official") -> torch.Tensor:
    """A grid as core SIGMAS (float64, final 0): what the sampler would run, for core sigma nodes to edit or split."""
    return interop.sigmas_to_comfy(full_sigmas(steps, shift, solver, schedule))


def plan_windows_for(windows: ContextWindows, latent: dict, positive: list) -> WindowPlan:
    """Where the context windows fall over this LATENT, with the positive CONDITIONING's entries as prompt list."""
    frames = interop.latent_from_comfy(latent).shape[2]
    return plan_windows(windows, frames, prompts=len(positive) if positive else 1)


def windows_refusal(windows: ContextWindows, frames: int, prompts: int = 1) -> str | None:
    """What the sampler would refuse about these windows over `frames` latent frames and `prompts` prompts, or None:
    for a check at queue time, before anything runs."""
    try:
        plan_windows(windows, frames, prompts)
    except ValueError as refused:
        return str(refused)
    return None


def sigmas_problem(sigmas: Sequence[float], source: str | None = None) -> str | None:
    """What the sampler would refuse about these sigmas, or None; `source` names the nodes making them when `sigmas`
    only stands in for their order and length (a check at queue time)."""
    problem = sigmas_refusal(np.asarray([float(s) for s in sigmas], dtype=np.float64), source)
    return None if problem is None else str(problem)


_EXPERT_PATHS = {"high": "high_noise_path", "low": "low_noise_path"}


def add_loras(model: ModelRequest, *, high: LoraRequest | None = None, low: LoraRequest | None = None) -> ModelRequest:
    """`model` with a LoRA appended to the high-noise and/or low-noise expert's stack.

    Each file is read (headers only) and checked against its expert's shapes now, so a LoRA that does not fit fails
    at its node, naming the file and its first bad key, before anything loads."""
    for lora, expert in ((high, model.high_noise_path), (low, model.low_noise_path)):
        if lora is not None:
            read_lora(lora.path, inspect_dit(expert).config)
    return replace(model, loras_high=model.loras_high + ((high,) if high else ()),
                   loras_low=model.loras_low + ((low,) if low else ()))


def _experts(model: ModelRequest, *, device: torch.device, latent: tuple[int, ...], schedule: Schedule,
             check_cancel: Callable[[], None] | None):
    """The two experts as the sampler's ExpertSource, each with its LoRA stack: on `model.gpus` ranks (parallel),
    else placed on `device` by the request's policy (auto/resident/swap/stream)."""
    loras = {name: tuple((lora.path, lora.strength) for lora in stack)
             for name, stack in (("loras_high", model.loras_high), ("loras_low", model.loras_low))}
    if model.placement == SHARD and any(loras.values()):
        raise ValueError("placement 'shard' does not apply LoRAs: choose placement auto (with gpus 2 or more every "
                         "rank holds the whole experts with their LoRAs) or remove the WanMoELoraLoader")
    settings = dict(high_path=model.high_noise_path, low_path=model.low_noise_path, weight_dtype=model.weight_dtype,
                    placement=model.placement, attention=model.attention, compute=model.compute,
                    compile=model.compile, fp8_matmul=model.fp8_matmul, **loras,
                    vace_high=vace_module_of(model, "high"), vace_low=vace_module_of(model, "low"))
    tokens, batch = token_count(inspect_dit(model.high_noise_path).config, latent), latent[0]
    if model.gpus > 1 or model.placement == SHARD:
        experts = parallel_experts(settings, gpus=model.gpus, device=device, tokens=tokens, batch=batch,
                                   schedule=schedule, check_cancel=check_cancel)
        if experts is not None:
            return experts
        settings["placement"] = "auto" if model.placement == SHARD else model.placement  # one device after all
    return cached_experts(**settings, device=device, tokens=tokens, batch=2 * batch)


def _control(model: ModelRequest, schedule: Schedule, positive: list, negative: list) -> Control | None:
    """The VACE control the conditioning carries, checked against the experts it applies to (None without one)."""
    control = Control(interop.conditioning_to_control(positive, "positive"),
                      interop.conditioning_to_control(negative, "negative"))
    if not control:
        return None
    for name, steps in control.active_steps(schedule).items():
        path = getattr(model, _EXPERT_PATHS[name])
        if steps and not inspect_dit(path, vace_module_of(model, name)).config.vace_layers:
            label = EXPERT_LABELS[name]
            raise ValueError(
                f"WanMoESampler: the conditioning carries a VACE control video (from WanVaceToVideo or "
                f"WanMoEVaceControl) for {label} steps, but the {label} expert {os.path.basename(path)} has no VACE "
                f"blocks. In the Wan2.2 MoE Model Loader choose the VACE experts ({COMFY_FILES['vace_high_fp8']} / "
                f"{COMFY_FILES['vace_low_fp8']}), or attach VACE module files (vace_module_high / vace_module_low, "
                "e.g. Wan2_2_Fun_VACE_module_A14B_HIGH_bf16.safetensors) to the plain experts.")
    log.info("%s", control.summary(schedule))
    return control


@dataclass(frozen=True)
class SampleResult:
    """The sampled core LATENT and what the run did, in words for the sampler's summary box."""

    latent: dict
    summary: str


def sample(model: ModelRequest, schedule: Schedule, *, positive: list, negative: list, latent: dict, seed: int,
           device: torch.device, callback: StepCallback | None = None, check_cancel: Callable[[], None] | None = None,
           step_cache: float = 0.0, windows: ContextWindows | None = None) -> SampleResult:
    """Run the MoE sampler from core CONDITIONING and LATENT; returns the sampled LATENT (its other keys kept).

    `step_cache`: the step-caching threshold (0 = off; see sampling/step_cache.py). windows: sample in overlapping
    temporal windows (checked before any model loads); then a positive CONDITIONING of several entries is a prompt
    list spread over them. A LATENT noise_mask keeps the input latent where it is 0 (a continued clip's frames).
    `model.gpus` > 1 runs every DiT call on that many processes (wan_core.parallel), or on one device with a
    warning when the worker group cannot start.
    VACE control in the conditioning (core WanVaceToVideo's keys, or WanMoEVaceControl's) steers the experts at the
    steps it applies to (on one GPU).
    """
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if isinstance(samples, torch.Tensor) and samples.ndim == 5:  # before anything the size of the latent is made
        call = tuple(samples.shape)  # what one expert call sees
        if windows is not None:
            call = (*call[:2], min(call[2], windows.latent_frames), *call[3:])
        check_working_memory(inspect_dit(model.high_noise_path).config, call, device)

    control = _control(model, schedule, positive, negative)
    if control and (model.gpus > 1 or model.placement == SHARD):
        raise ValueError("WanMoESampler: VACE control runs on one GPU for now (the multi-GPU forward does not carry "
                         "the control hints): set gpus to 1 and placement to auto on the Wan2.2 MoE Model Loader")

    def ours(shape: tuple[int, ...], _batch: int) -> ExpertSource:
        experts = _experts(model, device=device, latent=shape, schedule=schedule, check_cancel=check_cancel)
        log.info("sampling %s with %s", shape, experts.plan)
        return experts

    try:
        return _sample(ours, schedule, positive=positive, negative=negative, latent=latent, seed=seed, device=device,
                       callback=callback, check_cancel=check_cancel, step_cache=step_cache, windows=windows,
                       control=control)
    finally:
        log.info("%s", get_cache().status())


def sample_with(experts: ExpertSource, schedule: Schedule, *, positive: list, negative: list, latent: dict, seed: int,
                device: torch.device, callback: StepCallback | None = None,
                check_cancel: Callable[[], None] | None = None, windows: ContextWindows | None = None) -> SampleResult:
    """`sample` on another implementation's experts (the nodes' adapter around ComfyUI's own MODELs), without the
    step cache: it skips our WanDiT's block stack (embed / run_blocks / finish), which such experts do not expose."""
    if interop.conditioning_to_control(positive, "positive") or interop.conditioning_to_control(negative, "negative"):
        raise ValueError("WanMoESampler: the conditioning carries a VACE control video, but the experts come from "
                         "WanMoEModelFromComfy (core MODELs), which this sampler drives without control hints; load "
                         "the VACE experts with the Wan2.2 MoE Model Loader instead")
    return _sample(lambda _shape, _batch: experts, schedule, positive=positive, negative=negative, latent=latent,
                   seed=seed, device=device, callback=callback, check_cancel=check_cancel, step_cache=0.0,
                   windows=windows, control=None)


def _sample(make_experts: Callable[[tuple[int, ...], int], ExpertSource], schedule: Schedule, *, positive: list,
            negative: list, latent: dict, seed: int, device: torch.device, callback: StepCallback | None,
            check_cancel: Callable[[], None] | None, step_cache: float,
            windows: ContextWindows | None, control: Control | None) -> SampleResult:
    """The run of `sample` / `sample_with`; make_experts(shape of one expert call, CFG batch) gives the experts."""
    start = interop.latent_from_comfy(latent)
    cache = StepCache(step_cache, schedule.steps)
    lines = [schedule.summary()]
    shape, travel, first = tuple(start.shape), None, positive
    if windows is not None:
        lines.append(plan_windows_for(windows, latent, positive).summary())
        shape = (*shape[:2], min(shape[2], windows.latent_frames), *shape[3:])  # what one expert call sees
        prompts = interop.conditioning_to_prompts(positive, "positive")
        travel, first = (prompts if len(prompts) > 1 else None), positive[:1]
        if cache.enabled:
            log.warning("WanMoESampler: the step cache is off with context windows (it would keep a residual per "
                        "window, growing with the video)")
            lines.append("step cache: off with context windows")
    experts = make_experts(shape, 2 * start.shape[0])
    parallel = isinstance(experts, ParallelExperts)
    if parallel and step_cache > 0:  # the workers run the blocks at every step
        log.warning("WanMoE: step cache %g is not applied on several GPUs; every step runs in full", step_cache)
        cache = StepCache(0.0, schedule.steps)
        lines.append(f"step cache {step_cache:g} off: not applied with gpus > 1")
    result = sample_schedule(experts, schedule, interop.conditioning_to_contexts(first, "positive"),
                             interop.conditioning_to_contexts(negative, "negative"), latent=start, seed=seed,
                             callback=callback, check_cancel=check_cancel, device=device, step_cache=cache,
                             windows=windows, travel=travel, mask=interop.noise_mask(latent, tuple(start.shape)),
                             cfg_batch="on" if parallel else "auto", control=control)
    if cache.enabled and windows is None:
        lines.append(cache.summary(schedule.steps))
    if control:
        lines.append(control.summary(schedule))
    return SampleResult(interop.latent_to_comfy(result, latent), "\n".join(lines))


def default_gpus() -> int:
    """GPUs per run when the model loader does not say: WANMOE_GPUS, else 1 (an invalid value is reported, not fatal)."""
    try:
        return parallel_plan.default_gpus()
    except ValueError as exc:
        log.warning("%s; using 1 GPU", exc)
        return 1


# --- control ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VaceConditioning:
    """What WanMoEVaceControl outputs: both CONDITIONINGs with the control appended, the LATENT, the trim, notes."""

    positive: list
    negative: list
    latent: dict
    trim_latent: int
    notes: list[str]


def vace_control(vae: VAERequest, positive: list, negative: list, *, width: int, height: int, length: int,
                 batch: int, strength: float, ranges: dict[str, tuple[float, float]], device: torch.device,
                 out_device: torch.device, control_video: torch.Tensor | None = None,
                 control_masks: torch.Tensor | None = None, reference_image: torch.Tensor | None = None,
                 on_frame: ProgressCallback | None = None) -> VaceConditioning:
    """Core WanVaceToVideo's latent preparation with our VAE, plus per-expert step ranges (sampling.control)."""
    problem = size_problem(width, height, length)
    if problem:
        raise ValueError(f"WanMoEVaceControl: {problem}")
    with _advice(_VAE_ADVICE), _vae(vae, device) as model:
        def encode(images: torch.Tensor) -> torch.Tensor:
            latent = model.encode(interop.image_to_video(images).to(device), on_frame=on_frame, tiling="auto")
            return interop.latent_to_comfy(latent)["samples"].to("cpu", torch.float32)

        prepared = prepare_vace(encode, width=width, height=height, length=length, control_video=control_video,
                                control_masks=control_masks, reference_image=reference_image)
    full = all(r == (0.0, 1.0) for r in ranges.values())
    args = (prepared.frames, prepared.mask, float(strength), None if full else dict(ranges))
    latent = interop.empty_latent((batch, *prepared.latent_shape), out_device)
    return VaceConditioning(interop.append_vace(positive, *args), interop.append_vace(negative, *args), latent,
                            prepared.trim, prepared.notes)


def preprocess_control(images: torch.Tensor, mode: str, *, on_frame: ProgressCallback | None = None,
                       **settings) -> ControlFrames:
    """Control frames from a clip (see `control.preprocess.preprocess` for `settings`)."""
    return preprocess(images, mode, on_frame=on_frame, **settings)


# --- VAE --------------------------------------------------------------------------------------------------
def _vae(request: VAERequest, device: torch.device):
    key = CacheKey.for_file("vae", request.path, dtype=request.dtype)
    return get_cache().using(key, lambda dev: load_vae(request.path, device=dev, dtype=request.dtype),
                             size_bytes=_weight_bytes(request.path, COMPUTE_DTYPES[request.dtype]), device=device,
                             offload_after=device.type != "cpu")


def _tile_args(tiling: str, tile_px: int, overlap_px: int) -> dict:
    """The VAE's tiling arguments (latent px) from the node's (image px, 0 = automatic), checked in image px."""
    for name, value in (("tile_size", tile_px), ("tile_overlap", overlap_px)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a whole number of pixels >= 0 (0 = automatic), got {value!r}")
    if tile_px and tile_px < 2 * SPATIAL:
        raise ValueError(f"tile_size must be at least {2 * SPATIAL} px (0 = automatic), got {tile_px} px")
    if tile_px and overlap_px > tile_px // 2:
        raise ValueError(f"tile_overlap must be at most half the tile: got {overlap_px} px for a {tile_px}-px tile "
                         f"(at most {tile_px // 2} px); lower tile_overlap or raise tile_size")
    return {"tiling": choice("tiling", tiling, TILING), "tile_size": tile_px // SPATIAL if tile_px else None,
            "tile_overlap": overlap_px // SPATIAL if overlap_px else None}


def decode(request: VAERequest, latent: dict, *, device: torch.device, tiling: str = "auto", tile_px: int = 0,
           overlap_px: int = 0, on_frame: ProgressCallback | None = None,
           check_cancel: Callable[[], None] | None = None) -> torch.Tensor:
    """Core LATENT -> core IMAGE [B*F, 8h, 8w, 3] in 0..1 (tile sizes in image pixels, 0 = automatic)."""
    normalised = interop.latent_from_comfy(latent)
    tiles = _tile_args(tiling, tile_px, overlap_px)
    log.info("decoding a latent of %s on %s (tiling %s)", tuple(normalised.shape), device, tiling)
    with _advice(_VAE_ADVICE), _vae(request, device) as vae:
        video = vae.decode(normalised.to(device), on_frame=on_frame, check=check_cancel, **tiles)
    return interop.video_to_image(video)


def encode(request: VAERequest, images: torch.Tensor, *, device: torch.device, tiling: str = "auto",
           tile_px: int = 0, overlap_px: int = 0, on_frame: ProgressCallback | None = None,
           check_cancel: Callable[[], None] | None = None) -> dict:
    """Core IMAGE [F,H,W,3] in 0..1 (F = 4n+1) -> core LATENT of [1,16,n+1,H/8,W/8]."""
    problem = frames_problem(images.shape[0], "the number of frames")
    if problem:
        raise ValueError(f"WanMoEVAEEncode: {problem} (trim or pad the clip first)")
    tiles = _tile_args(tiling, tile_px, overlap_px)
    with _advice(_VAE_ADVICE), _vae(request, device) as vae:
        latent = vae.encode(interop.image_to_video(images).to(device), on_frame=on_frame, check=check_cancel, **tiles)
    return interop.latent_to_comfy(latent)


# --- continuing a clip -----------------------------------------------------------------------------------
def extend_problem(overlap: int, length: int) -> str | None:
    """Why a continuation of `length` frames from the last `overlap` frames is not possible, or None."""
    for name, value in (("overlap_frames", overlap), ("length", length)):
        problem = frames_problem(value, name)
        if problem:
            return problem
    if overlap >= length:
        return (f"overlap_frames ({overlap}) must be fewer than the new clip's length ({length}): the new clip starts "
                "with those frames and continues after them")
    return None


def extend_latent(request: VAERequest, images: torch.Tensor, *, overlap: int, length: int, device: torch.device,
                  on_frame: ProgressCallback | None = None) -> dict:
    """The start LATENT of a clip continuing `images`: its last `overlap` frames encoded as the first latent frames.

    The LATENT holds `length` frames: the encoded overlap ((overlap - 1) / 4 + 1 latent frames) then zeros, and a
    noise_mask of 0 on the encoded frames and 1 after, so the sampler keeps them (noised to each step's sigma) and
    generates the rest from them. Core samplers honour the same noise_mask.
    """
    problem = extend_problem(overlap, length)
    if problem:
        raise ValueError(f"WanMoEExtendLatent: {problem}")
    if images.shape[0] < overlap:
        raise ValueError(f"WanMoEExtendLatent: the clip has {images.shape[0]} frames, fewer than overlap_frames "
                         f"({overlap}); lower overlap_frames")
    encoded = encode(request, images[-overlap:], device=device, on_frame=on_frame)["samples"]
    b, c, kept, h, w = encoded.shape
    frames = (length - 1) // VAE_STRIDE[0] + 1
    samples = torch.zeros((b, c, frames, h, w), dtype=encoded.dtype, device=encoded.device)
    samples[:, :, :kept] = encoded
    mask = torch.ones((b, 1, frames, h, w), dtype=torch.float32, device=encoded.device)
    mask[:, :, :kept] = 0.0
    return {"samples": samples, "noise_mask": mask}


def join_continuation(previous: torch.Tensor, new: torch.Tensor, *, overlap: int, color_match: bool) -> torch.Tensor:
    """Core IMAGE of `previous` followed by `new` after its first `overlap` frames (which re-render previous's last).

    color_match: the new frames get the per-channel colour statistics that map the re-rendered overlap onto the
    original (upscale.temporal.match_color), so colours do not jump or drift at the join. (post.grade's Lab
    covariance match is for grading a whole clip to a reference; fitted on a few overlap frames it extrapolates
    poorly to new ones: measured 0.016 mean error left of a 0.021 gain/offset drift, vs 4e-8 per channel.)
    """
    if new.shape[0] <= overlap or previous.shape[0] < overlap:
        raise ValueError(f"WanMoEExtendJoin: overlap_frames ({overlap}) must be fewer than the new clip's frames "
                         f"({new.shape[0]}) and at most the previous clip's ({previous.shape[0]})")
    if new.shape[1:] != previous.shape[1:]:
        raise ValueError(f"WanMoEExtendJoin: the clips differ in size: {tuple(previous.shape[1:3])} and "
                         f"{tuple(new.shape[1:3])} (height, width); continue at the previous clip's size")
    added = new[overlap:]
    if color_match and overlap:
        added = match_color(added, new[:overlap], previous[-overlap:])
    return torch.cat([previous, added.to(previous.device, previous.dtype)])


# --- upscaling --------------------------------------------------------------------------------------------
def upscale(images: torch.Tensor, upscale_model=None, *, device: torch.device, out_device: torch.device,
            progress: ProgressCallback | None = None, check_cancel: Callable[[], None] | None = None,
            **settings) -> torch.Tensor:
    """Upscale a core IMAGE clip (see `upscale.pipeline.upscale_video` for `settings`); a model descriptor (core's
    UPSCALE_MODEL) runs as a cached copy on `device`, the descriptor itself untouched."""
    run = dict(device=device, out_device=out_device, progress=progress, check=check_cancel, **settings)
    if upscale_model is None:
        return upscale_video(images, None, **run)
    with _advice(_UPSCALE_ADVICE), on_device(upscale_model, device) as model:
        return upscale_video(images, model, **run)


# --- memory cooperation with the host ---------------------------------------------------------------------
def release_models() -> int:
    """"Unload models": every cache entry not in use, and the multi-GPU workers with the experts they hold."""
    freed = get_cache().release_all()
    release_pool()
    return freed


def free_device_memory(bytes_needed: int, device: torch.device) -> int:
    """Evict cached models from `device` until `bytes_needed` are free there (the host needs room)."""
    return get_cache().free(bytes_needed, device)


def set_free_memory_callback(fn: FreeMemoryCallback | None) -> None:
    """Register `fn(bytes, device)`, asked to free host-owned memory before our weights go onto a device."""
    get_cache().set_free_memory_callback(fn)


# ==========================================================================================================
# Around the generator (issue #20): prompt enhancement and the sensitive-term filter before encoding; frame
# moderation, interpolation and colour grading after decoding. Option tables for the nodes' combos live here too.
# ==========================================================================================================
from .post import grade as _grade  # noqa: E402
from .post import interpolate as _interpolate  # noqa: E402
from .post import moderate as _moderate  # noqa: E402
from .post.lut import read_cube  # noqa: E402
from .prompting import enhance as _enhance  # noqa: E402
from .prompting import safety as _safety  # noqa: E402
from .prompting.llm import load_causal_lm  # noqa: E402
from .prompting.template import FIELDS as TEMPLATE_FIELDS  # noqa: E402
from .prompting.template import NONE as TEMPLATE_NONE  # noqa: E402

ENHANCE_MODES = _enhance.MODES
PROMPT_LANGUAGES = _enhance.LANGUAGES
ON_SUBJECT_LOST = _enhance.ON_SUBJECT_LOST
LLM_DTYPES = ("auto", "bf16", "fp16", "fp32")
SAFETY_MODES = _safety.MODES
TERM_LISTS = ("default", "default + safety_terms folder", "safety_terms folder only")
MODERATION_ACTIONS = _moderate.ACTIONS
INTERPOLATION_METHODS = _interpolate.FLOW_METHODS
INTERPOLATION_FACTORS = _interpolate.FACTORS
FLOW_RESOLUTIONS = ("auto", *_interpolate.FLOW_SCALES)
SCENE_THRESHOLD = _interpolate.SCENE_THRESHOLD
PromptBlocked = _safety.PromptBlocked
ModerationBlocked = _moderate.ModerationBlocked
SubjectLost = _enhance.SubjectLost
EnhanceResult = _enhance.EnhanceResult

__all__ += [
    "ENHANCE_MODES", "FLOW_RESOLUTIONS", "INTERPOLATION_FACTORS", "INTERPOLATION_METHODS", "LLM_DTYPES",
    "MODERATION_ACTIONS", "ON_SUBJECT_LOST", "PROMPT_LANGUAGES", "SAFETY_MODES", "SCENE_THRESHOLD", "TEMPLATE_FIELDS",
    "TEMPLATE_NONE", "TERM_LISTS", "EnhanceResult", "ModerationBlocked", "PromptBlocked", "SubjectLost",
    "check_prompt", "enhance_prompt", "grade_frames", "interpolate_frames", "moderate_frames",
]


def _llm_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The language model's compute dtype: bf16 on a GPU and fp32 on the CPU for "auto"."""
    choice("dtype", dtype, LLM_DTYPES)
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return COMPUTE_DTYPES[dtype]


def enhance_prompt(prompt: str, *, mode: str, language: str = "auto", choices: dict[str, str] | None = None,
                   scene: str = "", skip_covered: bool = True, llm_path: str | None = None, subject: str = "",
                   on_subject_lost: str = "keep original", max_new_tokens: int = 256, temperature: float = 0.0,
                   seed: int = 0, dtype: str = "auto", device: torch.device | str = "cpu") -> EnhanceResult:
    """The prompt expanded by the template or rewritten by a local LLM folder (cached; on a GPU only for the call)."""
    choice("mode", mode, ENHANCE_MODES)
    if mode == "template":
        return _enhance.enhance_template(prompt, language, choices or {}, scene=scene, skip_covered=skip_covered)
    if not llm_path:
        raise ValueError("llm mode needs a language model folder (models/LLM/<name>, e.g. Qwen2.5-3B-Instruct); "
                         "pick one in llm_model or use template mode")
    device = torch.device(device)
    torch_dtype = _llm_dtype(dtype, device)
    key = CacheKey.for_file("llm", llm_path, dtype=str(torch_dtype))
    with get_cache().using(key, lambda dev: load_causal_lm(llm_path, device=dev, dtype=torch_dtype),
                           size_bytes=_weight_bytes(llm_path, torch_dtype), device=device,
                           offload_after=device.type != "cpu") as lm:
        return _enhance.enhance_llm(lm, prompt, language, subject=subject, on_subject_lost=on_subject_lost,
                                    max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)


def check_prompt(prompt: str, *, mode: str, lists: str = "default", user_files: list[str] = (),
                 extra_terms: str = "") -> tuple[str, str]:
    """(prompt, report) when no active term matches or mode is "warn"; PromptBlocked naming the terms otherwise.

    `lists` picks the shipped lists and/or `user_files` (the safety_terms folder's files); `extra_terms` adds
    one term per line.
    """
    choice("term lists", lists, TERM_LISTS)
    terms = _safety.TermList()
    if lists != "safety_terms folder only":
        for path in _safety.default_term_files():
            terms.add_file(path)
    if lists != "default":
        for path in user_files:
            terms.add_file(path)
    if extra_terms.strip():
        terms.add_lines(extra_terms.splitlines(), "extra_terms")
    _, report = _safety.check_prompt(prompt, terms, mode)
    return prompt, report


def moderate_frames(images: torch.Tensor, classifier_path: str, *, unsafe_labels: str, threshold: float,
                    action: str, stride: int = 1, device: torch.device | str = "cpu",
                    progress: ProgressCallback | None = None) -> tuple[torch.Tensor, str]:
    """Score a core IMAGE clip with a classifier folder (cached) and block, blur or pass it; (frames, report)."""
    choice("action", action, MODERATION_ACTIONS)
    device = torch.device(device)
    name = os.path.basename(os.path.normpath(classifier_path))
    key = CacheKey.for_file("classifier", classifier_path)
    with get_cache().using(key, lambda dev: _moderate.load_classifier(classifier_path, device=dev),
                           size_bytes=_weight_bytes(classifier_path, torch.float32), device=device,
                           offload_after=device.type != "cpu") as classifier:
        indices = classifier.label_indices(unsafe_labels.split(","), name)
        scores, scored = _moderate.score_frames(classifier, images, indices, stride=stride, progress=progress)
    report = _moderate.ModerationReport(name, [classifier.labels[i] for i in indices], threshold, action, scores,
                                        scored)
    log.info("frame moderation: %s", report.summary().replace("\n", "; "))
    return _moderate.act(images, report), report.summary()


def interpolate_frames(images: torch.Tensor, *, factor: int, method: str = "dis",
                       scene_threshold: float = SCENE_THRESHOLD, flow_resolution: str = "auto",
                       progress: ProgressCallback | None = None) -> tuple[torch.Tensor, str]:
    """A core IMAGE clip with factor-1 flow-interpolated frames between each pair; (frames, report line)."""
    frames, report = _interpolate.interpolate_frames(images, factor, method=method, scene_threshold=scene_threshold,
                                                     flow_resolution=flow_resolution, progress=progress)
    log.info("frame interpolation: %s", report.summary())
    return frames, report.summary()


def grade_frames(images: torch.Tensor, *, reference: torch.Tensor | None = None, match_strength: float = 1.0,
                 exposure: float = 0.0, contrast: float = 1.0, saturation: float = 1.0, temperature: float = 0.0,
                 tint: float = 0.0, lut_path: str | None = None, lut_strength: float = 1.0,
                 device: torch.device | str = "cpu", progress: ProgressCallback | None = None) -> torch.Tensor:
    """A core IMAGE clip graded with one transform for the whole clip (see `post.grade`)."""
    adjust = _grade.Adjustments(exposure, contrast, saturation, temperature, tint)
    lut = read_cube(lut_path) if lut_path else None
    return _grade.grade_clip(images, reference=reference, match_strength=match_strength, adjust=adjust, lut=lut,
                             lut_strength=lut_strength, device=device, progress=progress)
