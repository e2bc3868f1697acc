"""A LoRA file read against one expert's shapes: which parameter each patch changes, checked from headers only.

`read_lora(path, config)` groups the stored keys into patches (a low-rank pair with its alpha, a LoHa or LoKr set,
a full delta, a bias delta), maps each to an official DiT parameter and checks every shape before any weight is
touched, so a file that does not fit fails whole: truncated, not a LoRA, for another model, or with a rank that does
not fit, each named with the file and its first bad key. Keys that match nothing are named in one warning.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..dit.model import DiTConfig
from ..io.checkpoint import Checkpoint, CheckpointError, file_identity, open_checkpoint, require_float
from .keys import ExpertNames, expert_names, split_key, unsupported_format

log = logging.getLogger("wan_core.lora")

_FOR_A14B = ("Use a LoRA made for Wan2.2-T2V-A14B (or Wan2.1-T2V-14B, which has the same layers), in models/loras/.")
_WIDTHS = {1536: "Wan2.1 / Wan2.2 1.3B (width 1536)", 3072: "Wan2.2-TI2V-5B (width 3072)",
           5120: "a 14B Wan model (width 5120)"}
_FAMILIES = (  # (key fragment, model family) for files that match nothing
    ("double_blocks", "Flux or HunyuanVideo (double_blocks)"), ("single_blocks", "Flux (single_blocks)"),
    ("input_blocks", "a Stable Diffusion UNet (SD 1.x / SDXL)"), ("down_blocks", "a Stable Diffusion UNet (SD 1.x / SDXL)"),
    ("lora_te", "a Stable Diffusion text encoder"), ("joint_blocks", "Stable Diffusion 3"),
    ("transformer_blocks", "another transformer (LTX-Video, CogVideoX, Qwen-Image or SD3: transformer_blocks)"),
)


@dataclass(frozen=True)
class Patch:
    """One change to one DiT parameter: its family (lora, loha, lokr, diff, diff_b) and stored keys by role."""

    target: str
    family: str
    roles: tuple[tuple[str, str], ...]  # (role, stored key)
    alpha: str | None = None  # stored key of the alpha scalar

    def key(self, role: str) -> str | None:
        """The stored key of `role` (up, down, w1_a, ..., diff), or None."""
        return dict(self.roles).get(role)


@dataclass(frozen=True)
class LoraFile:
    """A LoRA file's patches for one expert shape, and the keys that matched nothing."""

    path: Path
    identity: tuple
    patches: tuple[Patch, ...]
    unmatched: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.path.name

    def open(self) -> Checkpoint:
        """The file's tensors, read on demand."""
        return open_checkpoint(self.path)


def read_lora(path: str | os.PathLike, config: DiTConfig) -> LoraFile:
    """The file's patches for a DiT of `config`, checked whole (CheckpointError naming the file and first bad key);
    read once per file identity and shape."""
    try:
        identity = file_identity(path)
    except OSError:  # missing or unreadable: the checkpoint reader says so in its own words
        open_checkpoint(path)
        raise
    return _read(identity, config)


@lru_cache(maxsize=64)
def _read(identity: tuple, config: DiTConfig) -> LoraFile:
    path = Path(identity[0])
    ckpt = open_checkpoint(path)  # a missing, truncated or non-safetensors file fails here, naming itself
    names = expert_names(config)
    groups, alphas, unmatched = _group(ckpt, names, path)
    patches = [Patch(target, family, tuple(sorted(roles.items())), alphas.get(module))
               for (module, family, target), roles in groups.items()]
    _check_complete(patches, path)
    require_float(ckpt, [key for p in patches for _, key in p.roles] + list(alphas.values()), "LoRA")
    problems = [(p, problem) for p in patches if (problem := _shape_problem(p, ckpt, names.shapes[p.target]))]
    if problems and len(problems) == len(patches):
        raise CheckpointError(f"{path}: no tensor of this LoRA fits a Wan2.2-T2V-A14B expert of width {config.dim} "
                              f"({_first(problems)}); it seems to be for {_seems_for(ckpt, problems)}. " + _FOR_A14B)
    if problems:
        raise CheckpointError(f"{path}: {_first(problems)} ({len(problems)} of {len(patches)} patches do not fit). "
                              "The file is damaged or mixes LoRAs of different models. " + _FOR_A14B)
    if unmatched:
        shown = ", ".join(unmatched[:10]) + (f" and {len(unmatched) - 10} more" if len(unmatched) > 10 else "")
        log.warning("LoRA %s: %d of %d keys match nothing in a Wan2.2 T2V expert and are ignored: %s",
                    path.name, len(unmatched), len(ckpt), shown)
    return LoraFile(path, identity, tuple(sorted(patches, key=lambda p: (p.target, p.family))), tuple(unmatched))


def _group(ckpt: Checkpoint, names: ExpertNames, path: Path):
    """(module, family, target) -> {role: key}, module -> alpha key, and the keys that match nothing."""
    groups: dict[tuple[str, str, str], dict[str, str]] = {}
    alphas: dict[str, str] = {}
    unmatched: list[str] = []
    recognised = 0
    for key in ckpt.keys():
        fmt = unsupported_format(key)
        if fmt is not None:
            raise CheckpointError(f"{path}: '{key}' is part of {fmt}, a LoRA format this pack does not apply. "
                                  "Use a plain LoRA (lora_up/lora_down or lora_A/lora_B), LoHa or LoKr file.")
        parts = split_key(key)
        if parts is None:
            unmatched.append(key)
            continue
        recognised += 1
        raw, family, role = parts
        module = names.official(raw)
        target = names.target(module, family) if module else None
        if family == "alpha" and module:
            alphas[module] = key
        elif target is None:
            unmatched.append(key)
        else:
            groups.setdefault((module, family, target), {})[role] = key
    if not recognised:
        raise CheckpointError(f"{path}: this is not a LoRA: none of its {len(ckpt)} tensors has a LoRA suffix "
                              f"(.lora_up.weight, .lora_A.weight, .diff, .hada_w1_a, ...); {_what_it_is(ckpt)} "
                              "LoRA files go in models/loras/.")
    _refuse_image_models(ckpt, path)
    if not groups:
        raise CheckpointError(f"{path}: no key of this LoRA names a layer of a Wan2.2 T2V expert (e.g. "
                              f"'{unmatched[0]}'); it seems to be for {_seems_for(ckpt, [])}. " + _FOR_A14B)
    return groups, alphas, unmatched


