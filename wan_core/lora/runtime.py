"""LoRA on quantised Linears, applied at run time: `y = base(x) + sum of terms(x)`, the stored weights untouched.

A quantised Linear (fp8 here; any module with `dequantized_weight`, e.g. GGUF or packed formats) keeps its
stored bytes: re-quantising a merged weight would lose the LoRA in fp8 rounding, and dropping it would be
silent. Each LoRA on such a layer is a child module in `layer.lora_terms` (so it moves, swaps and streams
with the layer); the layer's own forward adds their outputs (io.quant.linear.DequantLinear.plus_terms: inside
forward, not a hook, so torch.compile sees terms added or removed after compiling). A low-rank pair costs rank x (in + out) numbers and
two thin matmuls per call; other patch families (LoHa, LoKr, full deltas) are kept as a dense delta of the
layer's shape in its compute dtype.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..io.quant.linear import DequantLinear


def is_quantised(module: nn.Module) -> bool:
    """True for Linears whose weight is stored in a quantised format (DequantLinear: they add `lora_terms`)."""
    return isinstance(module, DequantLinear)


class LowRankTerm(nn.Module):
    """`(strength * scale) * (x @ down^T) @ up^T` in the layer's compute dtype; scale = alpha / rank."""

    def __init__(self, down: torch.Tensor, up: torch.Tensor, scale: float, strength: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("down", down)
        self.register_buffer("up", up)
        self.scale, self.strength = scale, strength

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.down.to(x.dtype)), self.up.to(x.dtype)) * (self.strength * self.scale)


class DenseTerm(nn.Module):
    """`strength * x @ delta^T` for patches that are not a low-rank pair (delta already scaled by alpha / rank)."""

    def __init__(self, delta: torch.Tensor, strength: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("delta", delta)
        self.strength = strength

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.delta.to(x.dtype)) * self.strength


def set_term(layer: nn.Module, name: str, term: nn.Module | None) -> None:
    """Add, replace (`term`) or remove (None) the run-time term `name` of a quantised Linear."""
    terms = layer._modules.get("lora_terms")
    if terms is None:
        if term is None:
            return
        terms = layer.lora_terms = nn.ModuleDict()
    if term is not None:
        terms[name] = term
    elif name in terms:
        del terms[name]
    if not len(terms):
        del layer.lora_terms


def term_of(layer: nn.Module, name: str) -> nn.Module | None:
    """The run-time term `name` of a layer, or None."""
    terms = layer._modules.get("lora_terms")
    return terms[name] if terms is not None and name in terms else None
