"""Headless Chromium (Debian's, through Playwright) driving the ComfyUI frontend: load a workflow, report, screenshot."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .frontend_reports import STATE_JS, MissingReport, close_issue_panel, read_missing_report

CHROMIUM_ENV = "WANMOE_CHROMIUM"
CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage",
)
VIEWPORT = {"width": 1600, "height": 900}

# Frontend settings for a fresh user directory, so a page opens on the canvas rather than on first-run dialogs
# (ids from comfyui-frontend-package 1.32's settings schema).
FRONTEND_SETTINGS = {
    "Comfy.TutorialCompleted": True,  # otherwise the templates browser opens on a fresh user
    "Comfy.InstalledVersion": "1.32.9",  # the version tested; only marks the user as not new
    "Comfy.Release.Version": "99.0.0",  # no "what's new" pop-up
    "Comfy.Release.Status": "skipped",
    "Comfy.Release.Timestamp": 4102444800000,
    "Comfy.Workflow.ShowMissingModelsWarning": True,  # the missing-models report tests read (dialog or issues panel)
    "Comfy.Workflow.Persist": False,  # a new tab must not restore (and race with) the previous tab's workflow
    "Comfy.Workflow.ShowMissingNodesWarning": True,
    "Comfy.Minimap.Visible": False,
    "Comfy.Toast.DisableReconnectingToast": True,
}


# Console errors that are not the pack's doing: optional per-user files a fresh user directory lacks (user.css,
# comfy.templates.json -> 404), api.comfy.org and model download hosts being unreachable offline (the Missing
# Models dialog asks each file's URL for its size), and frontend 1.32 setting
# LiteGraph.Canvas.MinFontSizeForLOD before that setting is defined (TypeError in its settings store's onChange),
# and frontend 1.58 asking ComfyUI 0.8.0's /api/jobs for status "cancelled", a status only newer servers know (400).
KNOWN_CONSOLE_NOISE = (
    "Failed to load resource",
    "Error fetching file size: TypeError: Failed to fetch",
    "Cannot read properties of undefined (reading 'id')\n    at onChange",
    "Error fetching jobs: JobsApiError: Failed to fetch jobs: 400",
)


def relevant_console_errors(errors: list[str]) -> list[str]:
    """Console errors minus KNOWN_CONSOLE_NOISE."""
    return [e for e in errors if not any(noise in e for noise in KNOWN_CONSOLE_NOISE)]


def chromium_path() -> str:
    """The Chromium binary to drive: $WANMOE_CHROMIUM, else Debian's /usr/bin/chromium."""
    path = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"No Chromium at {path}. Install Debian's (`apt-get install chromium`, done by `make setup`) "
            f"or set {CHROMIUM_ENV} to a Chromium binary. Playwright's own browser download is not used."
        )
    return path


def write_frontend_settings(user_dir: str | os.PathLike, settings: dict | None = None) -> Path:
    """Write the frontend's per-user settings file (user/default/comfy.settings.json), merging over what is there."""
    path = Path(user_dir) / "default" / "comfy.settings.json"
    for folder in ("workflows", "subgraphs"):  # the frontend lists them on start; absent, each is a 404
        (path.parent / folder).mkdir(parents=True, exist_ok=True)
    current = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**current, **(FRONTEND_SETTINGS if settings is None else settings)}, indent=2))
    return path


@dataclass
class LoadReport:
    """What the frontend made of a loaded workflow."""

    node_types: list[str]
    missing_node_types: list[str]  # types the frontend has no definition for (LiteGraph's registry)
    node_count: int
    missing: MissingReport  # the missing nodes / models the frontend showed (dialogs or issues panel)
    dialogs: list[str] = field(default_factory=list)  # every open dialog's text (and 1.5x's issues card) before reading


