"""The FFN's GELU runs in place on its hidden layer: the same bits as the official Linear-GELU-Linear, one
[B, tokens, ffn_dim] tensor (the block's largest) instead of two."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from wan_core.dit.model import DiTConfig, WanBlock

CONFIG = DiTConfig(dim=64, ffn_dim=256, num_heads=2, num_layers=1)


class Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ffn_with_gelu_in_place_is_the_sequential_ffn_bit_for_bit(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    block = WanBlock(CONFIG, "sdpa").eval()
    for layer in (block.ffn[0], block.ffn[2]):
        layer.compute_dtype = dtype
    x = torch.randn(2, 37, CONFIG.dim)
    with torch.no_grad():
        official = block.ffn(x)  # nn.Sequential: Linear, GELU(tanh) out of place, Linear
        ops = Ops()
        with ops:
            ours = block._ffn_layers(x)
    assert ours.dtype == dtype and torch.equal(ours, official)
    assert "aten.gelu_.default" in ops.seen and "aten.gelu.default" not in ops.seen
