"""The pack's custom socket types; each carries a wan_core request (files + settings; loading is lazy)."""

from __future__ import annotations

from comfy_api.latest import io

WanMoEModelType = io.Custom("WANMOE_MODEL")  # wan_core.api.ModelRequest
WanMoETextEncoderType = io.Custom("WANMOE_TEXT_ENCODER")  # wan_core.api.TextEncoderRequest
WanMoEVAEType = io.Custom("WANMOE_VAE")  # wan_core.api.VAERequest
WanMoEWindowsType = io.Custom("WANMOE_WINDOWS")  # wan_core.api.ContextWindows
