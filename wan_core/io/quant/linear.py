"""The Linear every stored-weight format computes through: dequantise the weight for each call, then one matmul.

A format subclass keeps its stored tensors (fp8 values, GGML blocks, packed fp4 ...) as parameters and
buffers, so moving the module (swap, block streaming, cache tiers) moves exactly the stored bytes, and
implements `dequantized_weight(dtype)`. The full-precision weight exists only during the call.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F


class DequantLinear(nn.Module):
    """Base of the stored-format Linears: `forward(x) = x @ dequantized_weight(compute_dtype)^T + bias`."""

    def __init__(self, in_features: int, out_features: int, compute_dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = compute_dtype

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The [out, in] weight in `dtype` (default: the compute dtype)."""
        raise NotImplementedError

    def storage(self) -> str:
        """A short name of the stored format (for logs and reprs)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype
        bias = self.bias.to(dtype) if self.bias is not None else None
        held = self.__dict__.get("_held")
        return F.linear(x.to(dtype), held if held is not None else self.dequantized_weight(dtype), bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, storage={self.storage()}, compute={self.compute_dtype}"


@contextmanager
def dequantized_once(*layers: nn.Module) -> Iterator[None]:
    """Within the block, stored-format layers among `layers` dequantise once and reuse it for every call (a layer
    called on several token chunks); other layers are untouched."""
    held = [layer for layer in layers if isinstance(layer, DequantLinear)]
    for layer in held:
        layer.__dict__["_held"] = layer.dequantized_weight(layer.compute_dtype)
    try:
        yield
    finally:
        for layer in held:
            layer.__dict__.pop("_held", None)


def replace_linear(module: nn.Module, name: str, make: "callable") -> None:
    """Replace the nn.Linear submodule `name` of `module` by `make(old_linear)` (on any device, meta included)."""
    parent_name, _, child = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    old = getattr(parent, child)
    if not isinstance(old, nn.Linear):
        raise TypeError(f"layer '{name}' is a {type(old).__name__}, not a Linear; it cannot hold quantized weights")
    setattr(parent, child, make(old))
