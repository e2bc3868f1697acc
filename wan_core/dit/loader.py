"""Load a Wan2.2 T2V DiT expert from any real checkpoint layout, tensor by tensor onto the target device.

Layouts: an official expert folder (config.json + sharded safetensors + index), a single file with
or without a `model.diffusion_model.` / `model.` prefix, diffusers `WanTransformer3DModel` keys, and
plain or scaled fp8 files (both Comfy formats); VACE experts merged (VACE tensors inside) or a plain expert with a
VACE module file attached (`vace_module`, see dit.vace_files). The configuration comes from the tensor shapes (and
an official config.json for the head count), never from the file name. The model is built on the
meta device and each parameter is read from disk straight into its final tensor, so RAM never holds
a second copy of the weights. `read_weights` re-reads chosen parameters exactly as loaded (to restore weights a
LoRA changed in place); every read is logged ("dit loader: read N tensors of FILE").
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import torch
import torch.nn as nn

from ..config import COMPUTE_DTYPES, WEIGHT_DTYPES
from ..io.checkpoint import (Checkpoint, CheckpointError, TensorInfo, file_identity, open_checkpoint,
                             require_float)
from ..io.quant import FP8_DTYPES, Fp8Layout, quantize_fp8, swap_in_fp8_linears
from ..io.quant.comfy_formats import FORMATS as COMFY_FORMATS, storage_shapes
from ..io.quant.layout import PackedLayer, QuantLayout, describe_quant
from ..io.quant.linear import replace_linear
from ..io.quant.packed import dequantize_packed, logical_shape, packed_linear, read_packed
from ..io.reader import TensorReader
from ..io.safe import shown
from .keys import diffusers_to_official, is_diffusers_layout
from .model import FP32_MODULES, DiTConfig, WanDiT
from .vace_files import block_dtype, is_vace_key, module_config, vace_shape, with_vace

log = logging.getLogger("wan_core.dit.loader")
PREFIXES = ("model.diffusion_model.", "model.")
MAX_BLOCKS = 256  # transformer blocks a file may declare (A14B: 40); more is a corrupt or hostile header
_BLOCK_LINEAR = re.compile(r"^(vace_)?blocks\.\d+\.(self_attn\.[qkvo]|cross_attn\.[qkvo]|ffn\.[02])$")
_EXPECTED = ("Expected a Wan2.2-T2V-A14B expert: an official high_noise_model/ or low_noise_model/ folder, or a "
             "file such as wan2.2_t2v_high_noise_14B_fp16.safetensors / ..._fp8_scaled.safetensors in "
             "models/diffusion_models/.")


@dataclass(frozen=True)
class DiTInfo:
    """What a DiT checkpoint holds, read from its headers only."""

    config: DiTConfig
    layout: str  # "official_folder", "single_file" or "diffusers"
    fp8: str | None  # None, "plain", "scaled_fp8" or "quant_metadata"
    stored_dtype: torch.dtype  # the dtype most of the weight bytes are stored in
    weight_bytes: int  # bytes the loaded tensors take at weight_dtype auto (stored formats kept)
    path: Path
    quant: str | None = None  # e.g. "GGUF Q4_K+Q6_K", "nvfp4", "scaled_fp8"


# ---------------------------------------------------------------------------------------------- recognition

def _what_else(keys: list[str]) -> tuple[str, str] | None:
    """(what a non-DiT state dict is, what to do with it), from tell-tale keys (any prefix)."""
    def has(fragment: str) -> bool:
        return any(fragment in k for k in keys)

    if has("decoder.upsamples.0.upsamples.0.residual") or has("decoder.up_blocks.0.upsampler"):
        return "a VAE (the 48-channel Wan2.2 VAE of the 5B model)", "This pack uses the Wan2.1 VAE (wan_2.1_vae.safetensors)."
    if has("decoder.middle.0.residual.0.gamma") or has("encoder.downsamples.") or has("decoder.conv_in.") \
            or has("post_quant_conv.") or has("decoder.mid_block."):
        return "a VAE (Wan2.1 VAE layout)", "Load it with the VAE loader."
    if has("SelfAttention.") or has("shared.weight") or has("spiece_model") or has("DenseReluDense.") \
            or has("token_embedding.weight") or has("text_model.") or has(".ffn.gate.0."):
        return "a text encoder (umT5 / T5 / CLIP keys)", "Load it with the text-encoder loader."
    if has("vace_blocks."):  # asked only of files without patch_embedding.weight
        return "a VACE module file (VACE blocks only)", ("Choose the plain T2V expert as the model and this file as "
                                                         "its VACE module in the model loader.")
    if has("lora_") or has(".lora.") or has("lora_down"):
        return "a LoRA, not a full model", "Apply it to a loaded model instead."
    return None


def _fail_unless_dit(ckpt: Checkpoint, path: Path) -> None:
    keys = ckpt.keys()
    if "patch_embedding.weight" in ckpt:
        return
    kind, advice = _what_else(keys) or (
        f"a file without Wan DiT tensors ({len(keys)} tensors, e.g. {', '.join(sorted(keys)[:4]) or 'none'})", "")
    raise CheckpointError(f"{path}: this is {kind}, not a Wan diffusion model (DiT): it has no "
                          f"'patch_embedding.weight'. {advice + ' ' if advice else ''}{_EXPECTED}")


def _fail_unless_t2v(ckpt: Checkpoint, path: Path, in_dim: int, dim: int) -> None:
    image_keys = [k for k in ckpt.keys() if k.startswith("img_emb.") or ".k_img." in k or k.startswith("condition_embedder.image")]
    model_type = (ckpt.config or {}).get("model_type")
    if in_dim == 48 or model_type == "ti2v":
        raise CheckpointError(
            f"{path}: this is a Wan2.2-TI2V-5B model (patch_embedding takes {in_dim}-channel latents of the Wan2.2 VAE, "
            f"width {dim}), not a Wan2.2-T2V-A14B expert (16 channels, width 5120). This pack runs the A14B experts. "
            + _EXPECTED)
    if in_dim == 36 or image_keys or model_type in ("i2v", "flf2v"):
        what = f"patch_embedding takes {in_dim} channels (16 latent + 20 image-conditioning)" if in_dim == 36 else \
            (f"image-conditioning tensors such as '{image_keys[0]}'" if image_keys else f"config.json model_type '{model_type}'")
        raise CheckpointError(
            f"{path}: this is an image-to-video Wan model ({what}); this pack runs text-to-video (16 input channels). "
            + _EXPECTED)
    if in_dim != 16:
        raise CheckpointError(f"{path}: patch_embedding takes {in_dim} input channels; a Wan2.2 T2V expert takes 16. "
                              + _EXPECTED)


def _shape(ckpt: Checkpoint, path: Path, key: str, ndim: int) -> tuple[int, ...]:
    info = ckpt.infos.get(key)
    if info is None:
        raise CheckpointError(f"{path}: tensor '{key}' is missing; the file is incomplete or not a Wan2.2 T2V DiT. "
                              + _EXPECTED)
    if len(info.shape) != ndim:
        raise CheckpointError(f"{path}: tensor '{key}' has shape {list(info.shape)}; expected {ndim} dimensions.")
    return info.shape


def config_from_tensors(ckpt: Checkpoint, path: Path | None = None) -> DiTConfig:
    """DiTConfig from tensor shapes (+ num_heads/eps/text_len of a config.json); the same code for every size."""
    path = path or ckpt.path
    _fail_unless_dit(ckpt, path)
    dim, in_dim, *patch = _shape(ckpt, path, "patch_embedding.weight", 5)
    _fail_unless_t2v(ckpt, path, in_dim, dim)
    layers = {int(m.group(1)) for k in ckpt.keys() if (m := re.match(r"blocks\.(\d{1,4})\.", k))}
    if not layers:
        raise CheckpointError(f"{path}: no 'blocks.N.' tensors: the transformer blocks are missing. " + _EXPECTED)
    if max(layers) >= MAX_BLOCKS:
        raise CheckpointError(f"{path}: names transformer block {max(layers)}; a Wan DiT has at most {MAX_BLOCKS} "
                              "(A14B: 40). The file is corrupt. " + _EXPECTED)
    gaps = sorted(set(range(max(layers) + 1)) - layers)
    if gaps:
        raise CheckpointError(f"{path}: the transformer blocks {', '.join(f'blocks.{i}.' for i in gaps[:5])} are "
                              f"missing ({len(gaps)} of {max(layers) + 1}); the file is incomplete. " + _EXPECTED)
    ffn_dim = _shape(ckpt, path, "blocks.0.ffn.0.weight", 2)[0]
    text_dim = _shape(ckpt, path, "text_embedding.0.weight", 2)[1]
    freq_dim = _shape(ckpt, path, "time_embedding.0.weight", 2)[1]
    head_out = _shape(ckpt, path, "head.head.weight", 2)[0]
    if min(dim, ffn_dim, text_dim, freq_dim, *patch) < 1 or head_out % math.prod(patch):
        raise CheckpointError(f"{path}: widths {dim}/{ffn_dim}/{text_dim}/{freq_dim}, patch {patch} and {head_out} head "
                              "outputs do not form a Wan DiT (empty dimensions, or outputs not a multiple of the "
                              "patch); the file is corrupt. " + _EXPECTED)
    cfg = ckpt.config or {}
    # Every released Wan model has 128-wide heads (ComfyUI's detection assumes it too).
    heads = cfg.get("num_heads") or cfg.get("num_attention_heads") or dim // 128
    text_len, eps = cfg.get("text_len", 512), cfg.get("eps", 1e-6)
    try:
        if not (type(heads) is int and type(text_len) is int and isinstance(eps, (int, float))
                and 1 <= text_len <= 4096 and 0 < eps < 1):
            raise ValueError("settings out of range")
        config = DiTConfig(dim=dim, ffn_dim=ffn_dim, num_heads=heads, num_layers=len(layers), in_dim=in_dim,
                           out_dim=head_out // math.prod(patch), text_dim=text_dim, freq_dim=freq_dim,
                           text_len=text_len, eps=float(eps), patch_size=tuple(patch))
    except (ValueError, ZeroDivisionError):
        raise CheckpointError(f"{path}: width {dim} with num_heads {shown(heads)}, text_len {shown(text_len)} and eps "
                              f"{shown(eps)} (config.json or the width) is not a valid Wan DiT configuration.") from None
    return with_vace(config, vace_shape(ckpt, path), path)


# ------------------------------------------------------------------------------------------------ opening

@dataclass
class _Opened:
    ckpt: Checkpoint  # official key names; packed nvfp4/mxfp8/int8 weights listed at their [out, in] shape
    source: dict[str, str]  # official key -> key as stored in the file
    layout: str
    quant: QuantLayout
    stored_shapes: dict[str, tuple[int, ...]]  # packed weights' shapes as stored

    @property
    def fp8(self) -> Fp8Layout | None:
        return self.quant.fp8


def _logical_view(view: Checkpoint, quant: QuantLayout) -> tuple[Checkpoint, dict[str, tuple[int, ...]]]:
    """`view` with each ComfyUI-packed weight's info at the [out, in] shape it holds (GGUF infos already are)."""
    infos, stored = dict(view.infos), {}
    for layer, spec in quant.packed.items():
        key = layer + ".weight"
        info = infos.get(key)
        if info is None or info.packing or spec.format not in COMFY_FORMATS:
            continue
        stored[key] = info.shape
        infos[key] = TensorInfo(logical_shape(spec, info.shape), info.dtype, packing=spec.format, nbytes=info.stored_bytes)
    return view.with_infos(infos), stored


