"""upscale: video upscaling with spandrel models or resampling filters, in bounded memory.

Owns: `pipeline` (geometry, resampling, tiled model runs, the chunked clip loop), `cost` (memory and work of a
request: refusals before allocating, the tile/batch plan), `loader` (spandrel recognition of upscale model
files, read through io's safe reader), `temporal` (flow-guided stabiliser and colour fix).
May import: `wan_core.memory`, `wan_core.io`, `wan_core.config`.
"""
