"""Tiny random LoRAs for a tiny DiT, one content written in every key layout users download.

`random_lora` makes the content in official names (low-rank pairs with an alpha, full deltas of norms and
modulation, bias deltas); `write_lora` stores it in one layout:
  diffusion_model  `diffusion_model.<module>.lora_up.weight / .lora_down.weight / .alpha` (ComfyUI's own)
  official         the same without the prefix (Lightning, Kijai extracts)
  kohya            `lora_unet_<module with . -> _>.lora_down.weight`
  wan_fun          `lora_unet__<module ...>` (VideoX-Fun / Wan-Fun)
  peft             `transformer.<diffusers module>.lora_A.weight / .lora_B.weight`, no alpha (alpha / rank folded
                   into lora_B, so it describes the same delta)
Full deltas become `.diff` (weights, modulation) and `.diff_b` (biases) in every layout. `merged_state_dict` is
the definition the engine is tested against: W + strength * (alpha / rank * up @ down + diff).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from ...dit.keys import official_to_diffusers
from ...dit.model import DiTConfig
from .dit import TINY_DIT_CONFIG, official_shapes

LAYOUTS = ("diffusion_model", "official", "kohya", "wan_fun", "peft")
ATTENTION = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
             "cross_attn.v", "cross_attn.o")


@dataclass
class TinyLora:
    """A LoRA in official names: module -> (up [out, r], down [r, in], alpha or None); parameter -> full delta."""

    pairs: dict[str, tuple[torch.Tensor, torch.Tensor, float | None]] = field(default_factory=dict)
    diffs: dict[str, torch.Tensor] = field(default_factory=dict)


def random_lora(config: DiTConfig = TINY_DIT_CONFIG, *, rank: int = 4, alpha: float | None = 2.0, seed: int = 0,
                modules: tuple[str, ...] = ATTENTION + ("ffn.0", "ffn.2"), diffs: bool = True,
                modulation: bool = True, magnitude: float = 0.3) -> TinyLora:
    """Random pairs on `modules` of every block (deltas about `magnitude` of the weights), and with `diffs` full
    deltas of norm3 and the q bias of every block (+ `modulation`, which kohya spellings cannot name in core)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = official_shapes(config)
    lora = TinyLora()
    scale = (alpha / rank) if alpha is not None else 1.0
    for block in range(config.num_layers):
        for module in modules:
            out, inner = shapes[f"blocks.{block}.{module}.weight"]
            up = torch.randn(out, rank, generator=gen) * magnitude / math.sqrt(rank * scale ** 2)
            down = torch.randn(rank, inner, generator=gen) / math.sqrt(inner)
            lora.pairs[f"blocks.{block}.{module}"] = (up, down, alpha)
        if diffs:
            for name in (f"blocks.{block}.norm3.weight", f"blocks.{block}.norm3.bias", f"blocks.{block}.self_attn.q.bias"):
                lora.diffs[name] = 0.05 * torch.randn(shapes[name], generator=gen)
            if modulation:
                name = f"blocks.{block}.modulation"
                lora.diffs[name] = 0.02 * torch.randn(shapes[name], generator=gen)
    return lora


def _module_name(module: str, layout: str) -> str:
    if layout == "diffusion_model":
        return "diffusion_model." + module
    if layout == "official":
        return module
    if layout == "kohya":
        return "lora_unet_" + module.replace(".", "_")
    if layout == "wan_fun":
        return "lora_unet__" + module.replace(".", "_")
    if layout == "peft":
        return "transformer." + official_to_diffusers(module + ".").removesuffix(".")
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def lora_state_dict(lora: TinyLora, layout: str, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The stored tensors of `lora` in `layout`."""
    out: dict[str, torch.Tensor] = {}
    for module, (up, down, alpha) in lora.pairs.items():
        name = _module_name(module, layout)
        if layout == "peft":
            scale = alpha / down.shape[0] if alpha is not None else 1.0
            out[name + ".lora_A.weight"], out[name + ".lora_B.weight"] = down, up * scale
            continue
        out[name + ".lora_up.weight"], out[name + ".lora_down.weight"] = up, down
        if alpha is not None:
            out[name + ".alpha"] = torch.tensor(float(alpha))
    for param, diff in lora.diffs.items():
        owner, _, leaf = param.rpartition(".")
        if leaf == "bias":
            out[_module_name(owner, layout) + ".diff_b"] = diff
        elif leaf == "weight":
            out[_module_name(owner, layout) + ".diff"] = diff
        else:  # a parameter that is not a module's weight (modulation)
            out[_module_name(param, layout) + ".diff"] = diff
    return {k: (v.to(dtype) if v.dim() else v).contiguous() for k, v in out.items()}


def write_lora(path: str | Path, lora: TinyLora, layout: str = "diffusion_model",
               dtype: torch.dtype = torch.float32, extra: dict[str, torch.Tensor] | None = None) -> Path:
    """`lora` as a safetensors file in `layout` (plus `extra` tensors stored as given)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({**lora_state_dict(lora, layout, dtype), **(extra or {})}, str(path))
    return path


def merged_state_dict(sd: dict[str, torch.Tensor], lora: TinyLora, strength: float = 1.0) -> dict[str, torch.Tensor]:
    """The definition: each weight + strength * alpha / rank * up @ down, each diff'd parameter + strength * diff
    (float32)."""
    out = {k: v.float().clone() for k, v in sd.items()}
    for module, (up, down, alpha) in lora.pairs.items():
        scale = alpha / down.shape[0] if alpha is not None else 1.0
        out[module + ".weight"] += strength * scale * (up.float() @ down.float())
    for param, diff in lora.diffs.items():
        out[param] += strength * diff.float().reshape(out[param].shape)
    return out


def write_lightning_file(path: str | Path, role: str, config: DiTConfig = TINY_DIT_CONFIG) -> Path:
    """A tiny stand-in for a Lightning LoRA of one expert: rank 8, alpha 8, unprefixed keys, fp32, as released."""
    seed = {"high": 101, "low": 103}[role]
    lora = random_lora(config, rank=8, alpha=8.0, seed=seed, diffs=False, magnitude=0.2)
    return write_lora(path, lora, "official")
