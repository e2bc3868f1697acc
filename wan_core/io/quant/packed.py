"""Packed layers (GGML blocks, nvfp4, mxfp8, int8) from a file into a model: kept packed, or dequantised at load.

`packed_linear` builds the module that replaces an nn.Linear; `read_packed` reads the tensors that module holds
(block scales reinterpreted to their real dtype and unswizzled); `dequantize_packed` gives the float32 weight
for layers that are not kept packed (another weight_dtype was asked for, or the tensor is not a Linear's).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..reader import TensorReader
from . import comfy_formats as cf
from . import ggml
from .layout import PackedLayer
from .linear import DequantLinear


def logical_shape(spec: PackedLayer, stored: tuple[int, ...]) -> tuple[int, ...]:
    """The [out, in] a comfy-format weight of stored shape `stored` holds (padding included)."""
    return (stored[0], stored[1] * 2) if spec.format == "nvfp4" else tuple(stored)


def packed_linear(old: nn.Linear, spec: PackedLayer, compute_dtype: torch.dtype, per_row_scale: bool = False) -> DequantLinear:
    """The Linear that keeps `old`'s weight in `spec`'s format (built on old's device, meta included)."""
    device, bias = old.weight.device, old.bias is not None
    if spec.format in ggml.GGML_TYPES:
        return ggml.GGMLLinear(old.in_features, old.out_features, bias, spec.format, compute_dtype=compute_dtype,
                               device=device)
    return cf.ComfyQuantLinear(old.in_features, old.out_features, bias, spec.format, compute_dtype=compute_dtype,
                               per_row_scale=per_row_scale, convrot_groupsize=spec.convrot_groupsize, device=device)


def read_packed(reader: TensorReader, layer: str, spec: PackedLayer, out_features: int,
                in_features: int) -> dict[str, torch.Tensor]:
    """Tensor name (relative to the layer) -> tensor on the reader's device, as the packed module holds them."""
    weight = f"{layer}.weight"
    if spec.format in ggml.GGML_TYPES:
        return {"weight": reader.raw(weight, (out_features, ggml.row_bytes(spec.format, in_features)), torch.uint8)}
    shapes = cf.storage_shapes(spec.format, out_features, in_features)
    if spec.format == "int8_tensorwise":
        tensors = {"weight": reader.raw(weight, shapes["weight"], torch.int8),
                   "weight_scale": reader.read(spec.scales["weight_scale"], torch.float32)}
        if spec.convrot_groupsize:
            tensors["rotation"] = cf.hadamard(spec.convrot_groupsize, reader.device)
        return tensors
    rows, cols = shapes["weight"][0], logical_shape(spec, shapes["weight"])[1]
    block = cf.NVFP4_BLOCK if spec.format == "nvfp4" else cf.MXFP8_BLOCK
    scale_dtype = torch.float8_e4m3fn if spec.format == "nvfp4" else torch.uint8
    swizzled = reader.raw(spec.scales["weight_scale"], shapes["weight_scale"], scale_dtype)
    stored = torch.uint8 if spec.format == "nvfp4" else torch.float8_e4m3fn
    tensors = {"weight": reader.raw(weight, shapes["weight"], stored),
               "weight_scale": cf.unswizzle(swizzled.view(torch.uint8), rows, cols // block).view(scale_dtype)}
    if spec.format == "nvfp4":
        tensors["weight_scale_2"] = reader.scalar(spec.scales["weight_scale_2"])
    return tensors


def dequantize_packed(reader: TensorReader, key: str, spec: PackedLayer, shape: tuple[int, ...]) -> torch.Tensor:
    """The float32 value of packed tensor `key` (logical `shape`), on the reader's device."""
    if spec.format in ggml.GGML_TYPES:
        rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
        blocks = reader.raw(key, (rows, ggml.row_bytes(spec.format, shape[-1])), torch.uint8)
        return ggml.dequantize(blocks, spec.format, shape, torch.float32)
    out_features, in_features = shape
    t = read_packed(reader, key[: -len(".weight")], spec, out_features, in_features)
    if spec.format == "nvfp4":
        return cf.dequantize_nvfp4(t["weight"], t["weight_scale"], t["weight_scale_2"], out_features, in_features,
                                   torch.float32)
    if spec.format == "mxfp8":
        return cf.dequantize_mxfp8(t["weight"], t["weight_scale"], out_features, in_features, torch.float32)
    return cf.dequantize_int8(t["weight"], t["weight_scale"], torch.float32, t.get("rotation"))
