"""GGML block quantisation (the tensor types inside GGUF files), dequantised in torch on the compute device.

Each supported type stores a row as consecutive blocks of `BLOCK_BYTES[t]` bytes holding `BLOCK_SIZE[t]`
weights (ggml's ggml-quants.c layouts; the `gguf` package's `gguf.quants` is the reference the tests compare
against). Per-block scales are formed in float32 exactly as the reference does; the per-weight arithmetic then
runs in the requested dtype, so a float32 dequantisation equals the reference bit for bit and a bf16/fp16 one
is within that dtype's rounding of it. `GGMLLinear` keeps the blocks as a uint8 [out, row_bytes] tensor and
dequantises them for each call (ComfyUI-GGUF's scheme): a Q4_K weight stays at 4.5 bits in memory.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from .linear import DequantLinear

QK_K = 256
BLOCK_SIZE = {"Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32,
              "Q2_K": QK_K, "Q3_K": QK_K, "Q4_K": QK_K, "Q5_K": QK_K, "Q6_K": QK_K}
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "Q8_0": 34,
               "Q2_K": 84, "Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210}
GGML_TYPES = tuple(BLOCK_SIZE)


def _f16(b: torch.Tensor) -> torch.Tensor:
    """[n, 2] bytes -> [n, 1] float32 (little-endian IEEE half)."""
    return b.contiguous().view(torch.float16).float()


_SHIFTS: dict[tuple, torch.Tensor] = {}


def _shifts(values: tuple[int, ...], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A small uint8 shift-amount tensor, built once per device (not copied to the GPU at every call)."""
    key = (values, shape, device)
    if key not in _SHIFTS:
        _SHIFTS[key] = torch.tensor(values, dtype=torch.uint8, device=device).reshape(shape)
    return _SHIFTS[key]


def _nibbles(qs: torch.Tensor, groups: int, width: int) -> torch.Tensor:
    """[n, groups*width] bytes -> [n, groups, 2, width]: low nibbles first, then high nibbles, per group."""
    q = qs.reshape(qs.shape[0], groups, 1, width)
    return (q >> _shifts((0, 4), (1, 1, 2, 1), qs.device)) & 0x0F


def _bits(qh: torch.Tensor, count: int, width: int, step: int = 1, mask: int = 1) -> torch.Tensor:
    """[n, groups*width] bytes -> [n, groups, count, width]: field k is bits (k*step ...) of each byte."""
    q = qh.reshape(qh.shape[0], -1, 1, width)
    return (q >> _shifts(tuple(k * step for k in range(count)), (1, 1, count, 1), qh.device)) & mask


