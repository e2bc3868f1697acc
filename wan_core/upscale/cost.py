"""What an upscale costs before it starts: memory for the output and for one chunk, work per tile, and the
tile/frame-batch plan that keeps both inside the device (memory from measured free memory, work from the
run's pace so Cancel is seen between tiles). A request that cannot fit is refused before anything is allocated.
"""

from __future__ import annotations

import math

import torch

from ..memory.budget import NotEnoughMemoryError, free_bytes, gib, room, tier_of
from ..memory.pace import current

# Share of free memory the tile/batch planner gives the upscaler's working set (its per-pixel estimate is rough; on
# the CPU, im2col buffers of small convs and the allocator's fragmentation need more slack), and a CPU cap.
UPSCALE_SHARE = {"cuda": 0.5, "cpu": 0.25}
CPU_WORKING_CAP = 2 << 30
# One chunk's float32 buffers per output pixel: model output, resampling taps, sharpening, the stabiliser's and
# the colour fix's maps, the clamped copy: about twelve 3-channel float32 images.
OUTPUT_PX_BYTES = 12 * 3 * 4
MIN_TILE = 64


def _feature_width(model) -> int:
    """Widest conv/linear output of the model (an activation-size proxy)."""
    widths = [p.shape[0] for p in model.model.parameters() if p.dim() >= 2]
    return max(widths, default=64)


def model_px_bytes(model, device: torch.device) -> int:
    """Bytes of model activations per input pixel (~8 live feature maps, more in upsampling layers)."""
    if model is None:
        return 0
    scale, elem = model.scale, (2 if device.type == "cuda" else 4)
    transformer = any(k in type(model.model).__name__.lower() for k in ("swin", "former", "hat", "dat"))
    return elem * _feature_width(model) * (8 + 2 * scale * scale) * (4 if transformer else 1)


def model_px_flops(model) -> int:
    """Floating-point operations of the model per input pixel: two per weight (its convs run at about the input
    resolution; the few upsampling layers after them are small)."""
    return 2 * sum(p.numel() for p in model.model.parameters() if p.dim() >= 2)


def model_px_elements(model) -> int:
    """Output elements the model's convolutions write per input pixel (their output channels, twice for the layers
    after the upsampling): what bounds a call's time when channels are few and the convs memory-bound."""
    return 2 * sum(p.shape[0] for p in model.model.parameters() if p.dim() == 4)


def auto_tile_and_batch(
    model, height: int, width: int, device: torch.device | str, *, budget: int | None = None, max_batch: int | None = None
) -> tuple[int | None, int]:
    """(tile or None for whole frames, frames per batch) that fit the free memory of `device` (or `budget` bytes)
    and the run's work per cancel check (memory.pace)."""
    device = torch.device(device)
    if budget is None:
        budget = room(device, UPSCALE_SHARE["cuda"]) if device.type == "cuda" else \
            min(room(device, UPSCALE_SHARE["cpu"]), CPU_WORKING_CAP)
    if max_batch is None:
        max_batch = 16 if device.type == "cuda" else 4
    scale = model.scale if model is not None else 2
    # Bytes per input pixel: model activations plus the float32 output-side buffers.
    per_px = model_px_bytes(model, device) + OUTPUT_PX_BYTES * scale * scale
    pixels = max(1, budget // per_px)
    if model is not None:  # one model call (a tile or a batch of frames) stays within the work between checks
        pace = current()
        by_work = min(pace.work(device) // model_px_flops(model), pace.elements(device) // model_px_elements(model))
        pixels = min(pixels, max(MIN_TILE * MIN_TILE, int(by_work)))
    frame_px = height * width
    if pixels >= frame_px:
        return None, int(max(1, min(max_batch, pixels // frame_px)))
    tile = max(MIN_TILE, int(math.sqrt(pixels)) // 32 * 32)
    return tile, 1


def check_memory(*, frames: int, canvas: tuple[int, int], content: tuple[int, int], source: tuple[int, int],
                 model, tile: int | None, batch: int, device: torch.device, out_device: torch.device) -> None:
    """Refuse, before anything is allocated, an upscale whose output or one chunk's working memory cannot fit."""
    (ow, oh), (cw, ch), (sw, sh) = canvas, content, source
    output = frames * oh * ow * 3 * 4
    model_px = (tile * tile) if tile is not None else batch * sw * sh
    chunk = batch * cw * ch * OUTPUT_PX_BYTES + model_px * model_px_bytes(model, device)
    if tier_of(device) == tier_of(out_device):
        needs = {tier_of(device): output + chunk}
    else:
        needs = {tier_of(out_device): output, tier_of(device): chunk}
    for tier, need in needs.items():
        where = out_device if tier == tier_of(out_device) else device
        available = room(where)
        if need > available:
            raise NotEnoughMemoryError(
                f"upscaling {frames} frame(s) to {ow}x{oh} needs about {gib(need)} on {tier} (the {gib(output)} "
                f"output and {gib(chunk)} for {batch} frame(s) at a time), but {gib(available)} is available "
                f"({gib(free_bytes(where))} free). To fit: a smaller width/height or scale, fewer frames per run, "
                "a smaller tile_size or frame_batch (0 = automatic), or free memory (Unload models).",
                needed=need, free=available, device=tier)