def _open(path: str | Path, module: bool = False) -> _Opened:
    """A checkpoint under official key names; `module`: a VACE module file (no patch_embedding expected)."""
    raw = open_checkpoint(path)
    view = raw.strip_prefix(PREFIXES)
    diffusers = is_diffusers_layout(view.keys())
    if diffusers:
        view = view.rename(diffusers_to_official)
    source = {}
    for key in raw.keys():
        stripped = key[len(view.prefix):] if view.prefix and key.startswith(view.prefix) else key
        source[diffusers_to_official(stripped) if diffusers else stripped] = key
    layout = "diffusers" if diffusers else "official_folder" if raw.path.is_dir() else "single_file"
    if "patch_embedding.weight" not in view and not module:
        _fail_unless_dit(view, Path(view.path))  # name what the file is before reading its quantisation
    quant = describe_quant(view)
    view, stored = _logical_view(view, quant)
    return _Opened(view, source, layout, quant, stored)


_NOT_LOADED = (".comfy_quant", ".input_scale", ".scale_input")


def _identity(path: str | Path) -> tuple:
    try:
        return file_identity(path)
    except OSError:  # missing or unreadable: let the checkpoint reader say so in its own words
        open_checkpoint(path)
        raise


def inspect_dit(path: str | Path, vace_module: str | Path | None = None) -> DiTInfo:
    """Configuration, layout, storage format and sizes of a DiT checkpoint (with a VACE module file attached, when
    given: its config has the module's VACE branch and the sizes count it), from headers only, once per identity."""
    info = _inspect(_identity(path))
    if vace_module is None:
        return info
    config, module_bytes = _inspect_module(_identity(vace_module), _identity(path))
    return replace(info, config=config, weight_bytes=info.weight_bytes + module_bytes)


