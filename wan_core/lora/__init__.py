"""lora: LoRA files applied to a loaded DiT expert, per expert, in every layout users download.

Owns: `keys` (recognising each stored key's format and mapping it to an official DiT parameter), `files`
(reading and checking a LoRA file against an expert's shapes, from headers only), `delta` (the weight change
each patch describes, `alpha / rank` scaled), `runtime` (run-time terms on quantised Linears: fp8 here, any
Linear with `dequantized_weight`), and `apply` (a LoRA stack merged into full-precision weights in place, changed
or removed later without reading the expert again, except removed patches of large weights, re-read exactly).
May import: `wan_core.dit`, `wan_core.io`, `wan_core.memory`, `wan_core.config`.
"""

from .apply import LoraStack, apply_stack, lora_state, runtime_bytes
from .files import LoraFile, read_lora

__all__ = ["LoraFile", "LoraStack", "apply_stack", "lora_state", "read_lora", "runtime_bytes"]