_NEEDS = {"lora": ({"up", "down"},), "loha": ({"w1_a", "w1_b", "w2_a", "w2_b"},), "diff": ({"diff"},),
          "diff_b": ({"diff"},), "lokr": ({"w1", "w2"}, {"w1_a", "w1_b", "w2"}, {"w1", "w2_a", "w2_b"},
                                           {"w1_a", "w1_b", "w2_a", "w2_b"})}


def _check_complete(patches: list[Patch], path: Path) -> None:
    """Every patch has the tensors its family needs (an up without its down is a damaged file)."""
    for patch in patches:
        have = {role for role, _ in patch.roles}
        if not any(need <= have for need in _NEEDS[patch.family]):
            missing = sorted(min(_NEEDS[patch.family], key=lambda n: len(n - have)) - have)
            raise CheckpointError(f"{path}: '{patch.roles[0][1]}' has no matching {', '.join(missing)} tensor "
                                  f"({patch.family} patch of {patch.target}); the file is incomplete. Download it again.")


def _shape_problem(patch: Patch, ckpt: Checkpoint, shape: tuple[int, ...]) -> str | None:
    """Why the patch's tensors cannot change a parameter of `shape`, or None when they fit."""
    out, inner = shape[0], math.prod(shape[1:])
    s = {role: ckpt.infos[key].shape for role, key in patch.roles}
    if patch.family in ("diff", "diff_b"):
        ok = math.prod(s["diff"]) == math.prod(shape)
    elif patch.family == "lora":
        up, down = s["up"], s["down"]
        ok = (len(up) >= 2 and len(down) >= 2 and up[0] == out and up[1] == down[0] and math.prod(up[2:]) == 1
              and math.prod(down[1:]) == inner)
    elif patch.family == "loha":
        ok = all(len(v) == 2 for v in s.values()) and s["w1_a"][0] == s["w2_a"][0] == out and \
            s["w1_a"][1] == s["w1_b"][0] and s["w2_a"][1] == s["w2_b"][0] and s["w1_b"][1] == s["w2_b"][1] == inner
    else:
        ok = all(len(v) == 2 for v in s.values()) and _kron_shape(s) == (out, inner)
    if ok:
        return None
    found = ", ".join(f"{role} {list(v)}" for role, v in sorted(s.items()))
    return f"'{patch.roles[0][1]}' ({found}) does not fit {patch.target} of shape {list(shape)}"


def _kron_shape(s: dict[str, tuple[int, ...]]) -> tuple[int, int] | None:
    """The shape of kron(w1, w2) of a LoKr patch (either factor stored whole or as a product), or None."""
    sides = []
    for n in ("1", "2"):
        whole, a, b = s.get(f"w{n}"), s.get(f"w{n}_a"), s.get(f"w{n}_b")
        if whole is None and a[1] != b[0]:
            return None
        sides.append(whole if whole is not None else (a[0], b[1]))
    return sides[0][0] * sides[1][0], sides[0][1] * sides[1][1]


def _first(problems: list[tuple[Patch, str]]) -> str:
    return problems[0][1]


def _seems_for(ckpt: Checkpoint, problems: list[tuple[Patch, str]]) -> str:
    """Which model a LoRA that fits nothing of this expert seems to be for, from its shapes and key names."""
    for patch, _ in problems:
        if ".self_attn.q." in patch.target + "." or ".cross_attn.q." in patch.target + ".":
            key = patch.key("up") or patch.key("diff") or patch.key("w1_a")
            width = ckpt.infos[key].shape[0] if key else 0
            return _WIDTHS.get(width, f"a Wan model of width {width}")
    keys = ckpt.keys()
    for fragment, family in _FAMILIES:
        example = next((k for k in keys if fragment in k), None)
        if example:
            return f"{family}, e.g. '{example}'"
    return f"another model (keys such as '{sorted(keys)[0]}')"


def _refuse_image_models(ckpt: Checkpoint, path: Path) -> None:
    """A LoRA trained on Wan2.1's image-to-video model (image cross-attention k_img/v_img, img_emb) is refused."""
    image = next((k for k in ckpt.keys() if "k_img" in k or "v_img" in k or "img_emb" in k), None)
    if image is not None:
        raise CheckpointError(f"{path}: this LoRA is for a Wan image-to-video model (Wan2.1 I2V / FLF2V: it has "
                              f"image cross-attention tensors such as '{image}'); this pack runs text-to-video. "
                              + _FOR_A14B)


def _what_it_is(ckpt: Checkpoint) -> str:
    keys = ckpt.keys()
    if any(k.endswith("patch_embedding.weight") for k in keys):
        return "it is a full Wan diffusion model (load it with the Wan2.2 MoE Model Loader)."
    if any("decoder." in k for k in keys):
        return "it looks like a VAE."
    if any("SelfAttention" in k or "shared.weight" in k for k in keys):
        return "it looks like a text encoder."
    return f"it holds tensors such as '{sorted(keys)[0] if keys else 'none'}'."
