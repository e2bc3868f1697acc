"""ComfyUI-WanMoE: ComfyUI entry point (ComfyUI imports this folder as a custom-node pack)."""

import importlib.util

# The engine (wan_core) is usable without ComfyUI, e.g. when pytest imports this folder as a package;
# the node adapters are only loaded where ComfyUI's API is importable.
if importlib.util.find_spec("comfy_api") is not None:
    from .nodes import comfy_entrypoint

    __all__ = ["comfy_entrypoint"]

# Frontend extension (web/wanmoe.js): shows the sampler's expert-per-step summary in the node.
WEB_DIRECTORY = "./web"
