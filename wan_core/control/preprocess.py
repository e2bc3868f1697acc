"""Control frames from any clip without model downloads: Canny edges, soft edges, tile blur, grayscale (opencv).

Every frame is first resized to width x height (centre crop, bilinear, as core does; 0 keeps a side, or follows
the other's aspect ratio) and the clip cut to `length` frames (0: the largest 4n+1 count it has, dropping the rest,
since Wan videos are 4n+1 frames); a shorter clip is padded after processing (grey = no control, or its last
frame). Then per frame:
  canny       white Canny edges (cv2.Canny on the luminance, hysteresis thresholds low/high) on black;
  soft edges  Sobel gradient magnitude of the luminance blurred with sigma `blur`, scaled by the clip's maximum
              (one scale for the whole clip, so the strength of an edge does not flicker from frame to frame);
  tile        the frame blurred with sigma `blur` (detail left to the model, colours and layout kept);
  grayscale   the luminance in all three channels;
  none        the fitted frames as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
import torch

from ..config import CONTROL_MODES, CONTROL_PADS, VAE_STRIDE, choice
from .frames import as_image, resize_center
from .vace_latents import GREY

ProgressCallback = Callable[[int, int], None]
SIZE_MULTIPLE = 16


@dataclass(frozen=True)
class ControlFrames:
    """Preprocessed control frames (IMAGE [frames, H, W, 3] in 0..1) and what fitting them changed."""

    images: torch.Tensor
    notes: list[str]


def target_size(width: int, height: int, frame_w: int, frame_h: int) -> tuple[int, int]:
    """The output size: as given, the frame's for 0 and 0, or one side from the other by the frame's aspect ratio
    (rounded to a multiple of 16)."""
    if width and height:
        return width, height
    if not width and not height:
        return frame_w, frame_h
    if width:
        return width, max(SIZE_MULTIPLE, round(width * frame_h / frame_w / SIZE_MULTIPLE) * SIZE_MULTIPLE)
    return max(SIZE_MULTIPLE, round(height * frame_w / frame_h / SIZE_MULTIPLE) * SIZE_MULTIPLE), height


def cut_length(frames: int, length: int) -> int:
    """Frames kept of a clip of `frames` for `length` (0: the largest 4n+1 count it has)."""
    return min(frames, length) if length else frames - (frames - 1) % VAE_STRIDE[0]


def pad_length(images: torch.Tensor, length: int, pad: str) -> torch.Tensor:
    """The clip padded to `length` frames with grey (no control) or its last frame repeated."""
    extra = length - images.shape[0]
    if extra <= 0:
        return images
    filler = torch.full_like(images[:1], GREY) if pad == "grey" else images[-1:]
    return torch.cat([images, filler.expand(extra, -1, -1, -1)])


def _luma(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def _canny(frame: np.ndarray, low: float, high: float) -> np.ndarray:
    edges = cv2.Canny(_luma((frame * 255.0 + 0.5).clip(0, 255).astype(np.uint8)), low, high)
    return edges.astype(np.float32) / 255.0


def _soft_edges(frame: np.ndarray, blur: float) -> np.ndarray:
    gray = _luma(frame)
    if blur > 0:
        gray = cv2.GaussianBlur(gray, (0, 0), blur)
    gx, gy = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    return cv2.magnitude(gx, gy)


def _one(frame: np.ndarray, mode: str, low: float, high: float, blur: float) -> np.ndarray:
    """One frame [H, W, 3] float32 0..1 -> [H, W] (edges, luminance) or [H, W, 3] (tile, none)."""
    if mode == "canny":
        return _canny(frame, low, high)
    if mode == "soft edges":
        return _soft_edges(frame, blur)
    if mode == "grayscale":
        return _luma(frame)
    if mode == "tile" and blur > 0:
        return cv2.GaussianBlur(frame, (0, 0), blur)
    return frame


def preprocess(images: torch.Tensor, mode: str, *, low_threshold: float = 100.0, high_threshold: float = 200.0,
               blur: float = 2.0, width: int = 0, height: int = 0, length: int = 0, pad: str = "grey",
               on_frame: ProgressCallback | None = None) -> ControlFrames:
    """Control frames of `mode` from a clip (IMAGE [frames, H, W, 3]), fitted to width x height and length."""
    choice("control mode", mode, CONTROL_MODES)
    choice("pad", pad, CONTROL_PADS)
    if low_threshold > high_threshold:
        raise ValueError(f"Canny's low threshold ({low_threshold:g}) must not be above its high one ({high_threshold:g})")
    clip = as_image(images, "images")[..., :3]
    notes = []
    w, h = target_size(width, height, clip.shape[2], clip.shape[1])
    if (w, h) != (clip.shape[2], clip.shape[1]):
        notes.append(f"resized from {clip.shape[2]}x{clip.shape[1]} to {w}x{h} (centre crop to the aspect ratio)")
        clip = resize_center(clip, w, h)
    kept = cut_length(clip.shape[0], length)
    if kept < clip.shape[0]:
        notes.append(f"used the first {kept} of {clip.shape[0]} frames" + ("" if length else " (4n+1)"))
    out = np.empty((kept, h, w, 3), dtype=np.float32)
    for i, frame in enumerate(clip[:kept].numpy()):
        result = _one(np.ascontiguousarray(frame), mode, low_threshold, high_threshold, blur)
        out[i] = result[..., None] if result.ndim == 2 else result
        if on_frame is not None:
            on_frame(i + 1, kept)
    if mode == "soft edges":
        peak = float(out.max())
        out /= peak if peak > 0 else 1.0
    result = pad_length(torch.from_numpy(out).clamp_(0.0, 1.0), length, pad)
    if result.shape[0] > kept:
        notes.append(f"padded from {kept} to {length} frames ("
                     + ("grey: no control there)" if pad == "grey" else "last frame repeated)"))
    return ControlFrames(result, notes)
