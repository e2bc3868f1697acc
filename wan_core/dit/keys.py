"""DiT state-dict key names: diffusers `WanTransformer3DModel` <-> official `WanModel` (pure renames, same shapes).

The table is the inverse of diffusers' own converter (scripts/convert_wan_to_diffusers.py
TRANSFORMER_KEYS_RENAME_DICT, and VACE_TRANSFORMER_KEYS_RENAME_DICT for `vace_blocks.N`: the same block names
plus before_proj/after_proj = proj_in/proj_out); note the norm swap: official `norm3` (affine, before
cross-attention) is diffusers' `norm2`.
"""

from __future__ import annotations

# Top-level modules: (official prefix, diffusers prefix), matched at the start of a key.
_TOP_LEVEL: tuple[tuple[str, str], ...] = (
    ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
    ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
    ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
    ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
    ("time_projection.1.", "condition_embedder.time_proj."),
    ("head.modulation", "scale_shift_table"),
    ("head.head.", "proj_out."),
)
# Inside `blocks.N`: (official fragment, diffusers fragment), matched anywhere in a block key.
_IN_BLOCK: tuple[tuple[str, str], ...] = (
    (".modulation", ".scale_shift_table"),
    (".self_attn.q.", ".attn1.to_q."),
    (".self_attn.k.", ".attn1.to_k."),
    (".self_attn.v.", ".attn1.to_v."),
    (".self_attn.o.", ".attn1.to_out.0."),
    (".self_attn.norm_q.", ".attn1.norm_q."),
    (".self_attn.norm_k.", ".attn1.norm_k."),
    (".cross_attn.q.", ".attn2.to_q."),
    (".cross_attn.k.", ".attn2.to_k."),
    (".cross_attn.v.", ".attn2.to_v."),
    (".cross_attn.o.", ".attn2.to_out.0."),
    (".cross_attn.norm_q.", ".attn2.norm_q."),
    (".cross_attn.norm_k.", ".attn2.norm_k."),
    (".norm3.", ".norm2."),
    (".ffn.0.", ".ffn.net.0.proj."),
    (".ffn.2.", ".ffn.net.2."),
    (".before_proj.", ".proj_in."),  # VACE blocks only
    (".after_proj.", ".proj_out."),
)
_BLOCK_PREFIXES = ("blocks.", "vace_blocks.")


def _rename(key: str, source: int) -> str:
    target = 1 - source
    if key.startswith(_BLOCK_PREFIXES):
        for pair in _IN_BLOCK:
            if pair[source] in key:
                return key.replace(pair[source], pair[target], 1)
        return key
    for pair in _TOP_LEVEL:
        if key.startswith(pair[source]):
            return pair[target] + key[len(pair[source]):]
    return key


def official_to_diffusers(key: str) -> str:
    """Official WanModel key -> diffusers WanTransformer3DModel key."""
    return _rename(key, 0)


def diffusers_to_official(key: str) -> str:
    """diffusers WanTransformer3DModel key -> official WanModel key."""
    return _rename(key, 1)


def is_diffusers_layout(keys) -> bool:
    """True when the keys are diffusers' (condition_embedder / attn1 naming) rather than the official ones."""
    return any(k.startswith("condition_embedder.") or ".attn1." in k for k in keys)
