"""Per-call dequantisation of one A14B FFN weight (13824 x 5120) in every stored format, against references.

For each GGML type: our torch dequantiser (`wan_core.io.quant.ggml`, float32 on the CPU; bf16 on a GPU when one
is present) against the gguf package's numpy reference dequantiser on the same blocks (the reference is CPU-only).
For nvfp4 / mxfp8 / int8: ours against comfy-kitchen's (ComfyUI's) eager dequantisation when it is installed.
Times are medians of `--repeats` calls after one warm-up; `ratio` is reference / ours in the same run. Also the
bytes each format keeps per weight (what a layer costs in memory while it stays packed).

    python -m bench.quant_dequant [--repeats 3] [--rows 13824] [--cols 5120]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from wan_core.io.quant import comfy_formats as cf  # noqa: E402
from wan_core.io.quant.ggml import GGML_TYPES, dequantize  # noqa: E402
from wan_core.testing.tiny import gguf as tiny_gguf  # noqa: E402


def _median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _ggml_rows(w: np.ndarray, repeats: int) -> list[str]:
    import gguf

    lines = []
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for name in ("Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q4_0", "Q3_K"):
        assert name in GGML_TYPES
        blocks = tiny_gguf.quantize(w, name)
        data = torch.from_numpy(np.ascontiguousarray(blocks)).to(device)
        ours = _median_seconds(lambda: dequantize(data, name, w.shape, dtype), repeats)
        ref = _median_seconds(lambda: gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[name]), repeats)
        bits = 8 * blocks.nbytes / w.size
        lines.append(f"{name:16s} {bits:5.2f} bits/weight  ours {ours * 1e3:8.1f} ms ({device.type}, {str(dtype)[6:]})  "
                     f"gguf numpy {ref * 1e3:8.1f} ms  ratio {ref / ours:6.1f}x")
    return lines


def _comfy_rows(w: torch.Tensor, repeats: int) -> list[str]:
    try:
        from comfy_kitchen.tensor import QuantizedTensor
    except ImportError:
        return ["comfy-kitchen not installed: nvfp4 / mxfp8 / int8 rows skipped"]
    lines = []
    rows, cols = w.shape
    for fmt, layout in (("nvfp4", "TensorCoreNVFP4Layout"), ("mxfp8", "TensorCoreMXFP8Layout"),
                        ("int8_tensorwise", "TensorWiseINT8Layout")):
        qt = QuantizedTensor.from_float(w, layout)
        sd = qt.state_dict("w")
        if fmt == "int8_tensorwise":
            ours = _median_seconds(lambda: cf.dequantize_int8(sd["w"], sd["w_scale"], torch.float32), repeats)
        elif fmt == "nvfp4":
            scales = cf.unswizzle(sd["w_scale"].view(torch.uint8), rows, cols // 16).view(torch.float8_e4m3fn)
            ours = _median_seconds(lambda: cf.dequantize_nvfp4(sd["w"], scales, sd["w_scale_2"], rows, cols,
                                                               torch.float32), repeats)
        else:
            scales = cf.unswizzle(sd["w_scale"].view(torch.uint8), rows, cols // 32)
            ours = _median_seconds(lambda: cf.dequantize_mxfp8(sd["w"], scales, rows, cols, torch.float32), repeats)
        ref = _median_seconds(qt.dequantize, repeats)
        bits = 8 * sum(t.numel() * t.element_size() for t in sd.values()) / w.numel()
        lines.append(f"{fmt:16s} {bits:5.2f} bits/weight  ours {ours * 1e3:8.1f} ms (cpu, float32)  "
                     f"comfy-kitchen {ref * 1e3:8.1f} ms  ratio {ref / ours:6.1f}x")
    return lines


def main(argv: list[str]) -> int:
    """Print one line per format; returns 0."""
    parser = argparse.ArgumentParser(prog="python -m bench.quant_dequant", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=13824)
    parser.add_argument("--cols", type=int, default=5120)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    w = torch.randn(args.rows, args.cols) / args.cols**0.5
    print(f"one {args.rows} x {args.cols} weight, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for line in _ggml_rows(w.numpy(), args.repeats) + _comfy_rows(w, args.repeats):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
