"""Upscale-model files (ESRGAN / Real-ESRGAN / SRVGGNetCompact / SwinIR family ...) recognised by spandrel.

A loaded model is spandrel's `ImageModelDescriptor`, the same object ComfyUI's core `UPSCALE_MODEL` carries,
so models from either loader are interchangeable.

Memory: `on_device(descriptor, device)` runs a model through the shared model cache (wan_core.memory.cache). The
descriptor itself stays as loaded (on the CPU) and is never changed, because ComfyUI's output cache hands
that same object to later runs and to other nodes (core 'Upscale Image (using Model)'); a cache that
moved or discarded its module would leave them a broken model. The cache entry is a copy of the network
made directly on the compute device in its compute dtype, keyed by the file the descriptor was read from
(size and mtime as recorded when it was loaded; a descriptor from core's loader, whose file is unknown,
by its identity while it lives). So the upscaler's VRAM is budgeted with the experts and the VAE, it is
evicted first when they need room (least recently used), "Unload models" frees it, and the next run
copies it again from the descriptor.
"""

from __future__ import annotations

import copy
import logging
import os
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn

from ..memory.cache import CacheKey, ModelCache, get_cache
from ..io.checkpoint import CheckpointError, file_identity, open_checkpoint
from ..io.safe import regular_file, shown
from ..memory.budget import gib
from .pipeline import compute_dtype

log = logging.getLogger("wan_core.upscale.loader")
KIND = "upscale_model"
_SOURCE = "wanmoe_file_identity"  # attribute set on descriptors read by load_upscale_model: (path, size, mtime_ns)
_KEY = "wanmoe_cache_identity"  # attribute caching a descriptor's cache identity


class UpscaleModelError(CheckpointError):
    """A file that is not a single-image upscale model spandrel can run."""


SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors", ".sft")
MAX_WEIGHT_BYTES = 2 << 30  # the largest upscalers spandrel runs are a few hundred MB
# Integer tensors an upscale architecture keeps as buffers (index tables, BatchNorm's counter); any other integer
# tensor would be copied into a float weight.
_INTEGER_BUFFERS = ("num_batches_tracked", "relative_position_index", "position_ids", "_index")


def _descriptor_from_state_dict(state_dict: dict, source: str):
    """Recognise the architecture of `state_dict` with spandrel; a readable UpscaleModelError otherwise."""
    import spandrel

    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(state_dict)
    except spandrel.UnsupportedModelError as err:
        sample = ", ".join(shown(k, 40) for k in list(state_dict)[:4])
        raise UpscaleModelError(
            f"{source}: spandrel does not recognise this file as an upscale model ({len(state_dict)} tensors, keys "
            f"like {sample}). Expected an ESRGAN / Real-ESRGAN / SRVGGNetCompact / SwinIR-family .pth or "
            f".safetensors file; put a supported model into models/upscale_models."
        ) from err
    except Exception:  # noqa: BLE001 - a recognised architecture whose tensors do not fit it fails inside spandrel
        raise UpscaleModelError(
            f"{source}: its tensor names look like an upscale architecture spandrel knows, but their shapes or the "
            "rest of the set do not fit it: the file is damaged or a variant spandrel does not support. Download "
            "it again or use another model.") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise UpscaleModelError(
            f"{source}: this is a {descriptor.architecture.name} {descriptor.purpose} model, not a single-image "
            f"upscaler. Pick a super-resolution model (e.g. RealESRGAN, realesr-animevideov3)."
        )
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise UpscaleModelError(
            f"{source}: {descriptor.architecture.name} model with {descriptor.input_channels} input / "
            f"{descriptor.output_channels} output channels; only RGB (3 -> 3) upscalers are supported."
        )
    return descriptor.eval()


def load_upscale_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an upscale model's .pth/.pt/.ckpt (weights_only, never a pickle's code) or .safetensors (validated header)
    through the pack's checkpoint reader, unwrapped ('params_ema', 'module.' ...) as spandrel expects."""
    path = Path(path)
    if not path.name.lower().endswith(SUFFIXES):
        raise UpscaleModelError(f"{path}: unsupported file type '{path.suffix}'. Expected .pth, .pt, .ckpt or "
                                ".safetensors; put the model into models/upscale_models.")
    regular_file(path, "upscale model file")
    ckpt = open_checkpoint(path).strip_prefix(("module.", "netG."))
    stored = ckpt.weight_bytes()
    if stored > MAX_WEIGHT_BYTES:
        raise UpscaleModelError(f"{path}: {len(ckpt)} tensors of {gib(stored)}; no upscale model is that large "
                                f"(at most {gib(MAX_WEIGHT_BYTES)}). This is another kind of model.")
    integers = [k for k, i in ckpt.infos.items() if not i.dtype.is_floating_point and not k.endswith(_INTEGER_BUFFERS)]
    if integers:
        dtype = str(ckpt.infos[integers[0]].dtype).removeprefix("torch.")
        raise UpscaleModelError(f"{path}: weight {shown(integers[0])} is stored as {dtype} ({len(integers)} integer "
                                "weights); upscale models are floating point (fp32/fp16/bf16). The file is corrupt or "
                                "quantised in a format spandrel does not read.")
    return {key: ckpt.get(key) for key in ckpt.keys()}