class Browser:
    """A headless Chromium with a fresh profile; `with Browser() as b: page = b.open(url)`."""

    def __init__(self, viewport: dict | None = None):
        self.viewport = viewport or VIEWPORT
        self._playwright = None
        self._context = None
        self._profile: str | None = None

    def start(self) -> "Browser":
        """Launch Chromium (Debian's binary, never a Playwright download)."""
        from playwright.sync_api import sync_playwright

        self._profile = tempfile.mkdtemp(prefix="wanmoe-chromium-")
        self._playwright = sync_playwright().start()
        try:
            self._context = self._playwright.chromium.launch_persistent_context(
                self._profile, executable_path=chromium_path(), headless=True, args=list(CHROMIUM_ARGS),
                viewport=self.viewport,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close the browser and delete its profile; safe to call twice."""
        if self._context is not None:
            self._context.close()
            self._context = None
        if self._playwright is not None:
            self._playwright.stop()
            self._playwright = None
        if self._profile:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None

    def open(self, url: str, timeout: float = 120.0) -> "CanvasPage":
        """A new tab on the ComfyUI frontend at `url`, once the app and its graph exist."""
        return CanvasPage(self._context.new_page(), url, timeout)

    def __enter__(self) -> "Browser":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class CanvasPage:
    """One tab on the ComfyUI frontend, with its console errors collected."""

    def __init__(self, page, url: str, timeout: float = 120.0):
        self.page = page
        self.console_errors: list[str] = []
        page.on("console", lambda msg: msg.type == "error" and self.console_errors.append(msg.text))
        page.on("pageerror", lambda err: self.console_errors.append(f"pageerror: {err}"))
        page.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true');")  # the Nodes 2.0 banner
        page.goto(url, wait_until="domcontentloaded", timeout=timeout * 1000)
        page.wait_for_function(
            "() => window.app && window.app.graph && window.app.canvas && window.LiteGraph", timeout=timeout * 1000
        )

    def close(self) -> None:
        """Close the tab."""
        self.page.close()

    def registered_node_types(self) -> list[str]:
        """Every node type the frontend knows (from the server's /object_info)."""
        return self.page.evaluate("() => Object.keys(window.LiteGraph.registered_node_types)")

    def load_workflow(self, workflow: dict, settle: float = 10.0) -> LoadReport:
        """Load a UI-format workflow into the canvas with app.loadGraphData and report what was missing."""
        # loadGraphData resolves after it has asked for the missing-nodes/models checks; their UI renders a moment later.
        self.page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)
        shown = self.wait_for_stable_dialogs(settle)
        types = sorted({n["type"] for n in workflow.get("nodes", [])})
        known = set(self.registered_node_types())
        return LoadReport(
            node_types=types,
            missing_node_types=[t for t in types if t not in known],
            node_count=self.node_count(),
            missing=read_missing_report(self.page),
            dialogs=shown,
        )

    def wait_for_stable_dialogs(self, timeout: float = 10.0, quiet: float = 0.75) -> list[str]:
        """The open dialogs' (and issues card's) texts once they stopped changing for `quiet` seconds (at most `timeout`)."""
        deadline = time.monotonic() + timeout
        last, since = self.page.evaluate(STATE_JS), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.15)
            now = self.page.evaluate(STATE_JS)
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return last

    def refresh_node_definitions(self) -> None:
        """The frontend's "Refresh node definitions" (key R): re-read /object_info, so combo lists show today's files.

        Frontend 1.5x decides which model files are missing from those lists (loaded when the tab opened), 1.3x asked
        the server's model folders at every load; after adding or removing a file, refresh as a user would.
        """
        self.page.evaluate("async () => { await window.app.refreshComboInNodes(); }")

    def clear_graph(self, settle: float = 0.5) -> None:
        """Empty the graph on the canvas (a blank baseline for screenshots)."""
        self.page.evaluate("() => { window.app.graph.clear(); window.app.canvas.setDirty(true, true); }")
        time.sleep(settle)

    def node_count(self) -> int:
        """Nodes in the graph shown on the canvas."""
        return self.page.evaluate("() => window.app.graph._nodes.length")

    def canvas_size(self) -> tuple[int, int]:
        """(width, height) in CSS pixels of the graph canvas element."""
        box = self.page.evaluate(
            "() => { const r = window.app.canvas.canvas.getBoundingClientRect(); return [r.width, r.height]; }"
        )
        return int(box[0]), int(box[1])

    def dialog_texts(self) -> list[str]:
        """Text of every open dialog (PrimeVue dialogs the frontend uses for missing nodes/models, errors)."""
        return self.page.evaluate(
            "() => [...document.querySelectorAll('[role=dialog], .p-dialog')].map(d => d.innerText.trim()).filter(Boolean)"
        )

    def close_dialogs(self) -> None:
        """Close open dialogs (Escape) and frontend 1.5x's issues card and side panel, so a screenshot shows the canvas."""
        close_issue_panel(self.page)
        for _ in range(3):
            if not self.dialog_texts():
                return
            self.page.keyboard.press("Escape")
            time.sleep(0.3)

    def screenshot(self, path: str | os.PathLike) -> Path:
        """Save a PNG of the whole tab."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path))
        return path


def png_pixel_stats(path: str | os.PathLike) -> dict:
    """Mean, standard deviation and distinct-colour count of a PNG, to tell a rendered canvas from a blank one."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    flat = pixels.reshape(-1, 3)
    return {
        "mean": float(flat.mean()),
        "std": float(flat.std()),
        "colours": int(len(np.unique(flat[:: max(1, len(flat) // 200_000)], axis=0))),
        "size": (pixels.shape[1], pixels.shape[0]),
    }


def changed_fraction(before: str | os.PathLike, after: str | os.PathLike, threshold: int = 24) -> float:
    """Share of pixels whose colour moved by more than `threshold` (0..255, any channel) between two same-size PNGs."""
    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(before).convert("RGB"), dtype=np.int16)
    b = np.asarray(Image.open(after).convert("RGB"), dtype=np.int16)
    if a.shape != b.shape:
        raise ValueError(f"screenshots differ in size: {a.shape} vs {b.shape}")
    return float((np.abs(a - b).max(axis=-1) > threshold).mean())