@lru_cache(maxsize=32)
def _inspect(identity: tuple) -> DiTInfo:
    opened = _open(identity[0])
    ckpt = opened.ckpt
    config = config_from_tensors(ckpt, ckpt.path)
    markers = set(opened.fp8.marker_keys) if opened.fp8 else set()
    by_dtype: dict[torch.dtype, int] = {}
    loaded = 0
    for key, info in ckpt.infos.items():
        by_dtype[info.dtype] = by_dtype.get(info.dtype, 0) + info.stored_bytes
        if not key.endswith(_NOT_LOADED) and key not in markers:
            loaded += info.stored_bytes
    stored = max(by_dtype, key=by_dtype.get)
    return DiTInfo(config, opened.layout, opened.fp8.format if opened.fp8 else None, stored, loaded,
                   Path(ckpt.path), opened.quant.summary())


@lru_cache(maxsize=32)
def _inspect_module(identity: tuple, base_identity: tuple) -> tuple[DiTConfig, int]:
    """(the expert's config with the module's VACE branch, the module's weight bytes), checked against the expert."""
    base = _inspect(base_identity)
    opened = _open(identity[0], module=True)
    ckpt = opened.ckpt
    config = module_config(ckpt, Path(ckpt.path), base.config, base_path=base.path,
                           base_dtype=block_dtype(_open(base_identity[0]).ckpt))
    bookkeeping = opened.quant.bookkeeping_keys()
    return config, sum(info.stored_bytes for key, info in ckpt.infos.items() if key not in bookkeeping)