def _q8_0(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return b[:, 2:].contiguous().view(torch.int8).to(dtype).mul_(_f16(b[:, :2]).to(dtype))


def _q4_0(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    q = _nibbles(b[:, 2:], 1, 16).reshape(b.shape[0], 32)
    return q.to(dtype).sub_(8).mul_(_f16(b[:, :2]).to(dtype))


def _q4_1(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    q = _nibbles(b[:, 4:], 1, 16).reshape(b.shape[0], 32)
    return q.to(dtype).mul_(_f16(b[:, :2]).to(dtype)).add_(_f16(b[:, 2:4]).to(dtype))


def _five_bit(qh: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """Q5_0/Q5_1 quants 0..31: 4 low bits from nibbles, the 5th from a little-endian 32-bit mask."""
    n = qs.shape[0]
    high = _bits(qh, 8, 4).transpose(2, 3).reshape(n, 32)  # bit i of the 32-bit mask = byte i//8, bit i%8
    return _nibbles(qs, 1, 16).reshape(n, 32) | (high << 4)


def _q5_0(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return _five_bit(b[:, 2:6], b[:, 6:]).to(dtype).sub_(16).mul_(_f16(b[:, :2]).to(dtype))


def _q5_1(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    q = _five_bit(b[:, 4:8], b[:, 8:])
    return q.to(dtype).mul_(_f16(b[:, :2]).to(dtype)).add_(_f16(b[:, 2:4]).to(dtype))


def _q2_k(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    n = b.shape[0]
    scales, qs = b[:, :16], b[:, 16:80]
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    dl = (d * (scales & 0x0F).float()).reshape(n, 16, 1).to(dtype)
    ml = (dmin * (scales >> 4).float()).reshape(n, 16, 1).to(dtype)
    q = _bits(qs, 4, 32, step=2, mask=3).reshape(n, 16, 16)
    return q.to(dtype).mul_(dl).sub_(ml).reshape(n, QK_K)


def _q3_k(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    n = b.shape[0]
    hmask, qs, packed, d = b[:, :32], b[:, 32:96], b[:, 96:108], _f16(b[:, 108:110])
    low = _bits(packed[:, :8], 2, 8, step=4, mask=0x0F).reshape(n, 16)
    high = _bits(packed[:, 8:], 4, 4, step=2, mask=0x03).reshape(n, 16)
    scales = ((low | (high << 4)).to(torch.int8) - 32).float()
    dl = (d * scales).reshape(n, 16, 1).to(dtype)
    ql = _bits(qs, 4, 32, step=2, mask=3).reshape(n, 16, 16).to(torch.int8)
    qh = (_bits(hmask, 8, 32).reshape(n, 16, 16) ^ 1).to(torch.int8)  # a set mask bit means no -4 offset
    return (ql - (qh << 2)).to(dtype).mul_(dl).reshape(n, QK_K)


def _k_scale_min(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: 12 bytes -> eight 6-bit scales and eight 6-bit mins per super-block."""
    n = packed.shape[0]
    d, m, md = packed.reshape(n, 3, 4).unbind(1)
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mn


def _k_affine(b: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K per-sub-block scale and offset, [n, 8, 1] each, formed in float32."""
    n = b.shape[0]
    sc, mn = _k_scale_min(b[:, 4:16])
    scale = (_f16(b[:, :2]) * sc.float()).reshape(n, 8, 1).to(dtype)
    offset = (_f16(b[:, 2:4]) * mn.float()).reshape(n, 8, 1).to(dtype)
    return scale, offset


def _q4_k(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    n = b.shape[0]
    scale, offset = _k_affine(b, dtype)
    q = _nibbles(b[:, 16:], 4, 32).reshape(n, 8, 32)
    return q.to(dtype).mul_(scale).sub_(offset).reshape(n, QK_K)


def _q5_k(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    n = b.shape[0]
    scale, offset = _k_affine(b, dtype)
    ql = _nibbles(b[:, 48:], 4, 32).reshape(n, 8, 32)
    qh = _bits(b[:, 16:48], 8, 32).reshape(n, 8, 32)
    return (ql | (qh << 4)).to(dtype).mul_(scale).sub_(offset).reshape(n, QK_K)


def _q6_k(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    n = b.shape[0]
    ql, qh, scales = b[:, :128], b[:, 128:192], b[:, 192:208]
    d = (_f16(b[:, 208:210]) * scales.contiguous().view(torch.int8).float()).reshape(n, 16, 1).to(dtype)
    low = _nibbles(ql, 2, 64).reshape(n, 8, 32)
    high = _bits(qh, 4, 32, step=2, mask=3).reshape(n, 8, 32)
    q = (low | (high << 4)).reshape(n, 16, 16)
    return q.to(dtype).sub_(32).mul_(d).reshape(n, QK_K)


_DEQUANT: dict[str, Callable[[torch.Tensor, torch.dtype], torch.Tensor]] = {
    "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "Q8_0": _q8_0,
    "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k,
}


def row_bytes(ggml_type: str, row: int) -> int:
    """Bytes one row of `row` weights takes in `ggml_type`."""
    return row // BLOCK_SIZE[ggml_type] * BLOCK_BYTES[ggml_type]


def dequantize(data: torch.Tensor, ggml_type: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """GGML blocks (uint8, any shape holding whole blocks) -> a tensor of `shape` in `dtype`, on data's device."""
    blocks = data.reshape(-1, BLOCK_BYTES[ggml_type])
    return _DEQUANT[ggml_type](blocks, dtype).reshape(shape)


class GGMLLinear(DequantLinear):
    """A Linear whose weight stays in GGML blocks (uint8 [out, row_bytes]) and is dequantised for each call."""

    def __init__(self, in_features: int, out_features: int, bias: bool, ggml_type: str, *,
                 compute_dtype: torch.dtype = torch.bfloat16, bias_dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        super().__init__(in_features, out_features, compute_dtype)
        if in_features % BLOCK_SIZE[ggml_type]:
            raise ValueError(f"{ggml_type} packs rows in blocks of {BLOCK_SIZE[ggml_type]}; {in_features} is not a multiple")
        self.ggml_type = ggml_type
        self.weight = nn.Parameter(torch.empty(out_features, row_bytes(ggml_type, in_features), dtype=torch.uint8,
                                               device=device), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features, dtype=bias_dtype, device=device),
                                 requires_grad=False) if bias else None

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return dequantize(self.weight, self.ggml_type, (self.out_features, self.in_features), dtype or self.compute_dtype)

    def storage(self) -> str:
        return f"GGUF {self.ggml_type}"
