"""Tiny GGUF experts as city96's ComfyUI-GGUF converter writes them, in every quantisation users download.

The `gguf` package writes the file and quantises the types it implements (F16, BF16, Q8_0, Q4_0, Q4_1,
Q5_0, Q5_1); the K-quants it cannot write (Q3_K, Q4_K, Q5_K, Q6_K) are packed here by ggml's block
definitions (plain absmax scales, not llama.cpp's search, which only changes which values are chosen, not
how they are laid out). Like the converter: 1-D tensors, tensors of at most 1024 values and `.modulation`
stay F32, the 5-D patch embedding is added back as F32 (its fix_5d_tensors step), `general.architecture` is
"wan". A file type such as Q4_K_M mixes types per tensor the way llama.cpp's presets do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

QK_K = 256
# File presets: main type, and the type of the tensors llama.cpp keeps higher (attention v, FFN down).
PRESETS = {
    "F16": ("F16", "F16"), "BF16": ("BF16", "BF16"), "Q8_0": ("Q8_0", "Q8_0"), "Q6_K": ("Q6_K", "Q6_K"),
    "Q5_K_M": ("Q5_K", "Q6_K"), "Q5_K_S": ("Q5_K", "Q5_K"), "Q4_K_M": ("Q4_K", "Q6_K"), "Q4_K_S": ("Q4_K", "Q4_K"),
    "Q4_0": ("Q4_0", "Q4_0"), "Q3_K_S": ("Q3_K", "Q3_K"), "Q3_K_M": ("Q3_K", "Q4_K"),
}
_HIGHER = (".self_attn.v.weight", ".ffn.2.weight")


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).reshape(-1, 1).view(np.uint8)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a), where=b != 0)


def _affine_k(x: np.ndarray, qmax: int) -> tuple[np.ndarray, ...]:
    """Q4_K/Q5_K: per 32-value sub-block scale and min as 6-bit multiples of two fp16 super-block scales."""
    sub = x.reshape(-1, 8, 32)
    offset = -np.minimum(sub.min(-1), 0)
    scale = (sub.max(-1) + offset) / qmax
    d, dmin = (scale.max(-1) / 63).astype(np.float16), (offset.max(-1) / 63).astype(np.float16)
    sc = np.clip(np.rint(_safe_div(scale, d.astype(np.float32)[:, None])), 0, 63).astype(np.uint8)
    mn = np.clip(np.rint(_safe_div(offset, dmin.astype(np.float32)[:, None])), 0, 63).astype(np.uint8)
    eff = d.astype(np.float32)[:, None] * sc
    q = np.clip(np.rint(_safe_div(sub + (dmin.astype(np.float32)[:, None] * mn)[..., None], eff[..., None])), 0, qmax)
    packed = np.concatenate([(sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6), (mn[:, :4] & 63) | ((mn[:, 4:] >> 4) << 6),
                             (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)], axis=1).astype(np.uint8)
    return d, dmin, packed, q.astype(np.uint8)


def _nibble_pairs(q: np.ndarray) -> np.ndarray:
    """[n, 8, 32] -> [n, 128]: sub-blocks 2i and 2i+1 share bytes 32i..32i+31 (low, high nibble)."""
    q = q.reshape(-1, 4, 2, 32) & 0x0F
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)


def _crumbs(q: np.ndarray, groups: int) -> np.ndarray:
    """[n, 256] 2-bit values -> [n, 64]: value h*128 + s*32 + p at bits 2s of byte h*32 + p."""
    q = q.reshape(-1, groups, 4, 32).astype(np.uint8) & 3
    return sum(q[:, :, s] << (2 * s) for s in range(4)).reshape(-1, groups * 32).astype(np.uint8)


def _q4_k(x: np.ndarray) -> np.ndarray:
    d, dmin, scales, q = _affine_k(x, 15)
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), scales, _nibble_pairs(q)], axis=1)


def _q5_k(x: np.ndarray) -> np.ndarray:
    d, dmin, scales, q = _affine_k(x, 31)
    high = sum(((q[:, i] >> 4) & 1) << i for i in range(8)).astype(np.uint8)  # [n, 32]: bit i = sub-block i
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), scales, high, _nibble_pairs(q)], axis=1)


def _symmetric(x: np.ndarray, qmin: int, qmax: int, scale_max: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q3_K/Q6_K: per 16-value sub-block scale as an integer multiple of one fp16 scale; signed quants."""
    sub = x.reshape(-1, 16, 16)
    scale = np.abs(sub).max(-1) / -qmin
    d = (scale.max(-1) / scale_max).astype(np.float16)
    sc = np.clip(np.rint(_safe_div(scale, d.astype(np.float32)[:, None])), 0, scale_max)
    q = np.clip(np.rint(_safe_div(sub, (d.astype(np.float32)[:, None] * sc)[..., None])), qmin, qmax)
    return d, sc.astype(np.int8), q.astype(np.int8).reshape(-1, QK_K)


