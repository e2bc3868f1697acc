"""Tiny random Wan DiT experts, written in every file layout real checkpoints come in.

Layouts: the official Wan-AI expert folder (config.json + sharded safetensors + index), single files
with or without a `model.diffusion_model.` / `model.` prefix, diffusers `WanTransformer3DModel` keys,
and both scaled-fp8 formats ComfyUI reads (older `scaled_fp8` marker + `.scale_weight`, newer
`_quantization_metadata` header entry + `.weight_scale`). VACE experts (Wan2.2-VACE-Fun): merged files (the
expert with `vace_patch_embedding` + `vace_blocks` inside, as Comfy-Org's) and module-only files (the VACE tensors
alone, as Kijai's `Wan2_2_Fun_VACE_module_A14B_*` files attached to a plain expert).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from ...dit.model import DiTConfig, WanDiT
from ...dit.keys import official_to_diffusers
from ...io.quant import quantize_fp8

# 128-wide heads like every released Wan model (ComfyUI derives num_heads = dim // 128).
TINY_DIT_CONFIG = DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=4096, freq_dim=256)
# A VACE expert: 4 main blocks, VACE blocks after blocks 0 and 2 (the A14B mapping's stride, 40 // 8 = 5, in small).
TINY_VACE_CONFIG = replace(TINY_DIT_CONFIG, num_layers=4, vace_layers=2)
VACE_PREFIXES = ("vace_patch_embedding.", "vace_blocks.")

# A 64-wide, 32-token text context: about 10x cheaper than TINY_DIT_CONFIG, for sampling-loop tests.
FAST_DIT_CONFIG = DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=64, text_len=32)


def perturbed_dit(seed: int, config: DiTConfig = FAST_DIT_CONFIG) -> WanDiT:
    """A tiny DiT seeded by `seed`, every weight perturbed (0.05 x randn) so no output is trivially zero."""
    torch.manual_seed(seed)
    model = WanDiT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


# Linears inside the blocks: what Comfy-Org's fp8_scaled Wan files store as fp8.
_BLOCK_LINEAR = re.compile(r"^(vace_)?blocks\.\d+\.(self_attn\.[qkvo]|cross_attn\.[qkvo]|ffn\.[02])$")
_ROLE_SEEDS = {"high": 0, "low": 7919, "vace_high": 104729, "vace_low": 1299709}


def official_shapes(config: DiTConfig) -> dict[str, tuple[int, ...]]:
    """Official key -> shape of a DiT at `config` (built on the meta device, nothing allocated)."""
    with torch.device("meta"):
        model = WanDiT(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def random_state_dict(config: DiTConfig = TINY_DIT_CONFIG, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 weights in the official layout, scaled so activations stay O(1) through the blocks."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for key, shape in official_shapes(config).items():
        noise = torch.randn(shape, generator=gen)
        if key.endswith("modulation"):
            value = noise / math.sqrt(config.dim)  # the official init
        elif key.endswith("norm_q.weight") or key.endswith("norm_k.weight") or key.endswith("norm3.weight"):
            value = 1.0 + 0.1 * noise
        elif key.endswith(".bias"):
            value = 0.02 * noise
        else:  # Linear / conv weights: unit-variance outputs (fan-in scaling)
            value = noise / math.sqrt(math.prod(shape[1:]))
        sd[key] = value.contiguous()
    return sd


def _official_config_json(config: DiTConfig) -> dict:
    """config.json as the official WanModel.save_config writes it (ignored keys such as text_dim left out)."""
    return {
        "_class_name": "WanModel", "_diffusers_version": "0.35.1", "dim": config.dim, "eps": config.eps,
        "ffn_dim": config.ffn_dim, "freq_dim": config.freq_dim, "in_dim": config.in_dim, "model_type": "t2v",
        "num_heads": config.num_heads, "num_layers": config.num_layers, "out_dim": config.out_dim,
        "text_len": config.text_len,
    }


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def write_official_folder(directory: str | Path, sd: dict[str, torch.Tensor], config: DiTConfig, shards: int = 2) -> Path:
    """An official expert folder: config.json, diffusion_pytorch_model-0000N-of-0000M.safetensors, index."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(_official_config_json(config), indent=2, sort_keys=True))
    keys = list(sd)
    total = sum(_nbytes(sd[k]) for k in keys)
    groups: list[list[str]] = [[] for _ in range(shards)]
    done = 0
    for key in keys:  # fill shards in key order, each about total/shards bytes
        groups[min(shards - 1, done * shards // max(total, 1))].append(key)
        done += _nbytes(sd[key])
    weight_map = {}
    for i, group in enumerate(groups):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: sd[k].contiguous() for k in group}, str(directory / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in group})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return directory


