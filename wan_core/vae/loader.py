"""Load the Wan2.1 VAE from any layout users have, with clear errors for files that are something else.

Layouts: the official `Wan2.1_VAE.pth` (pickle, read with weights_only=True), Comfy-Org's
`wan_2.1_vae.safetensors` (official keys) and diffusers `AutoencoderKLWan` (a `vae/` folder or a single
file; keys renamed to the official layout per diffusers' own converter).
"""

from __future__ import annotations

import os
import re

import torch

from ..config import COMPUTE_DTYPES
from ..io.checkpoint import Checkpoint, CheckpointError, open_checkpoint, require_float
from .model import LATENT_CHANNELS, WanVAE

_PREFIXES = ("vae.", "first_stage_model.", "model.")

# official marker keys (what ComfyUI's comfy/sd.py looks for as well)
OFFICIAL_MARKER = "decoder.middle.0.residual.0.gamma"
DIFFUSERS_MARKER = "decoder.mid_block.resnets.0.norm1.gamma"
WAN22_VAE_MARKER = "decoder.upsamples.0.upsamples.0.residual.2.weight"

_RES = {"residual.0.gamma": "norm1.gamma", "residual.2.": "conv1.", "residual.3.gamma": "norm2.gamma",
        "residual.6.": "conv2.", "shortcut.": "conv_shortcut."}
_TOP = {"encoder.conv1.": "encoder.conv_in.", "decoder.conv1.": "decoder.conv_in.", "conv1.": "quant_conv.",
        "conv2.": "post_quant_conv."}


def official_to_diffusers_key(key: str, num_res_blocks: int = 2) -> str:
    """Rename one official Wan2.1 VAE key to diffusers `AutoencoderKLWan` naming."""
    for old, new in _TOP.items():
        if key.startswith(old):
            return new + key[len(old):]
    m = re.match(r"(encoder|decoder)\.(head\.0|head\.2|middle\.\d+|downsamples\.\d+|upsamples\.\d+)\.?(.*)$", key)
    if m is None:
        return key
    side, part, rest = m.groups()
    if part == "head.0":
        return f"{side}.norm_out.{rest}"
    if part == "head.2":
        return f"{side}.conv_out.{rest}"
    kind, index = part.split(".")
    i = int(index)
    if kind == "middle":
        prefix = f"{side}.mid_block.attentions.0" if i == 1 else f"{side}.mid_block.resnets.{i // 2}"
    elif kind == "downsamples":
        prefix = f"{side}.down_blocks.{i}"
    else:  # decoder levels: num_res_blocks+1 residual blocks, then an upsampler
        per_level = num_res_blocks + 2
        level, pos = divmod(i, per_level)
        prefix = (f"{side}.up_blocks.{level}.resnets.{pos}" if pos <= num_res_blocks
                  else f"{side}.up_blocks.{level}.upsamplers.0")
    for old, new in _RES.items():
        if rest.startswith(old):
            rest = new + rest[len(old):]
            break
    return f"{prefix}.{rest}"


def diffusers_to_official_map(official_keys: list[str], num_res_blocks: int = 2) -> dict[str, str]:
    """diffusers key -> official key, for the given official key set (the rename is one-to-one)."""
    return {official_to_diffusers_key(k, num_res_blocks): k for k in official_keys}


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return COMPUTE_DTYPES[dtype]
    except KeyError:
        raise ValueError(f"dtype must be one of {sorted(COMPUTE_DTYPES)} or a torch.dtype, got {dtype!r}") from None


def _what_is_it(ck: Checkpoint) -> str:
    """A short description of a checkpoint that is not a Wan2.1 VAE."""
    keys = ck.keys()
    has = lambda pattern: any(re.search(pattern, k) for k in keys)  # noqa: E731
    if has(r"(^|\.)blocks\.\d+\.(self_attn|cross_attn)\.") or has(r"(^|\.)blocks\.\d+\.attn1\.to_q") \
            or "patch_embedding.weight" in ck or has(r"\.patch_embedding\.weight$"):
        return ("a Wan diffusion model (DiT) — it belongs in models/diffusion_models/ and is loaded by the "
                "model loader, not the VAE loader")
    if has(r"SelfAttention\.q\.weight$") or has(r"(^|\.)blocks\.\d+\.attn\.q\.weight$") or "token_embedding.weight" in ck \
            or "shared.weight" in ck or "spiece_model" in ck:
        return "a text encoder (umT5/T5) — it belongs in models/text_encoders/"
    if has(r"^(first_stage_model\.)?(encoder|decoder)\.(down|up)\.\d+\.block\.") or has(r"^(encoder|decoder)\.mid\.block_1\."):
        return "an image VAE of another model family (Stable Diffusion / Flux style keys), not a Wan video VAE"
    if has(r"(^|\.)(lora_down|lora_up|lora_A|lora_B)\b"):
        return "a LoRA — it belongs in models/loras/"
    sample = ", ".join(keys[:3]) or "no tensors at all"
    return f"a file with {len(keys)} tensors that matches no known Wan component (first keys: {sample})"


