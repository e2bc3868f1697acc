"""io: reading weights files safely and lazily; knows file formats, nothing about any model.

Owns: `checkpoint` (safetensors / sharded index / .pth opened header-first, one `Checkpoint` view of
names, shapes and dtypes, file identity for cache keys) and `quant` (the fp8 storage formats in circulation
and the Linear that computes with them). May import: `wan_core.config` only.
"""
