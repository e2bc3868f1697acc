"""ComfyUI-WanMoE: ComfyUI entry point (ComfyUI imports this folder as a custom-node pack)."""

from .nodes import comfy_entrypoint

__all__ = ["comfy_entrypoint"]
