"""quant: the weight storage formats in circulation and the Linear layers that compute with them.

Owns: `linear` (the dequantise-per-call Linear base), `fp8` (plain / scaled fp8, per-tensor scales),
`ggml` (GGUF's GGML block types), `comfy_formats` (ComfyUI's nvfp4, mxfp8 and int8 tensorwise) and
`layout` (which layers of a file are stored how, and refusals that name the format), `packed` (packed layers
into a model: kept, or dequantised at load). May import: `wan_core.io.checkpoint`, `wan_core.io.reader`.
"""

from .fp8 import FP8_DTYPES, Fp8Layout, Fp8Linear, describe_fp8, quantize_fp8, swap_in_fp8_linears
from .linear import DequantLinear

__all__ = ["FP8_DTYPES", "DequantLinear", "Fp8Layout", "Fp8Linear", "describe_fp8", "quantize_fp8",
           "swap_in_fp8_linears"]