# ------------------------------------------------------------------------------------------------- loading

def _check_packed(opened: _Opened, expected: dict[str, tuple[int, ...]], path: Path) -> None:
    """ComfyUI-packed weights and their block scales stored at the shapes their format gives for the layer."""
    ckpt = opened.ckpt
    for layer, spec in opened.quant.packed.items():
        key = layer + ".weight"
        if key not in opened.stored_shapes or len(expected.get(key, ())) != 2:
            continue
        want = storage_shapes(spec.format, *expected[key])
        found = {"weight": opened.stored_shapes[key]}
        found.update({role: ckpt.infos[k].shape for role, k in spec.scales.items() if role in want})
        bad = [role for role in want if tuple(found.get(role, ())) != want[role]]
        if bad:
            raise CheckpointError(f"{path}: layer '{layer}' ({spec.format}) stores {bad[0]} as "
                                  f"{list(found.get(bad[0], ()))}; a {list(expected[key])} layer in {spec.format} "
                                  f"needs {list(want[bad[0]])}. The file is corrupt or mixes two models.")


def _check_keys(opened: _Opened, expected: dict[str, tuple[int, ...]], path: Path) -> None:
    """Every needed tensor present with its exact shape, nothing unknown: else a CheckpointError listing what differs."""
    ckpt, fp8 = opened.ckpt, opened.fp8
    stored = set(ckpt.keys()) - opened.quant.bookkeeping_keys()
    missing = sorted(set(expected) - stored)
    if missing:
        raise CheckpointError(
            f"{path}: {len(missing)} tensors a Wan DiT with {len(expected)} tensors needs are missing, e.g. "
            f"{', '.join(missing[:5])}. The file is incomplete or a different model; download it again. " + _EXPECTED)
    unexpected = sorted(stored - set(expected))
    if unexpected:
        raise CheckpointError(
            f"{path}: {len(unexpected)} tensors are not part of a Wan2.2 T2V DiT, e.g. {', '.join(unexpected[:5])}. "
            "It is a different model variant (or has extra modules merged in). " + _EXPECTED)
    packed_weights = {layer + ".weight" for layer in opened.quant.packed}
    scales = [k for layer in opened.quant.packed.values() for k in layer.scales.values()]
    scales += [k for k in (fp8.layers.values() if fp8 else ()) if k]
    require_float(ckpt, [k for k in expected if k not in packed_weights] + scales, "Wan DiT")
    padded = {k for k in opened.stored_shapes}
    wrong = [(k, ckpt.infos[k].shape, shape) for k, shape in expected.items()
             if k not in padded and ckpt.infos[k].shape != shape]
    if wrong:
        k, found, want = wrong[0]
        raise CheckpointError(
            f"{path}: tensor '{k}' has shape {list(found)} but this model (width {_width(expected)}) needs "
            f"{list(want)} ({len(wrong)} tensors differ). The file is corrupt or mixes two models; download it again.")
    _check_packed(opened, expected, path)
    if fp8:
        for layer, scale_key in fp8.layers.items():
            if scale_key and math.prod(ckpt.infos[scale_key].shape) != 1:
                raise CheckpointError(f"{path}: '{scale_key}' has shape {list(ckpt.infos[scale_key].shape)}; only "
                                      "per-tensor fp8 scales (one value) are supported.")


