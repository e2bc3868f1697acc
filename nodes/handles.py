"""The pack's custom socket types and the small handle objects they carry (paths + settings; loading is lazy)."""

from __future__ import annotations

from dataclasses import dataclass

from comfy_api.latest import io

WanMoEModelType = io.Custom("WANMOE_MODEL")
WanMoETextEncoderType = io.Custom("WANMOE_TEXT_ENCODER")
WanMoEVAEType = io.Custom("WANMOE_VAE")


@dataclass(frozen=True)
class ModelHandle:
    """The two Wan2.2 experts to sample with: files, precision, placement policy, attention backend, boundary."""

    high_noise_path: str
    low_noise_path: str
    weight_dtype: str
    placement: str
    attention: str
    boundary: float
    high_noise_name: str = ""
    low_noise_name: str = ""


@dataclass(frozen=True)
class TextEncoderHandle:
    """A umT5-XXL file and where/how to run it."""

    path: str
    device: str  # "gpu" or "cpu"
    dtype: str
    name: str = ""


@dataclass(frozen=True)
class VAEHandle:
    """A Wan2.1 VAE file and its compute dtype."""

    path: str
    dtype: str
    name: str = ""