def write_single_file(path: str | Path, sd: dict[str, torch.Tensor], prefix: str = "") -> Path:
    """One safetensors file with official keys, optionally prefixed ("model.diffusion_model.", "model.")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({prefix + k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def write_diffusers_file(path: str | Path, sd: dict[str, torch.Tensor]) -> Path:
    """One safetensors file with diffusers WanTransformer3DModel keys."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({official_to_diffusers(k): v.contiguous() for k, v in sd.items()}, str(path))
    return path


def _quantized(sd: dict[str, torch.Tensor], other_dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """(fp8 weights + other tensors in other_dtype, per-layer fp32 scales, quantized layer names)."""
    out, scales, layers = {}, {}, []
    for key, value in sd.items():
        layer = key[: -len(".weight")] if key.endswith(".weight") else None
        if layer is not None and _BLOCK_LINEAR.match(layer):
            out[key], scales[layer] = quantize_fp8(value, torch.float8_e4m3fn)
            layers.append(layer)
        else:
            out[key] = value.to(other_dtype)
    return out, scales, layers


def write_scaled_fp8_file(path: str | Path, sd: dict[str, torch.Tensor], prefix: str = "",
                          other_dtype: torch.dtype = torch.float16) -> Path:
    """Older Comfy "scaled fp8" file: block Linear weights in e4m3fn with `.scale_weight`, a `scaled_fp8` marker."""
    tensors, scales, _ = _quantized(sd, other_dtype)
    tensors.update({f"{layer}.scale_weight": s.reshape(()) for layer, s in scales.items()})
    tensors["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)  # only its dtype is read
    return write_single_file(path, tensors, prefix)


def write_quant_metadata_file(path: str | Path, sd: dict[str, torch.Tensor], prefix: str = "",
                              other_dtype: torch.dtype = torch.float16) -> Path:
    """Newer ComfyUI quantized file: `_quantization_metadata` header JSON listing layers, `.weight_scale` tensors."""
    tensors, scales, layers = _quantized(sd, other_dtype)
    tensors.update({f"{layer}.weight_scale": s.reshape(()) for layer, s in scales.items()})
    meta = {"format_version": "1.0", "layers": {prefix + layer: {"format": "float8_e4m3fn"} for layer in layers}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({prefix + k: v.contiguous() for k, v in tensors.items()}, str(path),
              metadata={"_quantization_metadata": json.dumps(meta)})
    return path


def split_vace(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the plain expert's tensors, the VACE module's tensors) of a merged VACE state dict."""
    module = {k: v for k, v in sd.items() if k.startswith(VACE_PREFIXES)}
    return {k: v for k, v in sd.items() if k not in module}, module


def write_vace_module_file(path: str | Path, sd: dict[str, torch.Tensor], dtype: torch.dtype = torch.bfloat16) -> Path:
    """A module-only VACE file (Kijai's Wan2_2_Fun_VACE_module_A14B_* layout): the VACE tensors of `sd` alone."""
    return write_single_file(path, {k: v.to(dtype) for k, v in split_vace(sd)[1].items()})


def write_comfy_file(path: str | Path, role: str, fp8: bool, seed: int = 0) -> Path:
    """A tiny expert under a ComfyUI file name: role "high"/"low" (different weights), or "vace_high"/"vace_low" (a
    merged VACE expert, as wan2.2_fun_vace_*_14B_*), fp8 scaled or fp16."""
    if role not in _ROLE_SEEDS:
        raise ValueError(f"role must be one of {', '.join(_ROLE_SEEDS)}, got {role!r}")
    sd = random_state_dict(TINY_VACE_CONFIG if role.startswith("vace_") else TINY_DIT_CONFIG, seed + _ROLE_SEEDS[role])
    if fp8:
        return write_scaled_fp8_file(path, sd, other_dtype=torch.float16)
    return write_single_file(path, {k: v.to(torch.float16) for k, v in sd.items()})