def _q6_k(x: np.ndarray) -> np.ndarray:
    d, sc, q = _symmetric(x, -32, 31, 127)
    u = (q + 32).astype(np.uint8).reshape(-1, 2, 2, 64)
    low = ((u[:, :, 0] & 0x0F) | ((u[:, :, 1] & 0x0F) << 4)).reshape(-1, 128)
    return np.concatenate([low, _crumbs((q + 32).astype(np.uint8) >> 4, 2), sc.view(np.uint8), _f16_bytes(d)], axis=1)


def _q3_k(x: np.ndarray) -> np.ndarray:
    d, sc, q = _symmetric(x, -4, 3, 31)
    hbits = (q >= 0).astype(np.uint8).reshape(-1, 8, 32)  # a set bit means "no -4 offset"
    hmask = sum(hbits[:, b] << b for b in range(8)).astype(np.uint8)
    stored = (sc.astype(np.int16) + 32).astype(np.uint8)
    low, high = stored & 0x0F, stored >> 4
    scales = np.concatenate([low[:, :8] | (low[:, 8:] << 4),
                             sum(high[:, 4 * s: 4 * s + 4] << (2 * s) for s in range(4)).astype(np.uint8)], axis=1)
    return np.concatenate([hmask, _crumbs(q.view(np.uint8) & 3, 2), scales, _f16_bytes(d)], axis=1)


_K_PACKERS = {"Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}


def quantize(values: np.ndarray, type_name: str) -> np.ndarray:
    """float32 [..., row] -> the type's stored bytes (uint8 [..., row_bytes]) or float array for F16/F32."""
    import gguf

    qtype = gguf.GGMLQuantizationType[type_name]
    if type_name in _K_PACKERS:
        rows = values.reshape(-1, values.shape[-1])
        blocks = _K_PACKERS[type_name](rows.reshape(-1, QK_K).astype(np.float32))
        return blocks.reshape(*values.shape[:-1], -1)
    return gguf.quants.quantize(values.astype(np.float32), qtype)


def tensor_type(key: str, shape: tuple[int, ...], preset: str) -> str:
    """The GGUF type the converter gives `key` in a `preset` file (F32 for small and 1-D tensors)."""
    main, higher = PRESETS[preset]
    numel = int(np.prod(shape))
    if len(shape) == 1 or numel <= 1024 or ".modulation" in key or key.endswith("modulation") or len(shape) > 4:
        return "F32"
    chosen = higher if key.endswith(_HIGHER) else main
    block = 32 if chosen in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1") else QK_K if chosen.endswith("_K") else 1
    return chosen if shape[-1] % block == 0 else "F16"


def write_gguf(path: str | Path, sd: dict[str, torch.Tensor], preset: str, prefix: str = "") -> dict[str, str]:
    """Write a GGUF expert of float32 weights `sd` in `preset`; returns key -> the GGUF type each got."""
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch="wan")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    types = {}
    for key, value in sd.items():
        types[key] = kind = tensor_type(key, tuple(value.shape), preset)
        data = value.detach().to(torch.float32).numpy()
        stored = data if kind == "F32" else quantize(data, kind)
        writer.add_tensor(prefix + key, stored, raw_dtype=gguf.GGMLQuantizationType[kind])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return types


def reference_weights(path: str | Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a GGUF file dequantised to float32 by the gguf package's own reference dequantiser."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    out = {}
    for t in reader.tensors:
        shape = tuple(int(v) for v in reversed(t.shape.tolist()))
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        out[t.name[len(prefix):] if t.name.startswith(prefix) else t.name] = torch.from_numpy(
            np.array(values, dtype=np.float32)).reshape(shape)
    return out
