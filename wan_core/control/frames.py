"""Fitting clips, masks and images to a width, height and frame count, as core's Wan nodes do.

Resizing is ComfyUI's `common_upscale(..., "bilinear", "center")`: crop the centre to the target aspect ratio
(crop offsets rounded as core rounds them), then bilinear interpolation without antialiasing. Clips are cut to
the frame count or padded with a constant (WanVaceToVideo pads control frames with 0.5 grey and masks with 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_center(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[N, H, W, C] -> [N, height, width, C]: centre crop to the target aspect, then bilinear (core's common_upscale)."""
    x = images.movedim(-1, 1)
    old_h, old_w = x.shape[-2:]
    old_aspect, new_aspect = old_w / old_h, width / height
    dx = round((old_w - old_w * (new_aspect / old_aspect)) / 2) if old_aspect > new_aspect else 0
    dy = round((old_h - old_h * (old_aspect / new_aspect)) / 2) if old_aspect < new_aspect else 0
    x = x.narrow(-2, dy, old_h - 2 * dy).narrow(-1, dx, old_w - 2 * dx)
    return F.interpolate(x, size=(height, width), mode="bilinear").movedim(1, -1)


def fit_clip(images: torch.Tensor, width: int, height: int, length: int, fill: float,
             what: str) -> tuple[torch.Tensor, list[str]]:
    """The first `length` frames at width x height, padded with `fill` frames: (clip, what was changed, for people)."""
    notes = []
    frames, h, w = images.shape[:3]
    if frames > length:
        notes.append(f"{what}: used the first {length} of its {frames} frames")
    clip = images[:length]
    if (h, w) != (height, width):
        notes.append(f"{what}: resized from {w}x{h} to {width}x{height} (centre crop to the aspect ratio, bilinear)")
        clip = resize_center(clip, width, height)
    if clip.shape[0] < length:
        notes.append(f"{what}: padded from {clip.shape[0]} to {length} frames with value {fill:g}")
        clip = F.pad(clip, (0, 0, 0, 0, 0, 0, 0, length - clip.shape[0]), value=fill)
    return clip, notes


def as_image(images: torch.Tensor, what: str) -> torch.Tensor:
    """A ComfyUI IMAGE [frames, H, W, 3+] as float32 CPU: else a ValueError saying what was given."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] < 3 or images.shape[0] < 1:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{what} is {shape}; expected an IMAGE batch [frames, height, width, 3] (e.g. from "
                         "Load Video -> Get Video Components, or Load Image)")
    return images.detach().to("cpu", torch.float32)


def as_mask(masks: torch.Tensor, what: str) -> torch.Tensor:
    """A ComfyUI MASK [frames, H, W] (or one [H, W]) as float32 CPU [frames, H, W, 1]: else a ValueError."""
    if isinstance(masks, torch.Tensor) and masks.ndim == 2:
        masks = masks.unsqueeze(0)
    if not isinstance(masks, torch.Tensor) or masks.ndim != 3 or min(masks.shape) < 1:
        shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise ValueError(f"{what} is {shape}; expected a MASK [frames, height, width] (1 = generate, 0 = keep the "
                         "control frame), e.g. from Load Image's mask or a mask node")
    return masks.detach().to("cpu", torch.float32).unsqueeze(-1)