def _width(expected: dict[str, tuple[int, ...]]) -> int:
    return (expected.get("patch_embedding.weight") or expected["vace_patch_embedding.weight"])[0]


def _resolve_dtypes(weight_dtype: str, compute_dtype: torch.dtype | str | None, device: torch.device) -> tuple[torch.dtype | None, torch.dtype]:
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype '{weight_dtype}' is not one of {', '.join(WEIGHT_DTYPES)}")
    if compute_dtype is None:
        compute = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif isinstance(compute_dtype, str):
        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype '{compute_dtype}' is not one of {', '.join(COMPUTE_DTYPES)}")
        compute = COMPUTE_DTYPES[compute_dtype]
    else:
        compute = compute_dtype
    return WEIGHT_DTYPES[weight_dtype], compute


def _assign(model: nn.Module, name: str, value: torch.Tensor) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    if leaf in owner._parameters:
        owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    else:
        owner._buffers[leaf] = value


@dataclass
class _Plan:
    """How each layer is stored once loaded."""

    fp8: dict[str, torch.dtype]  # layer -> fp8 storage dtype (Fp8Linear)
    file_fp8: dict[str, torch.dtype]  # layers the file stores in fp8 with a per-tensor scale
    packed: dict[str, PackedLayer]  # layers kept packed (GGML / nvfp4 / mxfp8 / int8 Linears)
    plain: torch.dtype | None  # dtype of everything else; None = as stored
    native: dict[str, torch.dtype] = None  # auto: layers that compute in a narrower dtype than stored -> that dtype

    def dtype_of(self, name: str, stored: torch.dtype) -> torch.dtype | None:
        """The dtype a plain tensor is kept in (None: as stored)."""
        if self.plain is not None:
            return self.plain
        compute = (self.native or {}).get(name.rpartition(".")[0])
        if compute is not None and stored.is_floating_point and stored != compute and \
                stored.itemsize >= compute.itemsize:
            # Converted once here instead of at every call (an fp16 file under bf16 compute cast every full
            # weight per forward): the same values the per-call cast gives, in no more memory.
            return compute
        return None