def _latent_channels(ck: Checkpoint) -> int | None:
    for key in ("conv2.weight", "post_quant_conv.weight"):
        if key in ck:
            shape = ck.infos[key].shape
            return shape[0] if shape else 0
    return None


def _identify(ck: Checkpoint) -> tuple[Checkpoint, str]:
    """Return the checkpoint in official naming and the layout found; raise CheckpointError for anything else."""
    ck = ck.strip_prefix(_PREFIXES)
    z = _latent_channels(ck)
    if WAN22_VAE_MARKER in ck or (z is not None and z != LATENT_CHANNELS and z == 48):
        raise CheckpointError(
            f"{ck.path}: this is the Wan2.2 VAE ({z or 48} latent channels, made for Wan2.2-TI2V-5B). "
            "Wan2.2-T2V-A14B uses the Wan2.1 VAE (16 latent channels): download wan_2.1_vae.safetensors "
            "(Comfy-Org) or Wan2.1_VAE.pth (official) into models/vae/ and select it."
        )
    if OFFICIAL_MARKER in ck:
        layout = "official"
    elif DIFFUSERS_MARKER in ck:
        layout = "diffusers"
        rename = diffusers_to_official_map(_official_keys())
        ck = ck.rename(lambda k: rename.get(k, k))
    else:
        raise CheckpointError(
            f"{ck.path}: expected a Wan2.1 VAE (key '{OFFICIAL_MARKER}' or diffusers' '{DIFFUSERS_MARKER}'), "
            f"but found {_what_is_it(ck)}. Select wan_2.1_vae.safetensors or Wan2.1_VAE.pth from models/vae/."
        )
    if z is not None and z != LATENT_CHANNELS:
        raise CheckpointError(
            f"{ck.path}: this VAE has {z} latent channels; the Wan2.1 VAE used by Wan2.2-T2V-A14B has "
            f"{LATENT_CHANNELS}. Use wan_2.1_vae.safetensors or Wan2.1_VAE.pth."
        )
    return ck, layout


_OFFICIAL_KEYS: list[str] | None = None


def _official_keys() -> list[str]:
    """The 194 official key names (the layout does not depend on the width)."""
    global _OFFICIAL_KEYS
    if _OFFICIAL_KEYS is None:
        with torch.device("meta"):
            _OFFICIAL_KEYS = list(WanVAE(dim=8).state_dict().keys())
    return _OFFICIAL_KEYS


def load_vae(
    path: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    dtype: str | torch.dtype = "fp32",
) -> WanVAE:
    """Load a Wan2.1 VAE (official .pth, Comfy .safetensors or diffusers layout) onto `device` at `dtype`."""
    torch_dtype = _dtype(dtype)
    ck, layout = _identify(open_checkpoint(path))
    if "decoder.head.0.gamma" not in ck or "encoder.conv1.weight" not in ck:
        raise CheckpointError(
            f"{ck.path}: a Wan2.1 VAE ({layout} layout) without its encoder or decoder head "
            "('encoder.conv1.weight' / 'decoder.head.0.gamma'); the file is incomplete. Download it again."
        )
    gamma = ck.infos["decoder.head.0.gamma"].shape
    dim = gamma[0] if gamma else 0  # the base width, as ComfyUI reads it
    if not 1 <= dim <= 4096:
        raise CheckpointError(f"{ck.path}: 'decoder.head.0.gamma' gives a base width of {dim}; a Wan2.1 VAE has 96. "
                              "The file is corrupt or not a Wan2.1 VAE.")
    with torch.device("meta"):
        model = WanVAE(dim=dim)
    expected = model.state_dict()
    missing = [k for k in expected if k not in ck]
    unexpected = [k for k in ck.keys() if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{ck.path}: a Wan2.1 VAE ({layout} layout, width {dim}) whose tensors do not match the Wan2.1 "
            f"architecture: {len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:2]}). It may be truncated or a modified model; use the official file."
        )
    require_float(ck, list(expected), "Wan2.1 VAE")
    state: dict[str, torch.Tensor] = {}
    for key, ref in expected.items():
        shape = ck.infos[key].shape
        if tuple(shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{ck.path}: tensor '{key}' has shape {tuple(shape)}, expected {tuple(ref.shape)} for a Wan2.1 "
                f"VAE of width {dim}. The file is not a standard Wan2.1 VAE."
            )
        state[key] = ck.get(key).to(device=device, dtype=torch_dtype)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)
