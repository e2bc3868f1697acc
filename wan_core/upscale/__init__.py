"""upscale: video upscaling with spandrel models or resampling filters, in bounded memory.

Owns: `pipeline` (geometry, resampling, tiled model runs, the chunked clip loop), `loader` (spandrel
recognition of upscale model files), `temporal` (flow-guided stabiliser and colour fix).
May import: `wan_core.memory`, `wan_core.io`, `wan_core.config`.
"""
