"""Upscale-model files (ESRGAN / Real-ESRGAN / SRVGGNetCompact / SwinIR family ...) recognised by spandrel.

A loaded model is spandrel's `ImageModelDescriptor`, the same object ComfyUI's core `UPSCALE_MODEL` carries,
so models from either loader are interchangeable.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

_lock = threading.Lock()
_loaded: dict[tuple[str, float, int], object] = {}
_MAX_KEPT = 2


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
    """Load an upscale model file into a spandrel ImageModelDescriptor (on the CPU, eval mode)."""
    return _descriptor_from_state_dict(load_upscale_state_dict(path), Path(path).name)


def upscale_model_from_state_dict(state_dict: dict[str, torch.Tensor], name: str = "state dict"):
    """A spandrel ImageModelDescriptor from an in-memory state dict (tests, converted files)."""
    return _descriptor_from_state_dict(state_dict, name)


def cached_upscale_model(path: str | os.PathLike):
    """`load_upscale_model`, reusing the descriptor while the file is unchanged (the last two files are kept)."""
    # Not in wan_core.cache on purpose: its entries are nn.Modules it may drop or discard under memory
    # pressure, while ComfyUI's output cache keeps handing the same UPSCALE_MODEL descriptor (which owns
    # that module) to later runs. Upscale models are small (1-70 MB) and sit on the GPU only while
    # upscale_video runs.
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_mtime, stat.st_size)
    with _lock:
        if key in _loaded:
            return _loaded[key]
    model = load_upscale_model(path)
    with _lock:
        while len(_loaded) >= _MAX_KEPT:
            _loaded.pop(next(iter(_loaded)))
        _loaded[key] = model
    return model
