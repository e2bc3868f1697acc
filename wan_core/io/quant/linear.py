"""The Linear every stored-weight format computes through: dequantise the weight for each call, then one matmul.

A format subclass keeps its stored tensors (fp8 values, GGML blocks, packed fp4 ...) as parameters and
buffers, so moving the module (swap, block streaming, cache tiers) moves exactly the stored bytes, and
implements `dequantized_weight(dtype)`. The full-precision weight exists only during the call.

Additive terms: child modules in `lora_terms` (an nn.ModuleDict; run-time LoRA, see wan_core.lora.runtime) whose
outputs are added to the layer's, computed on the input in the compute dtype. They are part of `forward` rather than
a forward hook: torch.compile does not guard on hooks (torch._dynamo.config.skip_nnmodule_hook_guards), so terms
added after compiling would be silently left out, while a submodule read in `forward` is traced and guarded.
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
        return self.plus_terms(x, self.matmul(x))

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x @ weight^T + bias in the compute dtype, with the weight dequantised (or held by `dequantized_once`)."""
        dtype = self.compute_dtype
        bias = self.bias.to(dtype) if self.bias is not None else None
        held = self.__dict__.get("_held")
        return F.linear(x.to(dtype), held if held is not None else self.dequantized_weight(dtype), bias)

    def plus_terms(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """`out` plus the outputs of the layer's additive terms (see the module docstring)."""
        terms = self._modules.get("lora_terms")
        if terms is None:
            return out
        x = x.to(self.compute_dtype)
        for term in terms.values():
            out = out + term(x).to(out.dtype)
        return out

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
