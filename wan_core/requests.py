"""What a caller asks the engine to load: files and settings, validated once when the request is made.

A request names files and says how they should run; nothing is read until the engine needs the weights (the
shared model cache decides whether that means loading, reusing or moving them). The ComfyUI sockets
WANMOE_MODEL / WANMOE_TEXT_ENCODER / WANMOE_VAE / WANMOE_WINDOWS carry these objects between nodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import (COMPUTE_OPTIONS, ENCODER_DTYPES, FUSE_METHODS, MAX_GPUS, MODEL_PLACEMENTS, TEXT_DEVICES,
                     VAE_DTYPES, VAE_STRIDE, WEIGHT_DTYPES, WINDOW_FRAMES, WINDOW_OVERLAP, choice)


@dataclass(frozen=True)
class LoraRequest:
    """One LoRA file on one expert at a strength (negative subtracts it; 0 applies nothing)."""

    path: str
    strength: float = 1.0
    name: str = ""

    def __post_init__(self) -> None:
        if not (isinstance(self.strength, (int, float)) and math.isfinite(self.strength)):
            raise ValueError(f"LoRA strength must be a finite number; got {self.strength!r}")


@dataclass(frozen=True)
class ModelRequest:
    """The two Wan2.2 experts to sample with: files (and VACE module files attached to them), precision, placement
    policy, attention backend, boundary, GPUs, and each expert's LoRA stack (applied in order)."""

    high_noise_path: str
    low_noise_path: str
    weight_dtype: str
    placement: str
    attention: str
    boundary: float
    high_noise_name: str = ""
    low_noise_name: str = ""
    compute: str = "auto"  # the DiT's matmul dtype (see config.COMPUTE_OPTIONS)
    compile: bool = False  # torch.compile of the transformer blocks
    fp8_matmul: bool = False  # e4m3 weights multiplied in fp8 (torch._scaled_mm) instead of dequantised
    gpus: int = 1  # processes (GPUs) every DiT call runs on (wan_core.parallel)
    loras_high: tuple[LoraRequest, ...] = ()
    loras_low: tuple[LoraRequest, ...] = ()
    vace_module_high_path: str = ""  # a module-only VACE file attached to the high-noise expert ("" = none)
    vace_module_low_path: str = ""

    def __post_init__(self) -> None:
        for stack in (self.loras_high, self.loras_low):
            if not isinstance(stack, tuple) or not all(isinstance(item, LoraRequest) for item in stack):
                raise TypeError(f"LoRA stacks must be tuples of LoraRequest; got {stack!r}")
        choice("weight_dtype", self.weight_dtype, tuple(WEIGHT_DTYPES))
        choice("compute dtype", self.compute, COMPUTE_OPTIONS)
        choice("placement", self.placement, MODEL_PLACEMENTS)
        if not (isinstance(self.gpus, int) and 1 <= self.gpus <= MAX_GPUS):
            raise ValueError(f"gpus must be a whole number from 1 to {MAX_GPUS}; got {self.gpus!r}")
        if self.placement == "shard" and self.gpus < 2:
            raise ValueError("placement 'shard' splits the experts' weights over several GPUs; set gpus to 2 or more "
                             "(or choose placement auto)")
        if not (isinstance(self.boundary, (int, float)) and math.isfinite(self.boundary) and 0.0 <= self.boundary <= 1.0):
            raise ValueError(f"boundary must be a number between 0 and 1 (a fraction of 1000 timesteps); got {self.boundary!r}")


@dataclass(frozen=True)
class TextEncoderRequest:
    """A umT5-XXL file and where/how to run it."""

    path: str
    device: str  # "gpu" (the compute device) or "cpu"
    dtype: str
    name: str = ""

    def __post_init__(self) -> None:
        choice("text encoder device", self.device, TEXT_DEVICES)
        choice("text encoder dtype", self.dtype, ENCODER_DTYPES)

    @property
    def storage(self) -> str:
        """The text encoder's storage mode name (`fp8` for scaled fp8_e4m3fn)."""
        return "fp8" if self.dtype == "fp8_e4m3fn" else self.dtype


@dataclass(frozen=True)
class VAERequest:
    """A Wan2.1 VAE file and its compute dtype."""

    path: str
    dtype: str
    name: str = ""

    def __post_init__(self) -> None:
        choice("VAE dtype", self.dtype, VAE_DTYPES)


def window_problem(frames: int, overlap: int) -> str | None:
    """Why `frames` / `overlap` (pixel frames) are not valid context-window settings, or None."""
    step = VAE_STRIDE[0]
    if frames < step + 1 or (frames - 1) % step:
        low = max(step + 1, (frames - 1) // step * step + 1)
        return (f"window_frames must be 4n+1 pixel frames (5, 9, ..., 81), got {frames}; try {low} or {low + step}"
                if frames > step + 1 else f"window_frames must be at least {step + 1} pixel frames, got {frames}")
    if overlap < 0 or overlap % step:
        low = max(0, overlap // step * step)
        return f"overlap_frames must be a multiple of {step} pixel frames (0, 4, ..., 16), got {overlap}; try {low} or {low + step}"
    if overlap >= frames:
        return (f"overlap_frames ({overlap}) must be smaller than window_frames ({frames}): windows that overlap "
                f"completely never move forward; try {frames // 5 // step * step} (a fifth of the window)")
    return None


@dataclass(frozen=True)
class ContextWindows:
    """Sample a long video as overlapping temporal windows: length and overlap in pixel frames, the blend weights."""

    frames: int = WINDOW_FRAMES  # 4n+1
    overlap: int = WINDOW_OVERLAP  # a multiple of 4
    fuse: str = "pyramid"

    def __post_init__(self) -> None:
        problem = window_problem(self.frames, self.overlap)
        if problem:
            raise ValueError(problem)
        choice("fuse", self.fuse, FUSE_METHODS)

    @property
    def latent_frames(self) -> int:
        """Window length in latent frames (4n+1 pixel frames -> n+1)."""
        return (self.frames - 1) // VAE_STRIDE[0] + 1

    @property
    def latent_overlap(self) -> int:
        """Overlap in latent frames (4 pixel frames each)."""
        return self.overlap // VAE_STRIDE[0]


def vace_module_of(request: ModelRequest, expert: str) -> str | None:
    """The VACE module file attached to the expert "high" or "low" of a request, or None."""
    return (request.vace_module_high_path if expert == "high" else request.vace_module_low_path) or None
