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
from ..io.checkpoint import file_identity
from .pipeline import compute_dtype

log = logging.getLogger("wan_core.upscale.loader")
KIND = "upscale_model"
_SOURCE = "wanmoe_file_identity"  # attribute set on descriptors read by load_upscale_model: (path, size, mtime_ns)
_KEY = "wanmoe_cache_identity"  # attribute caching a descriptor's cache identity


class UpscaleModelError(ValueError):
    """A file that is not a single-image upscale model spandrel can run."""


def _descriptor_from_state_dict(state_dict: dict, source: str):
    """Recognise the architecture of `state_dict` with spandrel; a readable UpscaleModelError otherwise."""
    import spandrel

    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(state_dict)
    except spandrel.UnsupportedModelError as err:
        sample = ", ".join(list(state_dict)[:4])
        raise UpscaleModelError(
            f"{source}: spandrel does not recognise this file as an upscale model ({len(state_dict)} tensors, keys "
            f"like {sample}). Expected an ESRGAN / Real-ESRGAN / SRVGGNetCompact / SwinIR-family .pth or "
            f".safetensors file; put a supported model into models/upscale_models."
        ) from err
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
    """Read a .pth/.pt/.ckpt (restricted unpickler) or .safetensors file into a canonical state dict."""
    import spandrel

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"upscale model file {path} does not exist; put it into models/upscale_models.")
    try:
        return spandrel.ModelLoader().load_state_dict_from_file(path)
    except ValueError as err:  # unknown extension
        raise UpscaleModelError(f"{path.name}: {err} Expected .pth, .pt, .ckpt or .safetensors.") from err
    except Exception as err:  # noqa: BLE001 - corrupt/foreign files fail in many ways inside torch/safetensors
        raise UpscaleModelError(
            f"{path.name}: could not be read as a model file ({type(err).__name__}: {err}). "
            f"Expected a PyTorch .pth or .safetensors upscale model."
        ) from err


def load_upscale_model(path: str | os.PathLike):
    """Load an upscale model file into a spandrel ImageModelDescriptor (on the CPU, eval mode).

    The descriptor remembers the file's identity (path, size, mtime) as read, which keys its cache entries.
    """
    identity = file_identity(path)
    descriptor = _descriptor_from_state_dict(load_upscale_state_dict(path), Path(path).name)
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