def _plan(opened: _Opened, model: WanDiT, expected: dict[str, tuple[int, ...]], target: torch.dtype | None,
          compute: torch.dtype) -> _Plan:
    ckpt, fp8 = opened.ckpt, opened.fp8
    file_fp8 = {layer: ckpt.infos[layer + ".weight"].dtype for layer in (fp8.layers if fp8 else {})
                if ckpt.infos[layer + ".weight"].dtype in FP8_DTYPES}
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if target is None:  # auto: fp8 layers stay fp8 and packed Linears stay packed, in their stored formats
        fp8_layers = dict(file_fp8)
        packed = {layer: spec for layer, spec in opened.quant.packed.items() if layer in linears}
    elif target in FP8_DTYPES:  # quantize the block Linears (and re-encode other fp8 layers) to the chosen format
        fp8_layers = {layer: target for layer in file_fp8}
        fp8_layers.update({m.group(0): target for k in expected if (m := _BLOCK_LINEAR.match(k.rpartition(".")[0]))})
        packed = {}
    else:
        fp8_layers, packed = {}, {}
    native = None
    if target is None:
        native = {n: compute for n, m in model.named_modules()
                  if isinstance(m, (nn.Linear, nn.Conv3d)) and not n.startswith(FP32_MODULES)
                  and n not in fp8_layers and n not in packed}
    return _Plan(fp8_layers, file_fp8, packed, target if target not in FP8_DTYPES else None, native)


def _swap_layers(model: WanDiT, plan: _Plan, opened: _Opened, compute: torch.dtype) -> None:
    for storage in set(plan.fp8.values()):
        swap_in_fp8_linears(model, {n for n, d in plan.fp8.items() if d == storage}, storage_dtype=storage,
                            compute_dtype=compute)
    for layer, spec in plan.packed.items():
        scale = spec.scales.get("weight_scale")
        per_row = spec.format == "int8_tensorwise" and scale is not None and len(opened.ckpt.infos[scale].shape) == 2
        replace_linear(model, layer, lambda old, spec=spec, per_row=per_row: packed_linear(old, spec, compute, per_row))


def _fill_fp8(model: WanDiT, name: str, plan: _Plan, opened: _Opened, reader: TensorReader) -> None:
    """An fp8 layer's weight (kept, quantized or re-encoded) and its scale; or a file fp8 weight dequantized."""
    layer = name.rpartition(".")[0]
    scale_key = opened.fp8.layers.get(layer, "") if opened.fp8 and layer in plan.file_fp8 else ""
    file_scale = reader.scalar(scale_key) if scale_key else None
    if layer not in plan.fp8:  # an fp8 layer loaded as a plain Linear: dequantize
        scale = file_scale if file_scale is not None else torch.ones((), device=reader.device)
        _assign(model, name, reader.read(name, plan.plain or torch.float32, scale))
        return
    storage = plan.fp8[layer]
    if plan.file_fp8.get(layer) == storage:  # kept as stored
        weight = reader.read(name)
        scale = file_scale if file_scale is not None else torch.ones((), device=reader.device)
    elif layer in opened.quant.packed:  # packed in the file: dequantized, then quantized to fp8
        weight, scale = quantize_fp8(dequantize_packed(reader, name, opened.quant.packed[layer], opened.ckpt.infos[name].shape), storage)
    else:  # quantized from higher precision, or re-encoded from the other fp8 format
        weight, scale = reader.quantized(name, storage, file_scale)
    _assign(model, name, weight)
    _assign(model, layer + ".weight_scale", scale)


def _fill(model: WanDiT, name: str, plan: _Plan, opened: _Opened, reader: TensorReader, shape: tuple[int, ...]) -> None:
    """Read one expected tensor into the model as the plan stores it."""
    layer, _, leaf = name.rpartition(".")
    if layer in plan.packed and leaf == "weight":
        for part, value in read_packed(reader, layer, plan.packed[layer], *shape).items():
            _assign(model, f"{layer}.{part}", value)
    elif leaf == "weight" and (layer in plan.fp8 or layer in plan.file_fp8):
        _fill_fp8(model, name, plan, opened, reader)
    elif layer in plan.fp8 and leaf == "weight_scale":
        return  # set together with the weight
    elif leaf == "weight" and layer in opened.quant.packed:  # packed in the file, not kept packed: dequantize
        value = dequantize_packed(reader, name, opened.quant.packed[layer], shape)
        _assign(model, name, value.to(plan.plain or torch.float32))
    else:
        _assign(model, name, reader.read(name, plan.dtype_of(name, opened.ckpt.infos[name].dtype)))


