"""ComfyUI's tensor conventions, owned in one place (pure torch: ComfyUI itself is never imported here).

  IMAGE         [frames, H, W, 3] float in 0..1            <->  video [B, 3, F, H, W] in [-1, 1]
  LATENT        {"samples": raw Wan2.1 latent [B, 16, T, h, w], ...}  <->  the normalised latent the DiT sees
  CONDITIONING  [[context [B, tokens, 4096], {extras}], ...]  <->  one [tokens, 4096] text context per item
                (several entries, as core ConditioningCombine makes: a prompt list for context windows)
  SIGMAS        1-D float tensor, n+1 sigmas ending at 0      <->  the float values (float64 out: exact timesteps)
  noise_mask    LATENT["noise_mask"], 1 = denoise, 0 = keep   <->  a mask in the latent's shape (core reshape_mask)
  MODEL step    apply_model(x, sigma = t / 1000, c_crossattn=[B, 512, 4096]) with the DiT given the integer t
                VACE extras (core WanVaceToVideo): lists vace_frames [B, 32, T, h, w] raw latents (inactive then
                reactive), vace_mask [1, 64, T, h, w], vace_strength; ours: wanmoe_vace_ranges  <->  VaceStreams

The front door (`wan_core.api`) does every conversion through these functions; the nodes pass ComfyUI's
objects through untouched.
"""

from __future__ import annotations

import logging

import torch

from dataclasses import dataclass
from typing import Sequence

from .config import LATENT_CHANNELS, TEXT_LEN
from .dit.model import pad_text_contexts
from .sampling.control import VaceStream
from .memory.budget import zeros_on_demand
from .vae.latent_format import denormalize, normalize

log = logging.getLogger("ComfyUI-WanMoE")

# Keys core conditioning nodes add that change how a prompt applies (area, mask, timestep range, hooks); our
# sampler reads only the text tensor, so they are reported instead of silently doing nothing.
UNHONOURED_KEYS = ("area", "mask", "strength", "start_percent", "end_percent", "hooks", "set_area_to_bounds")
VACE_KEYS = ("vace_frames", "vace_mask", "vace_strength")  # core WanVaceToVideo's, appended as lists
VACE_RANGES = "wanmoe_vace_ranges"  # ours: per stream None or {expert: (start, end)} (WanMoEVaceControl)
VACE_MASK_CHANNELS = 64


# --- IMAGE ------------------------------------------------------------------------------------------------
def video_to_image(video: torch.Tensor, *, inplace: bool = True) -> torch.Tensor:
    """Video [B,3,F,H,W] in [-1,1] -> ComfyUI IMAGE [B*F,H,W,3] in 0..1.

    With `inplace` (default) and a video from `WanVAE.decode` (channels-last storage, fp32) this rescales in
    place and returns a view: no copy of the clip, and `video` is overwritten. Otherwise one copy is made.
    """
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"expected a video [B, 3, F, H, W], got shape {tuple(video.shape)}")
    b, _, f, h, w = video.shape
    x = video.permute(0, 2, 3, 4, 1)
    if not (inplace and x.is_contiguous() and x.dtype == torch.float32):
        x = torch.empty((b, f, h, w, 3), dtype=torch.float32, device=video.device).copy_(x)
    return x.add_(1.0).mul_(0.5).clamp_(0.0, 1.0).view(b * f, h, w, 3)


