"""The pack's custom socket types; each carries a wan_core request (files + settings; loading is lazy), or for
WANMOE_MODEL a pair of ComfyUI MODELs (WanMoEModelFromComfy)."""

from __future__ import annotations

from .api_version import io

WanMoEModelType = io.Custom("WANMOE_MODEL")  # wan_core.api.ModelRequest, or nodes.comfy_models.ComfyModelPair
WanMoETextEncoderType = io.Custom("WANMOE_TEXT_ENCODER")  # wan_core.api.TextEncoderRequest
WanMoEVAEType = io.Custom("WANMOE_VAE")  # wan_core.api.VAERequest
WanMoEWindowsType = io.Custom("WANMOE_WINDOWS")  # wan_core.api.ContextWindows
