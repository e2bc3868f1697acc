"""text: the umT5-XXL text encoder, its SentencePiece tokenizer with the official prompt cleaning, and the
prompt-embedding cache.

Owns: `t5` (the encoder network), `tokenizer`, `encoder` (file layouts -> TextEncoder, key renames),
`prompt_cache` (LRU of embeddings, optional safetensors disk cache). May import: `wan_core.io`,
`wan_core.memory`, `wan_core.config`.
"""
