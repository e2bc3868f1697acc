"""io: reading weights files safely and lazily; knows file formats, nothing about any model.

Owns: `safe` (the checks under every read: contained paths, bounded JSON, validated safetensors headers),
`checkpoint` (safetensors / sharded index / .pth / GGUF opened header-first, one `Checkpoint` view of
names, shapes and dtypes, file identity for cache keys), `gguf` (GGUF headers and tensor byte locations, via
the `gguf` package), `reader` (straight-to-device tensor reads through one staging buffer, from validated
locations) and `quant` (the storage formats in circulation: fp8, GGML blocks, ComfyUI's nvfp4 / mxfp8 / int8,
and the Linears that compute with them). May import: `wan_core.config` only.
"""
