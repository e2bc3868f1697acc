"""fp8 weight storage computed in bf16/fp16 (or fp32) by upcasting one layer at a time.

Three kinds of fp8 files are in circulation (ComfyUI QUANTIZATION.md and Comfy-Org's repackaged files):
  * plain fp8: weights stored as float8 with no scale (scale 1);
  * "scaled fp8" (older): a `scaled_fp8` marker tensor, per-layer `<layer>.scale_weight` and sometimes
    `<layer>.scale_input` (some community files spell it `.weight_scale`);
  * ComfyUI's quantization metadata (newer): a `_quantization_metadata` JSON entry in the safetensors
    header listing quantized layers, with `<layer>.weight_scale` and optional `<layer>.input_scale`.
`describe_fp8` reads which layers are quantized and where their scales are; `Fp8Linear` computes
`x @ (w_fp8 * scale)^T + b` with the product formed in fp32 and cast once to the compute dtype, or, with
`use_fp8_matmul`, as one fp8 GEMM (`torch._scaled_mm`) on an input quantised per tensor to e4m3 (the GPU fast
path of Ada/Hopper/Blackwell, as ComfyUI's fp8_e4m3fn_fast).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..checkpoint import Checkpoint
from .linear import DequantLinear, replace_linear

log = logging.getLogger(__name__)

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
_INPUT_SCALE_SUFFIXES = (".scale_input", ".input_scale")


@dataclass
class Fp8Layout:
    """Which layers of a checkpoint are fp8 and where their scales live (keys relative to the checkpoint)."""

    format: str  # "plain", "scaled_fp8" or "quant_metadata"
    layers: dict[str, str] = field(default_factory=dict)  # layer name -> weight-scale key ("" = scale 1)
    input_scales: dict[str, str] = field(default_factory=dict)
    marker_keys: tuple[str, ...] = ()

    def bookkeeping_keys(self) -> set[str]:
        """Keys that are not model parameters (scales and markers): loaders skip them."""
        return {k for k in self.layers.values() if k} | set(self.input_scales.values()) | set(self.marker_keys)


def describe_fp8(ckpt: Checkpoint, listed: set[str] | None = None, exclude: frozenset[str] = frozenset()) -> Fp8Layout | None:
    """Describe the fp8 layers of a checkpoint, or None when no weight is stored as fp8.

    `listed`: the layers a quantisation config names as fp8 (None: read `_quantization_metadata` here);
    `exclude`: layers stored in another format whose weights happen to be fp8 too (mxfp8).
    """
    fp8_weights = [k[: -len(".weight")] for k, i in ckpt.infos.items()
                   if k.endswith(".weight") and i.dtype in FP8_DTYPES and k[: -len(".weight")] not in exclude]
    if not fp8_weights:
        return None
    markers = tuple(k for k in ckpt.infos if k == "scaled_fp8" or k.endswith(".scaled_fp8"))
    raw_meta = ckpt.metadata.get("_quantization_metadata")
    if raw_meta or listed:
        fmt = "quant_metadata"
        if listed is None:
            try:
                listed = set(json.loads(raw_meta).get("layers", {}))
            except json.JSONDecodeError:
                listed = set()
            prefix = ckpt.prefix
            listed = {name[len(prefix):] if prefix and name.startswith(prefix) else name for name in listed}
        names = sorted(set(fp8_weights) | (listed & {k[: -len(".weight")] for k in ckpt.infos if k.endswith(".weight")}))
    else:
        fmt = "scaled_fp8" if markers or any(k.endswith(_SCALE_SUFFIXES) for k in ckpt.infos) else "plain"
        names = sorted(fp8_weights)
    layout = Fp8Layout(fmt, marker_keys=markers)
    for name in names:
        layout.layers[name] = next((name + s for s in _SCALE_SUFFIXES if name + s in ckpt.infos), "")
        inp = next((name + s for s in _INPUT_SCALE_SUFFIXES if name + s in ckpt.infos), None)
        if inp:
            layout.input_scales[name] = inp
    return layout


class Fp8Linear(DequantLinear):
    """A Linear whose weight is stored in fp8 with a per-tensor scale and upcast for each call."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, storage_dtype: torch.dtype = torch.float8_e4m3fn,
                 compute_dtype: torch.dtype = torch.bfloat16, device: torch.device | str | None = None) -> None:
        super().__init__(in_features, out_features, compute_dtype)
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=storage_dtype, device=device), requires_grad=False)
        self.register_buffer("weight_scale", torch.ones((), dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=compute_dtype, device=device), requires_grad=False) if bias else None

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight as `dtype` (default: the compute dtype), formed in fp32 then cast once."""
        return (self.weight.to(torch.float32) * self.weight_scale.to(torch.float32)).to(dtype or self.compute_dtype)

    def storage(self) -> str:
        return str(self.weight.dtype).replace("torch.", "")

    scaled_mm = False  # set by `use_fp8_matmul`: multiply in fp8 (torch._scaled_mm) instead of dequantising

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        if self.scaled_mm and self.weight.dtype == torch.float8_e4m3fn:
            try:
                return self._fp8_matmul(x)
            except RuntimeError as exc:  # a shape or device the kernel does not take: dequantise from now on
                log.warning("fp8 matmul unavailable for %s (%s); dequantising instead", self.extra_repr(), exc)
                self.scaled_mm = False
        return super().matmul(x)

    def _fp8_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x @ w^T with x quantised per tensor to e4m3 (scale amax/448, computed per call) and the fp8 weight as
        stored: one fp8 GEMM with both scales applied in it, output in the compute dtype."""
        dtype = self.compute_dtype
        flat = x.reshape(-1, self.in_features).to(dtype)
        x_scale = (flat.abs().amax().float() / E4M3_MAX).clamp_min(1e-12)
        quantised = (flat / x_scale.to(dtype)).clamp_(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
        bias = self.bias.to(dtype) if self.bias is not None else None
        out = torch._scaled_mm(quantised, self.weight.t(), scale_a=x_scale, scale_b=self.weight_scale.float(),
                               bias=bias, out_dtype=dtype)
        return out.reshape(*x.shape[:-1], self.out_features)


E4M3_MAX = float(torch.finfo(torch.float8_e4m3fn).max)


def fp8_matmul_supported(device: torch.device) -> bool:
    """Whether `device` has fp8 tensor-core matmuls (Ada, Hopper, Blackwell: compute capability 8.9+)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def use_fp8_matmul(module: nn.Module, enabled: bool) -> int:
    """Turn fp8 matmuls on or off for every e4m3 Fp8Linear in `module`; returns how many layers it applies to."""
    layers = [m for m in module.modules() if isinstance(m, Fp8Linear) and m.weight.dtype == torch.float8_e4m3fn]
    for layer in layers:
        layer.scaled_mm = enabled
    return len(layers)


def quantize_fp8(weight: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor scaled fp8 quantization of a higher-precision weight: returns (fp8 weight, fp32 scale)."""
    w = weight.to(torch.float32)
    amax = w.abs().amax().clamp(min=1e-12)
    scale = amax / torch.finfo(dtype).max
    return (w / scale).to(dtype), scale.reshape(())


def swap_in_fp8_linears(module: nn.Module, layer_names: set[str], *, storage_dtype: torch.dtype, compute_dtype: torch.dtype) -> None:
    """Replace the named nn.Linear submodules of `module` (on any device, meta included) by Fp8Linear."""
    for name in layer_names:
        replace_linear(module, name, lambda old: Fp8Linear(
            old.in_features, old.out_features, old.bias is not None, storage_dtype=storage_dtype,
            compute_dtype=compute_dtype, device=old.weight.device))
