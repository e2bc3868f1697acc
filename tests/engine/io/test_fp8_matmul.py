"""The fp8 matmul path (torch._scaled_mm, run on the CPU here) against the dequantising path it replaces."""

from __future__ import annotations

import torch

from wan_core.io.quant.fp8 import Fp8Linear, fp8_matmul_supported, quantize_fp8, use_fp8_matmul


def layer(out_features=96, in_features=128, seed=0) -> tuple[Fp8Linear, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    full = torch.randn(out_features, in_features, generator=g) * 0.05
    fp8 = Fp8Linear(in_features, out_features, compute_dtype=torch.bfloat16)
    weight, scale = quantize_fp8(full)
    fp8.weight.data, fp8.weight_scale.data = weight, scale
    fp8.bias.data = torch.randn(out_features, generator=g).bfloat16()
    return fp8, full


def test_fp8_matmul_stays_near_the_dequantised_matmul():
    fp8, _ = layer()
    x = torch.randn(3, 40, 128, generator=torch.Generator().manual_seed(1))
    reference = fp8(x).float()
    assert use_fp8_matmul(fp8, True) == 1
    fast = fp8(x).float()
    assert fp8.scaled_mm and fast.shape == reference.shape == (3, 40, 96)
    rel = float((fast - reference).norm() / reference.norm())
    # The input is quantised to e4m3 (3 mantissa bits): measured 1.2% relative L2 on Gaussian inputs.
    assert 0 < rel < 0.05, rel


def test_off_is_the_dequantised_path_bit_for_bit():
    fp8, _ = layer()
    x = torch.randn(5, 128, generator=torch.Generator().manual_seed(2))
    before = fp8(x)
    use_fp8_matmul(fp8, True)
    use_fp8_matmul(fp8, False)
    assert torch.equal(fp8(x), before)


def test_e5m2_weights_and_other_devices_keep_dequantising():
    fp8, _ = layer()
    fp8.weight.data = fp8.weight.data.float().to(torch.float8_e5m2)
    assert use_fp8_matmul(fp8, True) == 0 and not fp8.scaled_mm
    assert not fp8_matmul_supported(torch.device("cpu"))
