"""The one place the pack imports ComfyUI's node API: the newest versioned `comfy_api` module it is tested with.

ComfyUI keeps its schema API in versioned modules (`comfy_api.v0_0_2`, ...) that stay backward compatible, while
`comfy_api.latest` points at the version still under development and may change without notice. ComfyUI 0.3.75
and 0.8.0 both ship `v0_0_2` (the first numbered version; 0.8.0 also lists `io`/`ui` in its `__all__`), so the
pack uses it there and falls back to `latest` only on a ComfyUI without any version it was tested with.
Versions are tried newest first; add one here after the suites pass on it (docs/compatibility.md).
"""

from __future__ import annotations

import importlib
from types import ModuleType

TESTED_VERSIONS = ("v0_0_2",)  # newest first
FALLBACK = "latest"


def _first_available() -> tuple[str, ModuleType]:
    """(version name, module) of the newest tested versioned API present, else `comfy_api.latest`."""
    for name in TESTED_VERSIONS:
        try:
            module = importlib.import_module(f"comfy_api.{name}")
        except ImportError:
            continue
        if hasattr(module, "io") and hasattr(module, "ComfyExtension"):
            return name, module
    return FALLBACK, importlib.import_module(f"comfy_api.{FALLBACK}")


API_VERSION, _api = _first_available()
io = _api.io
ComfyExtension = _api.ComfyExtension

__all__ = ["API_VERSION", "ComfyExtension", "io"]
