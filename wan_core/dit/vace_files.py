"""Recognising VACE weights in checkpoints: merged into an expert, or a module-only file checked against its expert.

Merged files (Comfy-Org's wan2.2_fun_vace_*_14B_*) hold the expert and `vace_patch_embedding` / `vace_blocks.N`;
module files (Kijai's Wan2_2_Fun_VACE_module_A14B_HIGH_* / _LOW_*) hold only the VACE tensors and attach to a
plain T2V expert. Block count and widths come from the tensors, never from file names; a module must fit its
expert (width, FFN width, patch, a block count that divides the expert's blocks) and share its storage family
(fp8 with fp8, 16/32-bit floats with 16/32-bit floats).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import torch

from ..io.checkpoint import Checkpoint, CheckpointError
from ..io.quant import FP8_DTYPES
from .model import DiTConfig
from .vace import layer_mapping

VACE_PREFIXES = ("vace_patch_embedding.", "vace_blocks.")
_VACE_BLOCK = re.compile(r"^vace_blocks\.(\d+)\.")
_MODULES = ("VACE module files are per expert and per model: Wan2_2_Fun_VACE_module_A14B_HIGH_bf16.safetensors "
            "with the high-noise expert, ..._LOW_... with the low-noise one (fp8 modules with fp8 experts).")


def is_vace_key(key: str) -> bool:
    """True for the tensors of the VACE branch."""
    return key.startswith(VACE_PREFIXES)


def vace_shape(ckpt: Checkpoint, path: Path) -> tuple[int, int] | None:
    """(VACE block count, VACE input channels) read from a checkpoint's tensors; None when it has no VACE branch."""
    blocks = {int(m.group(1)) for k in ckpt.keys() if (m := _VACE_BLOCK.match(k))}
    embedding = ckpt.infos.get("vace_patch_embedding.weight")
    if embedding is None and not blocks:
        return None
    if embedding is None or not blocks or len(embedding.shape) != 5:
        found = "vace_blocks.N tensors but no 5-D vace_patch_embedding.weight" if blocks else \
            "vace_patch_embedding but no vace_blocks.N tensors"
        raise CheckpointError(f"{path}: the VACE branch is incomplete ({found}). Download the file again.")
    if sorted(blocks) != list(range(len(blocks))):
        raise CheckpointError(f"{path}: VACE blocks {sorted(blocks)} are not numbered 0..{len(blocks) - 1}; the file "
                              "is incomplete. Download it again.")
    return len(blocks), embedding.shape[1]


def with_vace(config: DiTConfig, shape: tuple[int, int] | None, path: Path) -> DiTConfig:
    """`config` with the VACE branch of `shape` (from `vace_shape`); a block count the mapping cannot place is refused."""
    if shape is None:
        return config
    layers, in_dim = shape
    try:
        layer_mapping(config.num_layers, layers)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}.") from exc
    return replace(config, vace_layers=layers, vace_in_dim=in_dim)


def storage_family(dtype: torch.dtype) -> str:
    """'fp8' or '16/32-bit float': the precision family a VACE module must share with its expert."""
    return "fp8" if dtype in FP8_DTYPES else "16/32-bit float"


def block_dtype(ckpt: Checkpoint, prefix: str = "blocks.") -> torch.dtype | None:
    """The storage dtype of the first block's attention weights (fp8 in fp8 files, whatever else they keep wider)."""
    info = ckpt.infos.get(f"{prefix}0.self_attn.q.weight")
    return info.dtype if info is not None else None


def module_config(module: Checkpoint, path: Path, base: DiTConfig, *, base_dtype: torch.dtype | None,
                  base_path: Path) -> DiTConfig:
    """The expert's config with the module's VACE branch, after checking that the module fits that expert.

    `base_dtype`: the expert's `block_dtype` (its precision family)."""
    if "patch_embedding.weight" in module:
        raise CheckpointError(f"{path}: this is a whole expert (it has 'patch_embedding.weight'), not a VACE module "
                              "file. Choose a merged VACE expert (wan2.2_fun_vace_*_14B_*) as the expert itself and "
                              "leave the VACE module empty. " + _MODULES)
    shape = vace_shape(module, path)
    if shape is None:
        raise CheckpointError(f"{path}: no VACE tensors (vace_patch_embedding / vace_blocks.N) in this file, so it "
                              f"is not a VACE module. " + _MODULES)
    if base.vace_layers:
        raise CheckpointError(f"{base_path}: this expert already has {base.vace_layers} VACE blocks merged in, so "
                              f"the VACE module {path.name} cannot attach to it. Leave the module empty, or choose "
                              "the plain T2V expert (wan2.2_t2v_*_14B_*).")
    width, _, *patch = module.infos["vace_patch_embedding.weight"].shape
    ffn = module.infos.get("vace_blocks.0.ffn.0.weight")
    ffn_dim = ffn.shape[0] if ffn is not None and len(ffn.shape) == 2 else None
    if width != base.dim or ffn_dim != base.ffn_dim or tuple(patch) != tuple(base.patch_size):
        raise CheckpointError(
            f"{path}: this VACE module is for a model of width {width} (FFN {ffn_dim}, patch {list(patch)}) but the "
            f"expert {base_path.name} has width {base.dim} (FFN {base.ffn_dim}, patch {list(base.patch_size)}): it "
            f"belongs to another model size (Wan2.1-VACE-1.3B: 1536, A14B: 5120). " + _MODULES)
    stored = block_dtype(module, "vace_blocks.")
    if stored is not None and base_dtype is not None and storage_family(stored) != storage_family(base_dtype):
        raise CheckpointError(
            f"{path}: the VACE module stores {str(stored).removeprefix('torch.')} weights but the expert "
            f"{base_path.name} stores {str(base_dtype).removeprefix('torch.')}; a module must be of the expert's "
            f"precision family ({storage_family(base_dtype)}). " + _MODULES)
    return with_vace(base, shape, path)