def load_upscale_model(path: str | os.PathLike):
    """Load an upscale model file into a spandrel ImageModelDescriptor (on the CPU, eval mode).

    The descriptor remembers the file's identity (path, size, mtime) as read, which keys its cache entries.
    """
    identity = file_identity(path)
    descriptor = _descriptor_from_state_dict(load_upscale_state_dict(path), str(path))
    setattr(descriptor, _SOURCE, identity)
    return descriptor


def upscale_model_from_state_dict(state_dict: dict[str, torch.Tensor], name: str = "state dict"):
    """A spandrel ImageModelDescriptor from an in-memory state dict (tests, converted files)."""
    return _descriptor_from_state_dict(state_dict, name)


def file_of(descriptor) -> tuple | None:
    """(path, size, mtime_ns) of the file `descriptor` was read from by load_upscale_model, else None."""
    return getattr(descriptor, _SOURCE, None)


def _identity(descriptor, cache: ModelCache) -> tuple:
    """The cache identity of a descriptor's weights: its file, or (for core's descriptors) the object while it lives."""
    identity = getattr(descriptor, _KEY, None)
    if identity is None:
        identity = file_of(descriptor)
        if identity is None:
            name = f"{descriptor.architecture.id} x{descriptor.scale} (in memory)"
            identity = (name, id(descriptor.model))
            # id() is reused once the object is gone: forget the copy with it, so no other model matches its key.
            weakref.finalize(descriptor.model, _forget, cache, identity)
        setattr(descriptor, _KEY, identity)
    return identity


def _key(identity: tuple, dtype: torch.dtype) -> CacheKey:
    return CacheKey(KIND, identity, (("dtype", str(dtype).removeprefix("torch.")),))


def _forget(cache: ModelCache, identity: tuple) -> None:
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        try:
            cache.drop(_key(identity, dtype))
        except RuntimeError:  # in use by a run; that run's own reference keeps it valid
            pass


def device_copy(module: nn.Module, device: torch.device | str, dtype: torch.dtype) -> nn.Module:
    """A copy of `module` with its floating tensors made directly on `device` in `dtype` (no second host copy)."""
    memo: dict[int, object] = {}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(p.detach().to(device, dtype if p.is_floating_point() else p.dtype),
                                   requires_grad=False)
    for b in module.buffers():
        memo[id(b)] = b.to(device, dtype if b.is_floating_point() else b.dtype)
    return copy.deepcopy(module, memo).eval()


def _weights_bytes(module: nn.Module, dtype: torch.dtype) -> int:
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * (dtype.itemsize if t.is_floating_point() else t.element_size()) for t in tensors)


def cache_key(descriptor, device: torch.device | str, *, cache: ModelCache | None = None) -> CacheKey:
    """The shared-cache key `on_device` uses for `descriptor` on `device`."""
    return _key(_identity(descriptor, cache or get_cache()), compute_dtype(descriptor, torch.device(device)))


@contextmanager
def on_device(descriptor, device: torch.device | str, *, cache: ModelCache | None = None) -> Iterator[object]:
    """`with on_device(d, device) as model:` a descriptor like `d` whose network is a cached copy on `device`.

    The copy is locked in the shared cache while the block runs and stays cached on `device` afterwards
    (small; evicted least-recently-used when other models need the room, dropped by release_all, copied
    again from `d` next time); `d` itself is left untouched. Raises the cache's NotEnoughMemoryError when it cannot fit.
    """
    cache = cache or get_cache()
    device = torch.device(device)
    dtype = compute_dtype(descriptor, device)
    key = cache_key(descriptor, device, cache=cache)
    size = _weights_bytes(descriptor.model, dtype)

    def load(dev: torch.device) -> nn.Module:
        log.info("%s: copying to %s (%.1f MiB) into the model cache", key.label, dev, size / 2**20)
        return device_copy(descriptor.model, dev, dtype)

    with cache.using(key, load, size_bytes=size, device=device, offload_after=False) as module:
        view = copy.copy(descriptor)  # same architecture, scale, call function; the cached network
        view._model = module  # noqa: SLF001 - spandrel keeps the network in _model (read through .model)
        yield view
