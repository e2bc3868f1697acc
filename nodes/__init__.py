"""ComfyUI adapters for wan_core, written with ComfyUI's schema API (the versioned `comfy_api` module that
`api_version` picks: v0_0_2 on ComfyUI 0.3.75 and 0.8.0, `latest` only as a fallback).

Every module in this package that defines a module-level `NODES` list of `io.ComfyNode` classes is
registered; the pack's public node ids are the schemas' `node_id`s. Every node's widget values are checked at
validation (`values.with_value_checks`), so a node added later gets the same checks without code of its own.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil

from .api_version import API_VERSION, ComfyExtension, io


def _node_modules() -> list:
    """Import every submodule of this package, in name order."""
    return [importlib.import_module(f"{__name__}.{m.name}") for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name)]


def node_classes() -> list[type[io.ComfyNode]]:
    """All node classes of the pack, from each submodule's NODES list, each with its widget values checked (NaN and
    infinity, types, bounds, dropdowns: values.with_value_checks)."""
    from .values import with_value_checks

    return [with_value_checks(cls) for module in _node_modules() for cls in getattr(module, "NODES", [])]


class WanMoEExtension(ComfyExtension):
    """The pack as a ComfyUI extension."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return node_classes()


async def comfy_entrypoint() -> WanMoEExtension:
    """Entry point ComfyUI calls when it loads the pack: ties the shared model cache to ComfyUI's memory manager."""
    from .comfy_bridge import connect_model_cache
    from .queue_checks import register

    hooks = connect_model_cache()
    checks = "on" if register() else "off (no server)"
    logging.getLogger("ComfyUI-WanMoE").info("ComfyUI-WanMoE: node API comfy_api.%s; memory: %s; queue-time checks of "
                                             "linked inputs: %s", API_VERSION, hooks, checks)
    return WanMoEExtension()
