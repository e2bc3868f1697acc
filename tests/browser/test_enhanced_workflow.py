"""The enhanced workflow queued from the canvas: the Prompt Enhance node shows what it changed, the filter, moderation
and interpolation nodes their reports, in read-only boxes (web/wanmoe.js) that are saved neither in the workflow nor
in the prompt."""

from __future__ import annotations

import json
import time

import pytest

from harness.browser import relevant_console_errors
from nodes_testing import WORKFLOWS, demo, ensure_tiny_models, queue_tiny_from_canvas, settled, workflow_model_files

pytestmark = [pytest.mark.browser, pytest.mark.comfy]
STEM = "wan22_t2v_a14b_enhanced"
BOXES = {"WanMoEPromptEnhance": "changes_shown", "WanMoESafetyFilter": "report_shown",
         "WanMoEFrameModerate": "report_shown", "WanMoEFrameInterpolate": "report_shown"}


def shown_text(page, node_id: int, box: str):
    return page.page.evaluate(f"() => window.app.graph.getNodeById({node_id}).widgets.find(w => w.name === '{box}')?.value")


def test_enhanced_workflow_shows_its_reports_in_the_canvas(comfy_server, comfy_page, artifact_dir):
    from wan_core.prompting.enhance import enhance_template

    ensure_tiny_models(comfy_server, workflow_model_files(STEM))
    ui = json.loads((WORKFLOWS / f"{STEM}.json").read_text())
    settled(comfy_page).load_workflow(ui, settle=2.0)
    queue_tiny_from_canvas(comfy_page, "browser/enhanced")
    ids = {n["type"]: n["id"] for n in ui["nodes"]}
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not shown_text(comfy_page, ids["WanMoEFrameInterpolate"], "report_shown"):
        time.sleep(0.5)
    comfy_page.screenshot(artifact_dir / "enhanced_reports.png")
    inputs = json.loads((WORKFLOWS / "api" / f"{STEM}.json").read_text())[str(ids["WanMoEPromptEnhance"])]["inputs"]
    expected = enhance_template(inputs["prompt"], inputs["language"], {k: inputs[k] for k in
                                ("shot", "camera", "lighting", "color", "style")}, scene=inputs["scene"])
    assert shown_text(comfy_page, ids["WanMoEPromptEnhance"], "changes_shown") == expected.report()
    assert shown_text(comfy_page, ids["WanMoESafetyFilter"], "report_shown").startswith("no sensitive terms found")
    assert "threshold 0.5, action blur" in shown_text(comfy_page, ids["WanMoEFrameModerate"], "report_shown")
    frames = demo.TINY["length"]
    assert shown_text(comfy_page, ids["WanMoEFrameInterpolate"], "report_shown").startswith(
        f"{frames} -> {(frames - 1) * 2 + 1} frames (x2, dis flow at 1x)")
    saved = comfy_page.page.evaluate("() => window.app.graph.serialize().nodes")
    for node in saved:
        if node["type"] in BOXES:
            shipped = next(n["widgets_values"] for n in ui["nodes"] if n["id"] == node["id"])
            assert len(node["widgets_values"]) == len(shipped), node["type"]  # the boxes are not saved
    assert relevant_console_errors(comfy_page.console_errors) == []
