"""The latent preparation of core WanVaceToVideo (comfy_extras/nodes_wan.py), as an engine function.

Control frames (cut/padded to `length` with 0.5 grey, resized) and the mask (default ones, padded with 1) make
inactive = (video - 0.5) * (1 - mask) + 0.5 and reactive = (video - 0.5) * mask + 0.5, each VAE-encoded: 32 raw
latent channels. The mask becomes 64 channels by 8x8 pixel-unshuffle, then nearest-exact to the latent frames. A
reference image is encoded as one more latent frame in front (its reactive half the latent of "zero", i.e. the
channel means; its mask zeros), and `trim` says how many latent frames to cut after sampling (TrimVideoLatent).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..config import LATENT_CHANNELS, VAE_STRIDE
from ..vae.latent_format import denormalize
from .frames import as_image, as_mask, fit_clip, resize_center

# IMAGE [frames, H, W, 3] in 0..1 (frames 4n+1) -> raw Wan2.1 latent [1, 16, n+1, H/8, W/8]
Encode = Callable[[torch.Tensor], torch.Tensor]
GREY = 0.5  # "no control" in VACE's pixel space


@dataclass(frozen=True)
class VaceLatents:
    """What WanVaceToVideo appends to the conditioning, and the size of the latent to sample."""

    frames: torch.Tensor  # [1, 32, T, h, w] raw latents: inactive then reactive (reference frames first)
    mask: torch.Tensor  # [1, 64, T, h, w]
    trim: int  # reference latent frames in front, to cut after sampling
    notes: list[str] = field(default_factory=list)  # how the inputs were fitted, for people

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """(16, T, h, w): one item of the latent to sample."""
        return (LATENT_CHANNELS, *self.frames.shape[2:])


def _mask_channels(mask: torch.Tensor, latent_frames: int) -> torch.Tensor:
    """[frames, H, W, 1] -> [64, latent_frames, H/8, W/8]: 8x8 pixel-unshuffle, nearest-exact along time."""
    frames, height, width = mask.shape[:3]
    s = VAE_STRIDE[1]
    packed = mask.reshape(frames, height // s, s, width // s, s).permute(2, 4, 0, 1, 3)
    packed = packed.reshape(s * s, frames, height // s, width // s)
    return F.interpolate(packed.unsqueeze(0), size=(latent_frames, height // s, width // s),
                         mode="nearest-exact").squeeze(0)


def _reference(encode: Encode, image: torch.Tensor, width: int, height: int, notes: list[str]) -> torch.Tensor:
    """[1, 32, 1, h, w]: the reference image's latent, then the raw latent of zeros (the reactive half)."""
    image = as_image(image, "reference_image")
    if image.shape[0] > 1:
        notes.append(f"reference_image: used the first of its {image.shape[0]} images")
    latent = encode(resize_center(image[:1], width, height)[..., :3])
    return torch.cat([latent, denormalize(torch.zeros_like(latent))], dim=1)


def prepare_vace(encode: Encode, *, width: int, height: int, length: int, control_video: torch.Tensor | None = None,
                 control_masks: torch.Tensor | None = None, reference_image: torch.Tensor | None = None) -> VaceLatents:
    """WanVaceToVideo's latents for a control video (or none: all grey), mask and reference image."""
    latent_frames = (length - 1) // VAE_STRIDE[0] + 1
    notes: list[str] = []
    if control_video is None:
        video = torch.full((length, height, width, 3), GREY)
    else:
        video, fitted = fit_clip(as_image(control_video, "control_video")[..., :3], width, height, length, GREY,
                                 "control_video")
        notes += fitted
    if control_masks is None:
        mask = torch.ones(length, height, width, 1)
    else:
        mask, fitted = fit_clip(as_mask(control_masks, "control_masks"), width, height, length, 1.0, "control_masks")
        notes += fitted
    centred = video - GREY
    inactive, reactive = encode(centred * (1 - mask) + GREY), encode(centred * mask + GREY)
    frames = torch.cat([inactive, reactive], dim=1)
    packed = _mask_channels(mask, latent_frames)
    trim = 0
    if reference_image is not None:
        reference = _reference(encode, reference_image, width, height, notes)
        frames = torch.cat([reference.to(frames.dtype), frames], dim=2)
        trim = reference.shape[2]
        packed = torch.cat([torch.zeros_like(packed[:, :trim]), packed], dim=1)
    return VaceLatents(frames, packed.unsqueeze(0), trim, notes)