def image_to_video(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [F,H,W,3] in 0..1 -> video [1,3,F,H,W] in [-1,1] (one copy, channels-last storage)."""
    if images.ndim != 4 or images.shape[-1] < 3:
        raise ValueError(f"expected a ComfyUI IMAGE [frames, H, W, 3], got shape {tuple(images.shape)}")
    rgb = images[..., :3]  # drop an alpha channel if present
    return (rgb.float() * 2.0 - 1.0).permute(3, 0, 1, 2).unsqueeze(0)


# --- LATENT -----------------------------------------------------------------------------------------------
def latent_from_comfy(latent: dict) -> torch.Tensor:
    """The normalised latent [B,16,T,h,w] of a core LATENT dict (raw Wan2.1 latents, as core's video nodes use)."""
    samples = latent["samples"]
    if samples.ndim != 5 or samples.shape[1] != LATENT_CHANNELS:
        raise ValueError(f"the latent has shape {tuple(samples.shape)}; expected a Wan2.1 video latent "
                         "[batch, 16, frames, height/8, width/8] (Wan2.2 Empty Video Latent or a Wan VAE encode)")
    return normalize(samples)


def latent_to_comfy(normalised: torch.Tensor, like: dict | None = None) -> dict:
    """A core LATENT dict of a normalised latent; with `like`, its other keys are kept (but not its noise mask)."""
    out = dict(like) if like is not None else {}
    device = like["samples"].device if like is not None else normalised.device
    out["samples"] = denormalize(normalised).to(device)
    out.pop("noise_mask", None)
    return out


def empty_latent(shape: tuple[int, ...], device: torch.device | str) -> dict:
    """A core LATENT dict of zeros in `shape` ([B, 16, T, h, w], what EmptyHunyuanLatentVideo makes)."""
    return {"samples": zeros_on_demand(shape, device)}


# --- CONDITIONING -----------------------------------------------------------------------------------------
def context_to_conditioning(embedding: torch.Tensor, text_len: int = TEXT_LEN) -> list:
    """Core's CONDITIONING for umT5: [[context [1, 512, 4096] with zeroed padding, {"pooled_output": None}]]."""
    return [[comfy_context(embedding, text_len), {"pooled_output": None}]]


def comfy_context(embedding: torch.Tensor, text_len: int = TEXT_LEN) -> torch.Tensor:
    """[L, dim] -> [1, max(text_len, L), dim] float32 zero-padded: the tensor core CLIPTextEncode puts in CONDITIONING."""
    length, dim = embedding.shape
    out = torch.zeros(1, max(text_len, length), dim, dtype=torch.float32)
    out[0, :length] = embedding.to("cpu", torch.float32)
    return out


def conditioning_to_prompts(conditioning: list, label: str) -> list[list[torch.Tensor]]:
    """Every entry of a CONDITIONING as its per-item contexts: the prompt list of context windows (prompt travel)."""
    if not conditioning:
        raise ValueError(f"the {label} conditioning is empty; connect a Wan2.2 Text Encode or CLIPTextEncode (type wan)")
    return [conditioning_to_contexts([entry], f"{label} (prompt {i + 1})" if len(conditioning) > 1 else label)
            for i, entry in enumerate(conditioning)]


def conditioning_to_contexts(conditioning: list, label: str) -> list[torch.Tensor]:
    """The text context of each batch item from a CONDITIONING ([[cond [B, L, 4096], {...}], ...]).

    The Wan2.2 DiT reads TEXT_LEN (512) tokens. Core CLIPTextEncode does not truncate long prompts and
    ConditioningConcat joins two 512-token contexts, so longer contexts are cut to 512 tokens: exact when the
    rows beyond are zero padding, otherwise those tokens are dropped with a warning (the official code truncates
    the prompt to 512 tokens too).
    """
    if not conditioning:
        raise ValueError(f"the {label} conditioning is empty; connect a Wan2.2 Text Encode or CLIPTextEncode (type wan)")
    if len(conditioning) > 1:
        log.warning("WanMoESampler: the %s conditioning has %d entries; only the first is used (combine prompts "
                    "in one text instead)", label, len(conditioning))
    cond, extra = conditioning[0][0], conditioning[0][1] if len(conditioning[0]) > 1 else {}
    if cond.ndim != 3:
        raise ValueError(f"the {label} conditioning has shape {tuple(cond.shape)}; expected [batch, tokens, 4096] "
                         "from umT5-XXL (a Wan text encoder)")
    ignored = [k for k in UNHONOURED_KEYS if isinstance(extra, dict) and extra.get(k) is not None]
    if ignored:
        log.warning("WanMoESampler: the %s conditioning sets %s; this sampler applies the prompt to the whole video "
                    "at every step and ignores them", label, ", ".join(ignored))
    if cond.shape[1] > TEXT_LEN:
        dropped = int((cond[:, TEXT_LEN:] != 0).any(dim=-1).sum(dim=-1).max())
        if dropped:
            log.warning("WanMoESampler: the %s conditioning has %d tokens; Wan2.2 reads %d, so %d non-padding token(s) "
                        "after token %d are dropped (a prompt longer than 512 umT5 tokens, or ConditioningConcat)",
                        label, cond.shape[1], TEXT_LEN, dropped, TEXT_LEN)
        cond = cond[:, :TEXT_LEN]
    return list(cond.unbind(0))


# --- SIGMAS -----------------------------------------------------------------------------------------------
def sigmas_from_comfy(sigmas: torch.Tensor) -> list[float]:
    """The values of a core SIGMAS tensor (float32 from core schedulers, float64 from WanMoESchedule), exactly."""
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1:
        shape = tuple(sigmas.shape) if isinstance(sigmas, torch.Tensor) else type(sigmas).__name__
        raise ValueError(f"sigmas must be a 1-D SIGMAS tensor (from BasicScheduler, SplitSigmas, Wan2.2 MoE "
                         f"Schedule ...); got {shape}")
    return [float(v) for v in sigmas.detach().to("cpu", torch.float64)]


def sigmas_to_comfy(values: list[float]) -> torch.Tensor:
    """A core SIGMAS tensor in float64, so the timesteps truncated from it are the official ones exactly."""
    return torch.tensor(values, dtype=torch.float64)


# --- noise_mask -------------------------------------------------------------------------------------------
def noise_mask(latent: dict, shape: tuple[int, ...]) -> torch.Tensor | None:
    """LATENT["noise_mask"] resized to a [B, C, T, h, w] latent as core comfy.utils.reshape_mask does, or None.

    Core SetLatentNoiseMask stores [N, 1, H, W] pixel masks (read as N frames); Wan2.2 Extend Latent stores one in
    the latent's own grid. Trilinear resizing, channels and batch repeated.
    """
    mask = latent.get("noise_mask")
    if mask is None:
        return None
    mask = mask.detach().to("cpu", torch.float32)
    if mask.ndim < 5:
        mask = mask.reshape((1, 1, -1, mask.shape[-2], mask.shape[-1]))
    mask = torch.nn.functional.interpolate(mask, size=shape[2:], mode="trilinear")
    if mask.shape[1] < shape[1]:
        mask = mask.repeat((1, shape[1], 1, 1, 1))[:, :shape[1]]
    if mask.shape[0] != shape[0]:  # core repeat_to_batch_size: repeat up, or cut down, to the batch
        mask = mask.repeat((-(-shape[0] // mask.shape[0]), 1, 1, 1, 1))[:shape[0]]
    return mask
# --- MODEL: one step of our sampler on a ComfyUI Wan diffusion model ----------------------------------------
# ComfyUI's flow models take `apply_model(x, sigma, c_crossattn=context)` with sigma = t / 1000, feed their DiT
# `sigma * 1000` as the timestep and return the denoised x - sigma * v. The official loop (and our sampler) feeds
# the DiT the truncated integer timestep t and needs the raw velocity v, and zero-pads every prompt to 512 tokens
# before the text embedding. The node adapter (nodes/comfy_models.py) gives the DiT `timestep` in place of
# ComfyUI's sigma * 1000 inside the model call and keeps the DiT's own output, so nothing is rescaled and back.
FLOW_TIMESTEPS = 1000.0  # ComfyUI's ModelSamplingDiscreteFlow multiplier: DiT timestep = sigma * 1000


@dataclass(frozen=True)
class ComfyStepInputs:
    """Tensors of one ComfyUI model call, on the model's device."""

    x: torch.Tensor  # [B, 16, F, H, W] float32 (ComfyUI casts it to the model's dtype)
    sigma: torch.Tensor  # [B] t / 1000: apply_model's argument (and transformer_options["sigmas"])
    timestep: torch.Tensor  # [B] float32 integer-valued t: what the DiT is given instead of sigma * 1000
    context: torch.Tensor  # [B, text_len, text_dim] float32, each prompt zero-padded


def comfy_step_inputs(x: torch.Tensor, timestep: torch.Tensor | float, contexts: torch.Tensor | Sequence[torch.Tensor],
                      *, text_len: int, text_dim: int, device: torch.device | str) -> ComfyStepInputs:
    """The call's tensors for latent `x`, the sampler's timestep(s) and one text context per batch item."""
    batch = x.shape[0]
    t = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1).expand(batch).to(device)
    context = pad_text_contexts(list(contexts), batch, text_len, text_dim, device)
    return ComfyStepInputs(x=x.to(device=device, dtype=torch.float32), sigma=t / FLOW_TIMESTEPS, timestep=t,
                           context=context)


def velocity_of(output: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The DiT's output as the sampler's velocity: float32, on the latent's device."""
    return output.to(device=like.device, dtype=torch.float32)


def velocity_from_denoised(step: ComfyStepInputs, denoised: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """v = (x - x0) / sigma from apply_model's denoised output, for calls where the DiT itself did not run (a
    wrapper answered from its own cache); exact up to float32 round-off of ComfyUI's x - sigma * v."""
    sigma = step.sigma.to(torch.float64).reshape(-1, *([1] * (step.x.dim() - 1)))
    v = (step.x.to(torch.float64) - denoised.to(device=step.x.device, dtype=torch.float64)) / sigma
    return v.to(device=like.device, dtype=torch.float32)


# --- VACE control in CONDITIONING -------------------------------------------------------------------------
def _vace_lists(extra: dict, label: str) -> tuple[list, list | None, list | None, list]:
    """The VACE lists of a conditioning entry, each checked to be a list with one entry per control video."""
    def listed(key: str) -> list | None:
        value = extra.get(key)
        if value is None:
            return None
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"the {label} conditioning's '{key}' is a {type(value).__name__}; core WanVaceToVideo "
                             "writes a list (one entry per control video)")
        return list(value)

    frames, masks, strengths, ranges = (listed(k) for k in (*VACE_KEYS, VACE_RANGES))
    for key, values in ((VACE_KEYS[1], masks), (VACE_KEYS[2], strengths)):
        if values is not None and len(values) != len(frames):
            raise ValueError(f"the {label} conditioning has {len(frames)} VACE control videos (vace_frames) but "
                             f"{len(values)} '{key}' entries; connect it through WanVaceToVideo or WanMoEVaceControl")
    return frames, masks, strengths, ranges or []


def _vace_context(frames: object, mask: object, label: str, i: int) -> torch.Tensor:
    """[B, 96, T, h, w]: each 16-channel half of the raw control latent normalised, then the 64-channel mask."""
    where = f"the {label} conditioning's VACE control {i}"
    if not isinstance(frames, torch.Tensor) or frames.ndim != 5 or frames.shape[1] != 2 * LATENT_CHANNELS:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"{where}: vace_frames is {shape}; expected [batch, 32, frames, height/8, width/8] (16 "
                         "inactive + 16 reactive Wan2.1 latent channels, as WanVaceToVideo writes)")
    b, _, *grid = frames.shape
    if mask is None:
        mask = torch.ones(1, VACE_MASK_CHANNELS, *grid)
    if not isinstance(mask, torch.Tensor) or mask.ndim != 5 or mask.shape[1] != VACE_MASK_CHANNELS \
            or list(mask.shape[2:]) != grid or mask.shape[0] not in (1, b):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{where}: vace_mask is {shape}; expected [1, 64, {grid[0]}, {grid[1]}, {grid[2]}] (the "
                         "control mask 8x8-unshuffled to its latent frames, as WanVaceToVideo writes)")
    frames = frames.detach().to("cpu", torch.float32)
    parts = [normalize(frames[:, :LATENT_CHANNELS]), normalize(frames[:, LATENT_CHANNELS:]),
             mask.detach().to("cpu", torch.float32).expand(b, -1, -1, -1, -1)]
    context = torch.cat(parts, dim=1)
    if not torch.isfinite(context).all():
        raise ValueError(f"{where}: the control latents or mask hold NaN or infinite values")
    return context


def _vace_ranges(value: object, label: str, i: int) -> dict[str, tuple[float, float]] | None:
    if value is None:
        return None
    try:
        ranges = {str(k): (float(v[0]), float(v[1])) for k, v in dict(value).items()}
    except (TypeError, ValueError, IndexError, KeyError):
        raise ValueError(f"the {label} conditioning's {VACE_RANGES}[{i}] is {value!r}; expected "
                         "{expert: (start, end)}") from None
    return ranges


def conditioning_to_control(conditioning: list, label: str) -> tuple[VaceStream, ...]:
    """The VACE control streams of a CONDITIONING (its first entry, as for the text): () when it has none."""
    extra = conditioning[0][1] if conditioning and len(conditioning[0]) > 1 else {}
    if not isinstance(extra, dict) or extra.get(VACE_KEYS[0]) is None:
        stray = [k for k in VACE_KEYS[1:] if isinstance(extra, dict) and extra.get(k) is not None]
        if stray:
            raise ValueError(f"the {label} conditioning has {', '.join(stray)} but no vace_frames (the control "
                             "latents); connect it through WanVaceToVideo or WanMoEVaceControl")
        return ()
    frames, masks, strengths, ranges = _vace_lists(extra, label)
    streams = []
    for i, item in enumerate(frames):
        strength = 1.0 if strengths is None else strengths[i]
        if not isinstance(strength, (int, float)) or strength != strength:
            raise ValueError(f"the {label} conditioning's vace_strength[{i}] is {strength!r}; expected a number")
        streams.append(VaceStream(_vace_context(item, None if masks is None else masks[i], label, i), float(strength),
                                  _vace_ranges(ranges[i] if i < len(ranges) else None, label, i)))
    return tuple(streams)


def append_vace(conditioning: list, frames: torch.Tensor, mask: torch.Tensor, strength: float,
                ranges: dict[str, tuple[float, float]] | None) -> list:
    """A copy of a CONDITIONING with one more VACE control appended to every entry, as core WanVaceToVideo does
    (node_helpers.conditioning_set_values(..., append=True)), plus our step ranges aligned with vace_frames."""
    out = []
    for entry in conditioning:
        extra = dict(entry[1])
        count = len(extra.get(VACE_KEYS[0]) or [])
        for key, value in zip(VACE_KEYS, (frames, mask, strength)):
            extra[key] = list(extra.get(key) or []) + [value]
        previous = list(extra.get(VACE_RANGES) or [])
        extra[VACE_RANGES] = previous[:count] + [None] * (count - len(previous)) + [ranges]
        out.append([entry[0], extra])
    return out