def _sources(path: str | Path, vace_module: str | Path | None) -> tuple[DiTConfig, list[tuple[_Opened, Path]]]:
    """The model's config and its sources: the expert, and the VACE module file attached to it (checked) if any."""
    opened = _open(path)
    base_path = Path(opened.ckpt.path)
    config = config_from_tensors(opened.ckpt, base_path)
    sources = [(opened, base_path)]
    if vace_module is not None:
        module = _open(vace_module, module=True)
        module_path = Path(module.ckpt.path)
        config = module_config(module.ckpt, module_path, config, base_dtype=block_dtype(opened.ckpt),
                               base_path=base_path)
        sources.append((module, module_path))
    return config, sources


def load_dit(path: str | Path, *, device: torch.device | str = "cpu", weight_dtype: str = "auto",
             compute_dtype: torch.dtype | str | None = None, attention: str = "sdpa",
             vace_module: str | Path | None = None) -> WanDiT:
    """Load a DiT expert from any supported layout straight to `device`; weight_dtype auto keeps stored precision.

    `vace_module`: a module-only VACE file attached to the expert (its VACE tensors read from that file)."""
    device = torch.device(device)
    target, compute = _resolve_dtypes(weight_dtype, compute_dtype, device)
    config, sources = _sources(path, vace_module)
    path = sources[0][1]

    with torch.device("meta"):
        model = WanDiT(config, attention=attention)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    parts = []
    for i, (opened, source_path) in enumerate(sources):  # the expert's tensors, then the module's VACE tensors
        mine = {k: v for k, v in expected.items() if len(sources) == 1 or (i == 0) != is_vace_key(k)}
        _check_keys(opened, mine, source_path)
        plan = _plan(opened, model, mine, target, compute)
        _swap_layers(model, plan, opened, compute)
        parts.append((opened, mine, plan))

    for opened, mine, plan in parts:
        reader = TensorReader(opened.ckpt, opened.source, device)
        try:
            for name, shape in mine.items():
                _fill(model, name, plan, opened, reader, shape)
        finally:
            reader.close()
    log.info("dit loader: read %d tensors of %s", len(expected), path.name)

    left = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if left:
        raise CheckpointError(f"{path}: tensors {', '.join(left[:5])} were not filled; this is a bug in the loader.")
    model.compute_dtype = compute
    return model.eval()


def read_weights(path: str | Path, names: Iterable[str], *, device: torch.device | str, weight_dtype: str = "auto",
                 compute_dtype: torch.dtype | str | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for full-precision parameters `names`, bit for bit as `load_dit` with the same weight_dtype and
    compute_dtype assigns them (weights converted at load included), one at a time.

    For restoring weights changed in place (a LoRA merged into them) without loading the whole expert again.
    Layers the load keeps in a quantised format are not full-precision parameters and are refused.
    """
    device = torch.device(device)
    target, compute = _resolve_dtypes(weight_dtype, compute_dtype, device)
    opened = _open(path)
    with torch.device("meta"):
        model = WanDiT(config_from_tensors(opened.ckpt, Path(opened.ckpt.path)))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    plan = _plan(opened, model, expected, target, compute)
    reader = TensorReader(opened.ckpt, opened.source, device)
    count = 0
    try:
        for name in names:
            layer = name.rpartition(".")[0]
            if layer in plan.fp8 or layer in plan.packed:
                raise ValueError(f"'{name}' is kept quantised by this load; it is not a full-precision weight")
            _fill(model, name, plan, opened, reader, expected[name])
            count += 1
            value = model.get_parameter(name).data
            _assign(model, name, torch.empty(expected[name], dtype=value.dtype, device="meta"))
            yield name, value
    finally:
        reader.close()
        log.info("dit loader: read %d tensors of %s", count, Path(opened.ckpt.path).name)
