"""What each key of a LoRA file is: its tensor role (suffix) and the official DiT parameter it patches (prefix).

Suffixes (ComfyUI core's spellings, comfy/weight_adapter/*.py and comfy/lora.py): low-rank pairs
`.lora_up/.lora_down(.weight)`, PEFT `.lora_B/.lora_A(.weight)`, `.lora.up/.lora.down.weight`, `_lora.up/_lora.down
.weight`, `.lora_linear_layer.up/down.weight`, `.lora_B/A.default.weight`, with an optional `.alpha`; full deltas
`.diff` (and `.w_norm`) and bias deltas `.diff_b` (and `.b_norm`); LyCORIS LoHa `.hada_w{1,2}_{a,b}` and LoKr
`.lokr_w{1,2}(_a|_b)`. Names: the official module name with or without `diffusion_model.` (or `model.diffusion_model.`,
`transformer.`) in front; kohya `lora_unet_` + the name with '.' -> '_' (Wan-Fun's `lora_unet__` and SimpleTuner's
`lycoris_` too); diffusers `WanTransformer3DModel` names (attn1.to_q, ffn.net.0.proj, ...) through the
diffusers <-> official table of `dit.keys`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from ..dit.keys import diffusers_to_official, official_to_diffusers
from ..dit.model import DiTConfig, WanDiT

# suffix -> (family, role). Families: "lora" (up/down/alpha), "loha", "lokr", "diff" (weight delta), "diff_b".
SUFFIXES: dict[str, tuple[str, str]] = {
    ".lora_up.weight": ("lora", "up"), ".lora_down.weight": ("lora", "down"),
    ".lora_up": ("lora", "up"), ".lora_down": ("lora", "down"),
    ".lora_B.weight": ("lora", "up"), ".lora_A.weight": ("lora", "down"),
    ".lora_B": ("lora", "up"), ".lora_A": ("lora", "down"),
    ".lora_B.default.weight": ("lora", "up"), ".lora_A.default.weight": ("lora", "down"),
    ".lora.up.weight": ("lora", "up"), ".lora.down.weight": ("lora", "down"),
    "_lora.up.weight": ("lora", "up"), "_lora.down.weight": ("lora", "down"),
    ".lora_linear_layer.up.weight": ("lora", "up"), ".lora_linear_layer.down.weight": ("lora", "down"),
    ".alpha": ("alpha", "alpha"),
    ".diff": ("diff", "diff"), ".w_norm": ("diff", "diff"), ".diff_b": ("diff_b", "diff"), ".b_norm": ("diff_b", "diff"),
    ".hada_w1_a": ("loha", "w1_a"), ".hada_w1_b": ("loha", "w1_b"), ".hada_w2_a": ("loha", "w2_a"),
    ".hada_w2_b": ("loha", "w2_b"),
    ".lokr_w1": ("lokr", "w1"), ".lokr_w2": ("lokr", "w2"), ".lokr_w1_a": ("lokr", "w1_a"),
    ".lokr_w1_b": ("lokr", "w1_b"), ".lokr_w2_a": ("lokr", "w2_a"), ".lokr_w2_b": ("lokr", "w2_b"),
}
# Spellings of formats ComfyUI knows that this pack does not apply: suffix -> the format's name.
UNSUPPORTED: dict[str, str] = {
    ".hada_t1": "LoHa with Tucker decomposition (hada_t1/hada_t2)", ".hada_t2": "LoHa with Tucker decomposition",
    ".lokr_t2": "LoKr with Tucker decomposition (lokr_t2)", ".lora_mid.weight": "LoCon with a Tucker mid weight",
    ".dora_scale": "DoRA (dora_scale)", ".oft_blocks": "OFT", ".oft_diag": "OFT", ".boft_blocks": "BOFT",
    ".a1.weight": "GLoRA", ".a2.weight": "GLoRA", ".set_weight": "set_weight patches",
    ".reshape_weight": "reshape_weight patches",
}
NAME_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "unet.")
KOHYA_PREFIXES = ("lora_unet__", "lora_unet_", "lycoris_")
_ORDERED_SUFFIXES = sorted(SUFFIXES, key=len, reverse=True)
_ORDERED_UNSUPPORTED = sorted(UNSUPPORTED, key=len, reverse=True)


def split_key(key: str) -> tuple[str, str, str] | None:
    """(name before the suffix, family, role) of a stored key, or None when no LoRA suffix ends it."""
    for suffix in _ORDERED_SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            family, role = SUFFIXES[suffix]
            return key[: -len(suffix)], family, role
    return None


def unsupported_format(key: str) -> str | None:
    """The name of a ComfyUI-known adapter format this key belongs to that the pack does not apply, else None."""
    return next((UNSUPPORTED[s] for s in _ORDERED_UNSUPPORTED if key.endswith(s)), None)


@dataclass(frozen=True)
class ExpertNames:
    """The parameters of a DiT shape, and the spellings LoRA files use for the modules that own them."""

    shapes: dict[str, tuple[int, ...]]  # official parameter name -> shape
    owners: frozenset[str]  # module names that own a weight or bias, and parameter-only names (modulation)
    underscored: dict[str, str]  # kohya spelling (official or diffusers name, '.' -> '_') -> official name

    def target(self, module: str, family: str) -> str | None:
        """The parameter a patch of `family` on `module` changes (a bias for diff_b), or None if there is none."""
        if family == "diff_b":
            return module + ".bias" if module + ".bias" in self.shapes else None
        if module + ".weight" in self.shapes:
            return module + ".weight"
        return module if module in self.shapes else None

    def official(self, name: str) -> str | None:
        """The official module name a LoRA file's module name means, or None when it names nothing of this DiT."""
        for prefix in NAME_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        for prefix in KOHYA_PREFIXES:
            if name.startswith(prefix):
                return self.underscored.get(name[len(prefix):])
        if name in self.owners:
            return name
        renamed = diffusers_to_official(name + ".").removesuffix(".")
        return renamed if renamed in self.owners else None


@lru_cache(maxsize=8)
def expert_names(config: DiTConfig) -> ExpertNames:
    """ExpertNames of a DiT shape, from a meta-device model built once per config."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in WanDiT(config).state_dict().items()}
    owners = {k.rpartition(".")[0] if k.endswith((".weight", ".bias")) else k for k in shapes}
    underscored = {}
    for owner in owners:
        underscored[official_to_diffusers(owner + ".").removesuffix(".").replace(".", "_")] = owner
        underscored[owner.replace(".", "_")] = owner
    return ExpertNames(shapes, frozenset(owners), underscored)
