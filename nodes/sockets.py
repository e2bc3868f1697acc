"""The pack's custom socket types; each carries a wan_core request (files + settings; loading is lazy), or for
WANMOE_MODEL a pair of ComfyUI MODELs (WanMoEModelFromComfy)."""

from __future__ import annotations

from ..wan_core.config import BOUNDARY

from .api_version import io

WanMoEModelType = io.Custom("WANMOE_MODEL")  # wan_core.api.ModelRequest, or nodes.comfy_models.ComfyModelPair
WanMoETextEncoderType = io.Custom("WANMOE_TEXT_ENCODER")  # wan_core.api.TextEncoderRequest
WanMoEVAEType = io.Custom("WANMOE_VAE")  # wan_core.api.VAERequest
WanMoEWindowsType = io.Custom("WANMOE_WINDOWS")  # wan_core.api.ContextWindows


def boundary_input() -> io.Float.Input:
    """The expert switch point input both model nodes (our loader and WanMoEModelFromComfy) carry."""
    return io.Float.Input("boundary", default=BOUNDARY, min=0.0, max=1.0, step=0.005,
                          tooltip="Expert switch point as a fraction of 1000 timesteps: the high-noise expert runs "
                                  "while t >= boundary x 1000 (official T2V-A14B: 0.875).")
