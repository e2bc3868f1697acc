"""Where the engine meets ComfyUI: progress bars, Cancel, live previews, and memory cooperation.

wan_core stays ComfyUI-free; it takes plain callables (a step callback, a cancel check, a free-memory
request), and this module builds them from ComfyUI's own hooks.
"""

from __future__ import annotations

import logging
from typing import Callable

import comfy.model_management as mm
import comfy.utils
import torch

from ..wan_core import api

log = logging.getLogger("ComfyUI-WanMoE")
# ComfyUI's own free_memory, kept before install_memory_hooks wraps it (our requests must not loop back to us).
_comfy_free_memory = mm.free_memory
PREVIEW_MAX_SIZE = 512


def compute_device() -> torch.device:
    """The device ComfyUI computes on (honours --cpu and --gpu-only)."""
    return mm.get_torch_device()


def intermediate_device() -> torch.device:
    """Where ComfyUI keeps tensors between nodes (the CPU unless --gpu-only)."""
    return mm.intermediate_device()


def check_cancel() -> None:
    """Raise ComfyUI's interrupt exception when the user pressed Cancel (or /interrupt was posted)."""
    mm.throw_exception_if_processing_interrupted()


def frame_progress(node_id: str | None, total: int | None = None) -> Callable[[int, int], None]:
    """A callback (done, total) that moves a ComfyUI progress bar and honours Cancel (for frames, tiles, chunks)."""
    check_cancel()
    bar: list = [comfy.utils.ProgressBar(total, node_id=node_id)] if total else []

    def update(done: int, total: int) -> None:
        check_cancel()
        if not bar:
            bar.append(comfy.utils.ProgressBar(total, node_id=node_id))
        bar[0].update_absolute(done, total)

    return update


def release_device_cache() -> None:
    """Hand the device's unused cached blocks back (after a node that allocated a lot)."""
    mm.soft_empty_cache()


def preview_image(x0: torch.Tensor):
    """A ComfyUI preview tuple ("JPEG", PIL image, max size) of the first latent frame, or None without PIL."""
    try:
        from PIL import Image
    except ImportError:  # previews are a nicety; never fail a run for them
        return None
    rgb = api.latent_to_rgb(x0)
    return ("JPEG", Image.fromarray(rgb.numpy()), PREVIEW_MAX_SIZE)


class StepProgress:
    """A ComfyUI progress bar over sampling steps that also sends live previews of the x0 estimate."""

    def __init__(self, total: int, node_id: str | None = None, previews: bool = True) -> None:
        self.bar = comfy.utils.ProgressBar(total, node_id=node_id)
        self.previews = previews

    def __call__(self, step: int, timestep: float, expert: str, x0: torch.Tensor | None) -> None:
        preview = preview_image(x0) if self.previews and x0 is not None else None
        self.bar.update_absolute(step + 1, preview=preview)


def free_comfy_memory(bytes_needed: int, device: torch.device) -> None:
    """Ask ComfyUI's memory manager to unload its own models until `bytes_needed` are free on `device`."""
    if device.type != "cpu":
        _comfy_free_memory(bytes_needed, device)


_installed = False


def install_memory_hooks(release_all: Callable[[], None], free_device_bytes: Callable[[int, torch.device], int]) -> None:
    """Make ComfyUI's "Unload models" (/free) release our cache, and its free_memory() make room in our cache too.

    ComfyUI only unloads models registered in its own loaded-model list, so without these wrappers our
    entries would survive "Unload models". The wrappers call the original first and never raise. ComfyUI 0.3.75 and
    0.8.0 offer no supported hook for this (no callback registry in comfy.model_management, none in comfy_api; its
    hook_breaker restores only cast_to), so both need the wrappers: docs/compatibility.md.
    """
    global _installed
    if _installed:
        return
    original_unload_all, original_free = mm.unload_all_models, _comfy_free_memory

    def unload_all_models(*args, **kwargs):
        result = original_unload_all(*args, **kwargs)
        try:
            release_all()
        except Exception:  # never break ComfyUI's own unloading
            log.exception("ComfyUI-WanMoE: releasing the model cache failed")
        return result

    def free_memory(memory_required, device, *args, **kwargs):
        result = original_free(memory_required, device, *args, **kwargs)
        try:
            if torch.device(device).type != "cpu" and mm.get_free_memory(device) < memory_required:
                free_device_bytes(int(memory_required), torch.device(device))
        except Exception:
            log.exception("ComfyUI-WanMoE: freeing cache memory for ComfyUI failed")
        return result

    mm.unload_all_models, mm.free_memory = unload_all_models, free_memory
    _installed = True


MEMORY_HOOKS = "our cache wraps comfy.model_management.unload_all_models and free_memory (no supported hook)"


def connect_model_cache() -> str:
    """Both directions: our cache asks ComfyUI for room before loading; ComfyUI's unload/free reach our cache.

    Returns how ComfyUI's side is connected, for the log. Models that come in as core MODELs
    (WanMoEModelFromComfy) are ComfyUI's own and need none of this.
    """
    api.set_free_memory_callback(free_comfy_memory)
    install_memory_hooks(api.release_models, api.free_device_memory)
    return MEMORY_HOOKS
