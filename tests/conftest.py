"""Shared fixtures: one real ComfyUI server and one headless Chromium per test session (both always stopped).

Fixtures other tests use:
  comfy_server  (session) harness.comfy_server.ComfyServer, booted with this pack; `.client`, `.add_model()`, `.log_text()`
  comfy_client  (session) harness.client.ComfyClient of that server: queue/wait/run/interrupt/free/object_info/view
  chromium      (session) harness.browser.Browser (Debian chromium through Playwright)
  comfy_page    (function) harness.browser.CanvasPage: a fresh tab on the server's frontend, closed afterwards
  artifact_dir  (function) out/test-artifacts/<test name>/ for screenshots and other files worth looking at
The server is shared: a test that adds model files leaves them for later tests; use distinct file names.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))  # `harness` and the *_testing helpers

from harness.browser import FRONTEND_SETTINGS, Browser, CanvasPage  # noqa: E402
from harness.client import ComfyClient  # noqa: E402
from harness.comfy_server import REPO_ROOT, ComfyServer  # noqa: E402

ARTIFACTS = REPO_ROOT / "out" / "test-artifacts"
_timings: dict[str, float] = {}


@pytest.fixture(scope="session")
def comfy_server() -> ComfyServer:
    """The real ComfyUI (CPU, headless) with this pack, booted once per session."""
    server = ComfyServer(frontend_settings=FRONTEND_SETTINGS)
    try:
        server.start()
        _timings["ComfyUI boot (s)"] = server.boot_seconds
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def comfy_client(comfy_server: ComfyServer) -> ComfyClient:
    """HTTP client of the session's ComfyUI."""
    return comfy_server.client


@pytest.fixture(scope="session")
def chromium() -> Browser:
    """Headless Debian Chromium driven by Playwright, launched once per session."""
    started = time.monotonic()
    with Browser() as browser:
        _timings["Chromium launch (s)"] = time.monotonic() - started
        yield browser


@pytest.fixture
def comfy_page(comfy_server: ComfyServer, chromium: Browser) -> CanvasPage:
    """A fresh tab on the session ComfyUI's frontend, with the app and graph ready."""
    started = time.monotonic()
    page = chromium.open(comfy_server.url)
    _timings.setdefault("frontend first open (s)", time.monotonic() - started)
    try:
        yield page
    finally:
        page.close()


@pytest.fixture
def artifact_dir(request: pytest.FixtureRequest) -> Path:
    """out/test-artifacts/<test name>/, kept after the run for people to look at."""
    path = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    path.mkdir(parents=True, exist_ok=True)
    return path


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Print what the shared harnesses cost this session."""
    if _timings:
        terminalreporter.section("harness timings")
        for name, seconds in _timings.items():
            terminalreporter.write_line(f"{name}: {seconds:.1f}")
