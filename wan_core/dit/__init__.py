"""dit: one Wan2.2 DiT expert, in the official module and key layout, and how to load it from any file layout.

Owns: `model` (WanDiT, blocks, head, the activation estimate), `vace` (VACE blocks, layer mapping, hint streams),
`vace_files` (VACE weights merged or in module files, checked against their expert), `rope` (3-D rotary tables in float64),
`embeddings` (the float64 sinusoid), `attention` (the attention kernels behind one interface, run in cancel-checked query chunks), `keys`
(diffusers <-> official names), `loader` (`inspect_dit`, `load_dit`). May import: `wan_core.io`,
`wan_core.memory`, `wan_core.config`.
"""
