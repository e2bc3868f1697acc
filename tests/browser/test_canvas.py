"""The ComfyUI frontend, in headless Chromium, renders graphs on its canvas: a core-only graph and each shipped workflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.browser import changed_fraction, png_pixel_stats, relevant_console_errors
from harness.comfy_server import REPO_ROOT

pytestmark = pytest.mark.browser

SHIPPED_UI_WORKFLOWS = sorted(p for p in (REPO_ROOT / "workflows").glob("*.json") if not p.stem.endswith("_api"))


CORE_GRAPH_MODEL = "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"


def core_graph() -> dict:
    """A three-node UI-format graph made of core nodes only (two linked, one naming a model file that is absent)."""
    def node(node_id: int, node_type: str, pos: list[int], widgets: list, **extra) -> dict:
        return {"id": node_id, "type": node_type, "pos": pos, "size": [320, 130], "flags": {}, "order": node_id - 1,
                "mode": 0, "properties": extra.pop("properties", {}), "widgets_values": widgets, **extra}

    model = CORE_GRAPH_MODEL
    return {
        "last_node_id": 3, "last_link_id": 1, "version": 0.4, "groups": [], "config": {}, "extra": {},
        "links": [[1, 1, 0, 2, 0, "LATENT"]],
        "nodes": [
            node(1, "EmptyHunyuanLatentVideo", [80, 80], [160, 96, 5, 1],
                 outputs=[{"name": "LATENT", "type": "LATENT", "links": [1]}]),
            node(2, "LatentUpscaleBy", [520, 80], ["nearest-exact", 1.5],
                 inputs=[{"name": "samples", "type": "LATENT", "link": 1}],
                 outputs=[{"name": "LATENT", "type": "LATENT", "links": []}]),
            node(3, "UNETLoader", [80, 320], [model, "default"],
                 outputs=[{"name": "MODEL", "type": "MODEL", "links": []}],
                 properties={"models": [{"name": model, "directory": "diffusion_models",
                                          "url": f"https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files/diffusion_models/{model}"}]}),
        ],
    }


def assert_rendered(blank: Path, drawn: Path) -> None:
    """The screenshot after loading shows drawn nodes: it differs from the empty-canvas one over a real area."""
    before, after = png_pixel_stats(blank), png_pixel_stats(drawn)
    # Measured at 1600x900 for the 3-node core graph: empty canvas (grid + UI chrome) std 11.5, with the nodes
    # std 20.8 and ~15% of pixels changed. A failed render (nothing drawn, or a white/black page) gives ~0% or ~100%.
    changed = changed_fraction(blank, drawn)
    assert 0.03 < changed < 0.9, f"{drawn} vs empty canvas {blank}: {changed:.1%} of pixels changed ({before} -> {after})"
    assert after["std"] > before["std"], f"{drawn} has less detail than the empty canvas: {before} -> {after}"


def test_core_graph_renders_on_canvas(comfy_server, comfy_page, artifact_dir):
    comfy_page.clear_graph()
    blank = comfy_page.screenshot(artifact_dir / "empty_canvas.png")
    with comfy_server.absent_model("diffusion_models", CORE_GRAPH_MODEL):
        comfy_page.refresh_node_definitions()  # another test may have put the file there before this tab opened
        report = comfy_page.load_workflow(core_graph())
    assert report.missing_node_types == []
    assert report.node_count == 3
    # The model file is absent from models/diffusion_models, so the frontend must say so (and nothing else).
    assert report.missing.model_files == [CORE_GRAPH_MODEL], report.missing
    assert report.missing.node_types == [], report.missing
    comfy_page.close_dialogs()
    width, height = comfy_page.canvas_size()
    assert width >= 800 and height >= 600, f"canvas is {width}x{height}"
    assert_rendered(blank, comfy_page.screenshot(artifact_dir / "core_graph.png"))
    assert relevant_console_errors(comfy_page.console_errors) == []


def test_unknown_node_type_is_reported_missing(comfy_page, artifact_dir):
    graph = core_graph()
    graph["nodes"][1]["type"] = "WanMoENoSuchNode"
    report = comfy_page.load_workflow(graph)
    assert report.missing_node_types == ["WanMoENoSuchNode"]
    assert report.missing.node_types == ["WanMoENoSuchNode"], f"the frontend does not name the missing node: {report.missing}"
    comfy_page.screenshot(artifact_dir / "missing_node_report.png")


if SHIPPED_UI_WORKFLOWS:
    @pytest.mark.parametrize("workflow_path", SHIPPED_UI_WORKFLOWS, ids=[p.stem for p in SHIPPED_UI_WORKFLOWS])
    def test_shipped_workflow_renders_with_no_missing_nodes(comfy_page, artifact_dir, workflow_path):
        workflow = json.loads(workflow_path.read_text())
        comfy_page.clear_graph()
        blank = comfy_page.screenshot(artifact_dir / "empty_canvas.png")
        report = comfy_page.load_workflow(workflow)
        assert report.missing_node_types == [], f"{workflow_path.name}: node types the server does not know: {report.missing_node_types}"
        assert report.node_count == len(workflow["nodes"])
        comfy_page.screenshot(artifact_dir / f"{workflow_path.stem}_with_dialogs.png")
        comfy_page.close_dialogs()
        assert_rendered(blank, comfy_page.screenshot(artifact_dir / f"{workflow_path.stem}.png"))
        assert relevant_console_errors(comfy_page.console_errors) == []
