"""memory: how much memory there is and how the engine stays inside it.

Owns: `budget` (measured free VRAM/RAM, budgets, byte accounting, NotEnoughMemoryError), `cache` (the one
process-wide model cache every node shares), `offload` (all-or-nothing moves between pools, block
streaming), `tiling` (overlapping tile plans with feathered blending, for the VAE and the upscaler), `pace` (how much
work runs between two cancel checks, and chunked calls that honour it), `buffers` (a run's long-lived state
rewritten in place).
May import: `wan_core.io`, `wan_core.config`.
"""
