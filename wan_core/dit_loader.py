"""Load a Wan2.2 T2V DiT expert from any real checkpoint layout, tensor by tensor onto the target device.

Layouts: an official expert folder (config.json + sharded safetensors + index), a single file with
or without a `model.diffusion_model.` / `model.` prefix, diffusers `WanTransformer3DModel` keys, and
plain or scaled fp8 files (both Comfy formats). The configuration comes from the tensor shapes (and
an official config.json for the head count), never from the file name. The model is built on the
meta device and each parameter is read from disk straight into its final tensor, so RAM never holds
a second copy of the weights.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
import torch.nn as nn

from .checkpoint import INDEX_SUFFIX, Checkpoint, CheckpointError, TensorInfo, open_checkpoint
from .dit import DiTConfig, WanDiT
from .dit_keys import diffusers_to_official, is_diffusers_layout
from .quant import FP8_DTYPES, Fp8Layout, describe_fp8, quantize_fp8, swap_in_fp8_linears

PREFIXES = ("model.diffusion_model.", "model.")
WEIGHT_DTYPES = {
    "auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
    "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2,
}
_COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_BLOCK_LINEAR = re.compile(r"^blocks\.\d+\.(self_attn\.[qkvo]|cross_attn\.[qkvo]|ffn\.[02])$")
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
    weight_bytes: int
    path: Path


# ---------------------------------------------------------------------------------------------- recognition

def _what_else(keys: list[str]) -> str | None:
    """Name the kind of model a non-DiT state dict is, from tell-tale keys (any prefix)."""
    def has(fragment: str) -> bool:
        return any(fragment in k for k in keys)

    if has("decoder.upsamples.0.upsamples.0.residual") or has("decoder.up_blocks.0.upsampler"):
        return "a VAE (the 48-channel Wan2.2 VAE of the 5B model)"
    if has("decoder.middle.0.residual.0.gamma") or has("encoder.downsamples.") or has("decoder.conv_in.") \
            or has("post_quant_conv.") or has("decoder.mid_block."):
        return "a VAE (Wan2.1 VAE layout); load it with the VAE loader"
    if has("SelfAttention.") or has("shared.weight") or has("spiece_model") or has("DenseReluDense.") \
            or has("token_embedding.weight") or has("text_model.") or has(".ffn.gate.0."):
        return "a text encoder (umT5 / T5 / CLIP keys); load it with the text-encoder loader"
    if has("lora_") or has(".lora.") or has("lora_A") or has("lora_down"):
        return "a LoRA, not a full model; apply it to a loaded model instead"
    return None


def _fail_unless_dit(ckpt: Checkpoint, path: Path) -> None:
    keys = ckpt.keys()
    if "patch_embedding.weight" in ckpt:
        return
    other = _what_else(keys)
    found = other or f"no Wan DiT tensors ({len(keys)} tensors, e.g. {', '.join(sorted(keys)[:4]) or 'none'})"
    raise CheckpointError(f"{path}: this is {found}, not a Wan diffusion model (DiT): it has no "
                          f"'patch_embedding.weight'. {_EXPECTED}")


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
    layers = {int(m.group(1)) for k in ckpt.keys() if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not layers:
        raise CheckpointError(f"{path}: no 'blocks.N.' tensors: the transformer blocks are missing. " + _EXPECTED)
    ffn_dim = _shape(ckpt, path, "blocks.0.ffn.0.weight", 2)[0]
    text_dim = _shape(ckpt, path, "text_embedding.0.weight", 2)[1]
    freq_dim = _shape(ckpt, path, "time_embedding.0.weight", 2)[1]
    head_out = _shape(ckpt, path, "head.head.weight", 2)[0]
    if head_out % math.prod(patch):
        raise CheckpointError(f"{path}: head.head.weight has {head_out} outputs, not a multiple of the patch "
                              f"size {patch}; the file is not a Wan DiT.")
    cfg = ckpt.config or {}
    # Every released Wan model has 128-wide heads (ComfyUI's detection assumes it too).
    heads = cfg.get("num_heads") or cfg.get("num_attention_heads") or dim // 128
    try:
        return DiTConfig(dim=dim, ffn_dim=ffn_dim, num_heads=int(heads), num_layers=max(layers) + 1, in_dim=in_dim,
                         out_dim=head_out // math.prod(patch), text_dim=text_dim, freq_dim=freq_dim,
                         text_len=int(cfg.get("text_len", 512)), eps=float(cfg.get("eps", 1e-6)),
                         patch_size=tuple(patch))
    except (ValueError, ZeroDivisionError) as exc:
        raise CheckpointError(f"{path}: width {dim} with {heads} attention heads is not a valid Wan DiT ({exc}).") from exc


# ------------------------------------------------------------------------------------------------ opening

@dataclass
class _Opened:
    ckpt: Checkpoint  # official key names
    source: dict[str, str]  # official key -> key as stored in the file
    layout: str
    fp8: Fp8Layout | None


def _open(path: str | Path) -> _Opened:
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
    return _Opened(view, source, layout, describe_fp8(view))


def inspect_dit(path: str | Path) -> DiTInfo:
    """Configuration, layout, fp8 format and sizes of a DiT checkpoint, from headers only."""
    opened = _open(path)
    ckpt = opened.ckpt
    config = config_from_tensors(ckpt, ckpt.path)
    by_dtype: dict[torch.dtype, int] = {}
    for info in ckpt.infos.values():
        by_dtype[info.dtype] = by_dtype.get(info.dtype, 0) + math.prod(info.shape) * info.dtype.itemsize
    stored = max(by_dtype, key=by_dtype.get)
    return DiTInfo(config, opened.layout, opened.fp8.format if opened.fp8 else None, stored, ckpt.total_bytes(),
                   Path(ckpt.path))


# ------------------------------------------------------------------------------------------ reading tensors

def _safetensors_locations(path: Path) -> dict[str, tuple[Path, int, int]]:
    """Stored key -> (file, byte offset, byte length) for safetensors sources; {} for pickles."""
    if path.is_dir():
        indexes = sorted(path.glob("*" + INDEX_SUFFIX))
        if indexes:
            weight_map = json.loads(indexes[0].read_text())["weight_map"]
            files = sorted({path / name for name in weight_map.values()})
        else:
            weight_map, files = None, sorted(path.glob("*.safetensors"))
    elif path.name.lower().endswith((".safetensors", ".sft")):
        weight_map, files = None, [path]
    else:
        return {}
    locations = {}
    for file in files:
        with open(file, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        for key, entry in header.items():
            if weight_map is None or weight_map.get(key) == file.name:
                start, end = entry["data_offsets"]
                locations[key] = (file, 8 + n + start, end - start)
    return locations


class _Reader:
    """Reads one stored tensor at a time into a fresh CPU tensor with plain file reads (no mmap kept resident)."""

    def __init__(self, opened: _Opened) -> None:
        self.opened = opened
        self.locations = _safetensors_locations(Path(opened.ckpt.path))
        self.files: dict[Path, BinaryIO] = {}

    def read(self, key: str) -> torch.Tensor:
        ckpt = self.opened.ckpt
        stored = self.opened.source[key]
        location = self.locations.get(stored)
        if location is None:  # .pth: torch.load(mmap=True) views
            return ckpt.get(key)
        file, offset, nbytes = location
        info: TensorInfo = ckpt.infos[key]
        out = torch.empty(info.shape, dtype=info.dtype)
        if nbytes != out.numel() * out.element_size():
            raise CheckpointError(f"{file}: tensor '{stored}' stores {nbytes} bytes for shape {list(info.shape)} "
                                  f"{info.dtype}; the file is corrupt. Download it again.")
        if nbytes:
            handle = self.files.get(file) or self.files.setdefault(file, open(file, "rb"))
            handle.seek(offset)
            got = handle.readinto(out.reshape(-1).view(torch.uint8).numpy())
            if got != nbytes:
                raise CheckpointError(f"{file}: tensor '{stored}' ends after {got} of {nbytes} bytes; the file is "
                                      "truncated. Download it again.")
        return out

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()
        self.files.clear()


# ------------------------------------------------------------------------------------------------- loading

def _bookkeeping(ckpt: Checkpoint, fp8: Fp8Layout | None) -> set[str]:
    keys = {k for k in ckpt.keys() if k.endswith(".comfy_quant")}
    return keys | (fp8.bookkeeping_keys() if fp8 else set())


def _check_keys(opened: _Opened, expected: dict[str, tuple[int, ...]], path: Path) -> None:
    """Every needed tensor present with its exact shape, nothing unknown: else a CheckpointError listing what differs."""
    ckpt, fp8 = opened.ckpt, opened.fp8
    stored = set(ckpt.keys()) - _bookkeeping(ckpt, fp8)
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
    wrong = [(k, ckpt.infos[k].shape, shape) for k, shape in expected.items() if ckpt.infos[k].shape != shape]
    if wrong:
        k, found, want = wrong[0]
        raise CheckpointError(
            f"{path}: tensor '{k}' has shape {list(found)} but this model (width {_width(expected)}) needs "
            f"{list(want)} ({len(wrong)} tensors differ). The file is corrupt or mixes two models; download it again.")
    if fp8:
        for layer, scale_key in fp8.layers.items():
            if scale_key and math.prod(ckpt.infos[scale_key].shape) != 1:
                raise CheckpointError(f"{path}: '{scale_key}' has shape {list(ckpt.infos[scale_key].shape)}; only "
                                      "per-tensor fp8 scales (one value) are supported.")


def _width(expected: dict[str, tuple[int, ...]]) -> int:
    return expected["patch_embedding.weight"][0]


def _resolve_dtypes(weight_dtype: str, compute_dtype: torch.dtype | str | None, device: torch.device) -> tuple[torch.dtype | None, torch.dtype]:
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype '{weight_dtype}' is not one of {', '.join(WEIGHT_DTYPES)}")
    if compute_dtype is None:
        compute = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif isinstance(compute_dtype, str):
        if compute_dtype not in _COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype '{compute_dtype}' is not one of {', '.join(_COMPUTE_DTYPES)}")
        compute = _COMPUTE_DTYPES[compute_dtype]
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


def load_dit(path: str | Path, *, device: torch.device | str = "cpu", weight_dtype: str = "auto",
             compute_dtype: torch.dtype | str | None = None, attention: str = "sdpa") -> WanDiT:
    """Load a DiT expert from any supported layout straight to `device`; weight_dtype auto keeps stored precision."""
    device = torch.device(device)
    target, compute = _resolve_dtypes(weight_dtype, compute_dtype, device)
    opened = _open(path)
    ckpt, fp8, path = opened.ckpt, opened.fp8, Path(opened.ckpt.path)
    config = config_from_tensors(ckpt, path)

    with torch.device("meta"):
        model = WanDiT(config, attention=attention)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    _check_keys(opened, expected, path)

    file_fp8 = {layer: ckpt.infos[layer + ".weight"].dtype for layer in (fp8.layers if fp8 else {})
                if ckpt.infos[layer + ".weight"].dtype in FP8_DTYPES}
    if target is None:  # auto: fp8 layers stay fp8 in their stored format
        fp8_layers = dict(file_fp8)
    elif target in FP8_DTYPES:  # quantize the block Linears (and re-encode other fp8 layers) to the chosen format
        fp8_layers = {layer: target for layer in file_fp8}
        fp8_layers.update({m.group(0): target for k in expected if (m := _BLOCK_LINEAR.match(k.rpartition(".")[0]))})
    else:
        fp8_layers = {}
    for storage in set(fp8_layers.values()):
        swap_in_fp8_linears(model, {n for n, d in fp8_layers.items() if d == storage}, storage_dtype=storage,
                            compute_dtype=compute)

    plain = target if target not in FP8_DTYPES else None  # dtype of everything else; None = as stored
    reader = _Reader(opened)
    try:
        def dequantized(layer: str) -> torch.Tensor:
            """A file-fp8 weight times its scale, in float32 on the device."""
            weight = reader.read(layer + ".weight").to(device).to(torch.float32)
            scale_key = fp8.layers.get(layer, "") if fp8 else ""
            return weight * reader.read(scale_key).to(device, torch.float32).reshape(()) if scale_key else weight

        for name in expected:
            layer, _, leaf = name.rpartition(".")
            if layer in fp8_layers:
                if leaf == "weight_scale":
                    continue  # set together with the weight
                if leaf == "weight":
                    storage = fp8_layers[layer]
                    scale_key = fp8.layers.get(layer, "") if fp8 else ""
                    if file_fp8.get(layer) == storage:
                        weight = reader.read(name).to(device)
                        scale = (reader.read(scale_key).to(device, torch.float32).reshape(()) if scale_key
                                 else torch.ones((), device=device))
                    else:
                        full = dequantized(layer) if layer in file_fp8 else reader.read(name).to(device)
                        weight, scale = quantize_fp8(full, storage)
                    _assign(model, name, weight)
                    _assign(model, layer + ".weight_scale", scale)
                    continue
            if layer in file_fp8 and leaf == "weight":  # an fp8 layer loaded as a plain Linear: dequantize
                value = dequantized(layer).to(plain or torch.float32)
            else:
                raw = reader.read(name)
                value = raw.to(device=device, dtype=plain or raw.dtype)
            _assign(model, name, value)
    finally:
        reader.close()

    left = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if left:
        raise CheckpointError(f"{path}: tensors {', '.join(left[:5])} were not filled; this is a bug in the loader.")
    model.compute_dtype = compute
    return model.eval()
