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
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import torch
import torch.nn as nn

from ..config import COMPUTE_DTYPES, WEIGHT_DTYPES
from ..io.checkpoint import INDEX_SUFFIX, Checkpoint, CheckpointError, TensorInfo, file_identity, open_checkpoint
from .model import DiTConfig, WanDiT
from .keys import diffusers_to_official, is_diffusers_layout
from ..io.quant import FP8_DTYPES, Fp8Layout, describe_fp8, swap_in_fp8_linears

PREFIXES = ("model.diffusion_model.", "model.")
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
    """Configuration, layout, fp8 format and sizes of a DiT checkpoint, from headers only (read once per file identity)."""
    try:
        identity = file_identity(path)
    except OSError:  # missing or unreadable: let the checkpoint reader say so in its own words
        open_checkpoint(path)
        raise
    return _inspect(identity)


@lru_cache(maxsize=32)
def _inspect(identity: tuple) -> DiTInfo:
    opened = _open(identity[0])
    ckpt = opened.ckpt
    config = config_from_tensors(ckpt, ckpt.path)
    by_dtype: dict[torch.dtype, int] = {}
    for info in ckpt.infos.values():
        by_dtype[info.dtype] = by_dtype.get(info.dtype, 0) + math.prod(info.shape) * info.dtype.itemsize
    stored = max(by_dtype, key=by_dtype.get)
    return DiTInfo(config, opened.layout, opened.fp8.format if opened.fp8 else None, stored, ckpt.weight_bytes(),
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


_STAGING_BYTES = 4 << 20  # one reusable read buffer
_CHUNK_ELEMENTS = 1 << 20  # elements converted at a time: a 4 MiB float32 work buffer


class _Reader:
    """Reads stored tensors with plain file reads (nothing mmapped stays resident), converting chunk by chunk
    through one reusable buffer, so RAM holds the final tensors plus at most a few chunk-sized temporaries."""

    def __init__(self, opened: _Opened, device: torch.device) -> None:
        self.opened, self.device = opened, device
        self.locations = _safetensors_locations(Path(opened.ckpt.path))
        self.files: dict[Path, BinaryIO] = {}
        self._staging: torch.Tensor | None = None
        self._work: torch.Tensor | None = None

    def info(self, key: str) -> TensorInfo:
        return self.opened.ckpt.infos[key]

    def _read_bytes(self, key: str, offset: int, out: torch.Tensor) -> None:
        """Fill the uint8 tensor `out` with the stored bytes of `key` starting `offset` bytes into it."""
        stored = self.opened.source[key]
        file, start, nbytes = self.locations[stored]
        try:
            handle = self.files.get(file) or self.files.setdefault(file, open(file, "rb"))
            handle.seek(start + offset)
            got = handle.readinto(out.numpy())
        except OSError as exc:
            raise CheckpointError(f"{file}: could not read tensor '{stored}' ({exc}). Check that the file is still "
                                  "there and readable.") from exc
        if got != out.numel():
            raise CheckpointError(f"{file}: tensor '{stored}' ends after {offset + got} of {nbytes} bytes; the file "
                                  "is truncated. Download it again.")

    def chunks(self, key: str):
        """(element offset, flat chunk in the stored dtype on the device), valid until the next chunk."""
        info = self.info(key)
        numel = math.prod(info.shape)
        itemsize = info.dtype.itemsize
        step = min(_CHUNK_ELEMENTS, _STAGING_BYTES // itemsize)
        stored = self.opened.source[key]
        if stored not in self.locations:  # .pth: slices of torch.load(mmap=True) views
            flat = self.opened.ckpt.get(key).reshape(-1)
            for start in range(0, numel, step):
                yield start, flat[start:start + step].to(self.device)
            return
        nbytes = self.locations[stored][2]
        if nbytes != numel * itemsize:
            raise CheckpointError(f"{self.locations[stored][0]}: tensor '{stored}' stores {nbytes} bytes for shape "
                                  f"{list(info.shape)} {info.dtype}; the file is corrupt. Download it again.")
        if self._staging is None:
            self._staging = torch.empty(_STAGING_BYTES, dtype=torch.uint8, pin_memory=self.device.type == "cuda")
        for start in range(0, numel, step):
            count = min(step, numel - start)
            buffer = self._staging[: count * itemsize]
            self._read_bytes(key, start * itemsize, buffer)
            yield start, buffer.view(info.dtype).to(self.device)

    def read(self, key: str, dtype: torch.dtype | None = None, scale: torch.Tensor | None = None) -> torch.Tensor:
        """The whole tensor on the device as `dtype` (stored dtype if None), times `scale` (in float32) if given."""
        info = self.info(key)
        dtype = dtype or info.dtype
        out = torch.empty(info.shape, dtype=dtype, device=self.device)
        flat = out.view(-1)
        if scale is None and dtype == info.dtype and self.device.type == "cpu" \
                and self.opened.source[key] in self.locations:
            if flat.numel():  # straight from the file into the final tensor
                self._read_bytes(key, 0, flat.view(torch.uint8))
            return out
        for start, chunk in self.chunks(key):
            flat[start:start + chunk.numel()].copy_(chunk if scale is None else self._scaled(chunk, scale))
        return out

    def _scaled(self, chunk: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        """chunk × scale in float32, in a reusable work buffer (no per-chunk allocations to fragment the heap)."""
        if self._work is None:
            self._work = torch.empty(_CHUNK_ELEMENTS, dtype=torch.float32, device=self.device)
        work = self._work[: chunk.numel()]
        work.copy_(chunk)
        return work.mul_(scale) if scale is not None else work

    def quantized(self, key: str, storage: torch.dtype, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-tensor scaled fp8 of (stored value × scale): quant.quantize_fp8's arithmetic, streamed in two passes."""
        amax = torch.zeros((), dtype=torch.float32, device=self.device)
        for _, chunk in self.chunks(key):
            if chunk.numel():
                amax = torch.maximum(amax, self._scaled(chunk, scale).abs_().amax())
        new_scale = amax.clamp(min=1e-12) / torch.finfo(storage).max
        out = torch.empty(self.info(key).shape, dtype=storage, device=self.device)
        flat = out.view(-1)
        for start, chunk in self.chunks(key):
            flat[start:start + chunk.numel()].copy_(self._scaled(chunk, scale).div_(new_scale))
        return out, new_scale.reshape(())

    def scalar(self, key: str) -> torch.Tensor:
        """A one-value tensor (an fp8 scale) as a float32 scalar on the device."""
        return self.read(key, torch.float32).reshape(())

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
    reader = _Reader(opened, device)
    try:
        for name in expected:
            layer, _, leaf = name.rpartition(".")
            scale_key = fp8.layers.get(layer, "") if fp8 and layer in file_fp8 else ""
            file_scale = reader.scalar(scale_key) if scale_key and leaf == "weight" else None
            if layer in fp8_layers and leaf == "weight":
                storage = fp8_layers[layer]
                if file_fp8.get(layer) == storage:  # kept as stored
                    weight = reader.read(name)
                    scale = file_scale if file_scale is not None else torch.ones((), device=device)
                else:  # quantized from higher precision, or re-encoded from the other fp8 format
                    weight, scale = reader.quantized(name, storage, file_scale)
                _assign(model, name, weight)
                _assign(model, layer + ".weight_scale", scale)
            elif layer in fp8_layers and leaf == "weight_scale":
                continue  # set together with the weight
            elif layer in file_fp8 and leaf == "weight":  # an fp8 layer loaded as a plain Linear: dequantize
                scale = file_scale if file_scale is not None else torch.ones((), device=device)
                _assign(model, name, reader.read(name, plain or torch.float32, scale))
            else:
                _assign(model, name, reader.read(name, plain))
    finally:
        reader.close()

    left = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if left:
        raise CheckpointError(f"{path}: tensors {', '.join(left[:5])} were not filled; this is a bug in the loader.")
    model.compute_dtype = compute
    return model.eval()
