"""ComfyUI's block-scaled and integer weight formats (nvfp4, mxfp8, int8 tensorwise), dequantised per call in torch.

What the files hold (ComfyUI 0.8.0 comfy/ops.py `MixedPrecisionOps` and comfy/quant_ops.py `QUANT_ALGOS`, whose
layouts live in the comfy-kitchen package; mxfp8 and int8 tensorwise as newer ComfyUI writes them):
  * nvfp4 (0.8.0): `weight` uint8 [R, C/2], two fp4 E2M1 codes a byte, the first of each pair in the HIGH
    nibble; R, C are out/in rounded up to 16. `weight_scale` float8_e4m3fn block scales, one per 16 weights
    of a row, in cuBLAS's swizzled 128x4 tile layout, shape [R rounded to 128, C/16 rounded to 4];
    `weight_scale_2` a float32 per-tensor scale. w = e2m1 * (weight_scale_2 * block scale).
  * mxfp8 (newer): `weight` float8_e4m3fn [R, C] (rounded up to 32), `weight_scale` uint8 E8M0 exponents, one
    per 32 weights, in the same swizzled layout. w = fp8 * 2^(e - 127), a zero exponent byte giving 0.
  * int8_tensorwise (newer): `weight` int8 [out, in], `weight_scale` float32, one value or one per row [out, 1];
    w = q * scale. With `"convrot": true` in the layer's config the rows were rotated group-wise by a
    normalised regular Hadamard matrix H (4x4 core, Kronecker powers; group size `convrot_groupsize`,
    default 256) before quantising, and w = (q * scale) @ H^T per group.
Block scales are put back in row-major order at load (`unswizzle`); the packed weights stay packed.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .linear import DequantLinear

E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
NVFP4_BLOCK, MXFP8_BLOCK = 16, 32
FORMATS = ("nvfp4", "mxfp8", "int8_tensorwise")


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def storage_shapes(fmt: str, out_features: int, in_features: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the weight and block-scale tensors a file stores for one [out, in] layer in `fmt`."""
    if fmt == "nvfp4":
        rows, cols = round_up(out_features, 16), round_up(in_features, 16)
        return {"weight": (rows, cols // 2), "weight_scale": (round_up(rows, 128), round_up(cols // NVFP4_BLOCK, 4))}
    if fmt == "mxfp8":
        rows, cols = round_up(out_features, 32), round_up(in_features, 32)
        return {"weight": (rows, cols), "weight_scale": (round_up(rows, 128), round_up(cols // MXFP8_BLOCK, 4))}
    if fmt == "int8_tensorwise":
        return {"weight": (out_features, in_features)}
    raise ValueError(f"unknown format {fmt}")


def unswizzle(scales: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """cuBLAS block-scale layout -> row-major [rows, cols]. In the stored order each 128-row x 4-column tile is
    contiguous (tiles row-major), and inside a tile the scale of (r, c) sits at (r % 32) * 16 + (r // 32) * 4 + c."""
    col_tiles = round_up(cols, 4) // 4
    r = torch.arange(rows, device=scales.device).unsqueeze(1)
    c = torch.arange(cols, device=scales.device).unsqueeze(0)
    index = ((r // 128) * col_tiles + c // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4
    return scales.reshape(-1)[index]


_E2M1_TABLES: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


def _e2m1_table(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The 16 fp4 E2M1 values in `dtype` on `device`, built once (not copied to the GPU at every call)."""
    key = (dtype, device)
    if key not in _E2M1_TABLES:
        _E2M1_TABLES[key] = torch.tensor(E2M1_VALUES, dtype=dtype, device=device)
    return _E2M1_TABLES[key]


def dequantize_nvfp4(packed: torch.Tensor, block_scale: torch.Tensor, tensor_scale: torch.Tensor, out_features: int,
                     in_features: int, dtype: torch.dtype) -> torch.Tensor:
    """nvfp4 -> [out, in] in `dtype`; `block_scale` row-major [R, C/16] fp8, `tensor_scale` float32 scalar."""
    rows, cols = packed.shape[0], packed.shape[1] * 2
    lut = _e2m1_table(dtype, packed.device)
    codes = torch.stack([packed >> 4, packed & 0x0F], dim=-1).reshape(rows, cols).long()
    scale = (tensor_scale.to(dtype) * block_scale.to(dtype)).unsqueeze(-1)  # [R, C/16, 1]
    values = lut[codes].reshape(rows, cols // NVFP4_BLOCK, NVFP4_BLOCK) * scale
    return values.reshape(rows, cols)[:out_features, :in_features]


def e8m0_to_float(exponents: torch.Tensor) -> torch.Tensor:
    """E8M0 bytes -> float32 powers of two 2^(e-127) (the byte 0 reads as 0, as comfy-kitchen does)."""
    bits = exponents.to(torch.int32) << 23
    return torch.where(exponents == 0, torch.zeros_like(bits), bits).view(torch.float32)


def dequantize_mxfp8(values: torch.Tensor, exponents: torch.Tensor, out_features: int, in_features: int,
                     dtype: torch.dtype) -> torch.Tensor:
    """mxfp8 -> [out, in] in `dtype`; `exponents` row-major [R, C/32] uint8 E8M0, product formed in float32."""
    rows, cols = values.shape
    scaled = values.float().reshape(rows, cols // MXFP8_BLOCK, MXFP8_BLOCK) * e8m0_to_float(exponents).unsqueeze(-1)
    return scaled.reshape(rows, cols)[:out_features, :in_features].to(dtype)


def hadamard(size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The normalised regular Hadamard matrix of `size` (a power of 4): Kronecker powers of a symmetric 4x4 core."""
    if size < 4 or 4 ** round(math.log(size, 4)) != size:
        raise ValueError(f"a regular Hadamard matrix needs a power-of-4 size, got {size}")
    core = torch.tensor([[1, 1, 1, -1], [1, 1, -1, 1], [1, -1, 1, 1], [-1, 1, 1, 1]], dtype=torch.float32)
    h = core
    while h.shape[0] < size:
        h = torch.kron(h, core)
    return (h / math.sqrt(size)).to(device)


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, rotation: torch.Tensor | None = None) -> torch.Tensor:
    """int8 -> [out, in] in `dtype`: q * scale in float32, rotated back group-wise when `rotation` (H) is given."""
    w = q.float() * scale.float()
    if rotation is not None:
        out_features, in_features = w.shape
        g = rotation.shape[0]
        w = (w.reshape(out_features, in_features // g, g) @ rotation.T.to(w.device)).reshape(out_features, in_features)
    return w.to(dtype)


class ComfyQuantLinear(DequantLinear):
    """A Linear holding one of ComfyUI's formats as stored (block scales unswizzled), dequantised for each call."""

    def __init__(self, in_features: int, out_features: int, bias: bool, fmt: str, *, compute_dtype: torch.dtype,
                 bias_dtype: torch.dtype = torch.float32, per_row_scale: bool = False, convrot_groupsize: int = 0,
                 device: torch.device | str | None = None) -> None:
        super().__init__(in_features, out_features, compute_dtype)
        self.format = fmt
        shapes = storage_shapes(fmt, out_features, in_features)
        rows, cols = shapes["weight"][0], round_up(in_features, 16 if fmt == "nvfp4" else 32)
        stored = {"nvfp4": torch.uint8, "mxfp8": torch.float8_e4m3fn, "int8_tensorwise": torch.int8}[fmt]
        self.weight = nn.Parameter(torch.empty(shapes["weight"], dtype=stored, device=device), requires_grad=False)
        if fmt == "nvfp4":
            self.register_buffer("weight_scale", torch.empty(rows, cols // NVFP4_BLOCK, dtype=torch.float8_e4m3fn, device=device))
            self.register_buffer("weight_scale_2", torch.empty((), dtype=torch.float32, device=device))
        elif fmt == "mxfp8":
            self.register_buffer("weight_scale", torch.empty(rows, cols // MXFP8_BLOCK, dtype=torch.uint8, device=device))
        else:
            self.register_buffer("weight_scale", torch.empty((out_features, 1) if per_row_scale else (),
                                                              dtype=torch.float32, device=device))
        self.convrot_groupsize = convrot_groupsize
        self.register_buffer("rotation", hadamard(convrot_groupsize, device) if convrot_groupsize else None)
        self.bias = nn.Parameter(torch.empty(out_features, dtype=bias_dtype, device=device),
                                 requires_grad=False) if bias else None

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.compute_dtype
        if self.format == "nvfp4":
            return dequantize_nvfp4(self.weight, self.weight_scale, self.weight_scale_2, self.out_features,
                                    self.in_features, dtype)
        if self.format == "mxfp8":
            return dequantize_mxfp8(self.weight, self.weight_scale, self.out_features, self.in_features, dtype)
        return dequantize_int8(self.weight, self.weight_scale, dtype, self.rotation)

    def storage(self) -> str:
        return self.format + (f" convrot {self.convrot_groupsize}" if self.convrot_groupsize else "")
