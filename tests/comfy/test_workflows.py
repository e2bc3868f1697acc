"""The shipped workflows (workflows/*.json + api/ twins) in the real ComfyUI and its frontend (issue 8, Done when).

Generic over every workflow in workflows/: each UI file equals its API twin (converted with the server's own
/object_info, and by the frontend itself), scripts/build_workflows.py regenerates them byte for byte, each API twin
runs end-to-end at a tiny size on tiny checkpoints saved under the real file names (and a tiny clip for each Load
Video), and each UI file opens in the
canvas with no missing node type, no Missing Models dialog and no console error of ours.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from harness.browser import relevant_console_errors
from harness.client import output_files
from harness.comfy_server import REPO_ROOT
from harness.workflow_convert import ui_to_api
from nodes_testing import (UI_WORKFLOWS, WORKFLOWS, demo, ensure_tiny_models, ensure_workflow_inputs, settled,
                           workflow_model_files)

pytestmark = pytest.mark.comfy
STEMS = [p.stem for p in UI_WORKFLOWS]


def without_meta(prompt: dict) -> dict:
    return {node_id: {k: v for k, v in node.items() if k != "_meta"} for node_id, node in prompt.items()}


def api_twin(stem: str) -> dict:
    return json.loads((WORKFLOWS / "api" / f"{stem}.json").read_text())


def expected_video(api: dict) -> tuple[int, int, int, float]:
    """(frames, width, height, fps) the patched (tiny) workflow writes: the latent size (WanMoEEmptyLatent's, or core
    WanVaceToVideo's in a control workflow), or what a WanMoEUpscale node
    on the way to CreateVideo makes of it; a WanMoEFrameInterpolate node makes n frames (n - 1) x factor + 1 and gives
    CreateVideo its fps x factor."""
    (latent,) = [n["inputs"] for n in api.values() if n["class_type"] in ("WanMoEEmptyLatent", "WanVaceToVideo")]
    width, height, frames = latent["width"], latent["height"], latent["length"]
    for node in api.values():
        inputs = node["inputs"]
        if node["class_type"] == "WanMoEUpscale":
            if inputs["mode"] == "exact size":
                width, height = inputs["width"], inputs["height"]
            else:
                width, height = round(width * inputs["scale"]), round(height * inputs["scale"])
        if node["class_type"] == "WanMoEFrameInterpolate":
            frames = (frames - 1) * inputs["factor"] + 1
    (fps,) = [n["inputs"]["fps"] for n in api.values() if n["class_type"] == "CreateVideo"]
    if isinstance(fps, list):  # linked: the frame interpolator's fps output
        source = api[fps[0]]["inputs"]
        fps = source["fps"] * source["factor"]
    return frames, width, height, fps


def test_every_workflow_has_an_api_twin_and_the_shipped_pair_is_there():
    assert {p.stem for p in (WORKFLOWS / "api").glob("*.json")} == set(STEMS)
    assert {"wan22_t2v_a14b_720p", "wan22_t2v_a14b_fp8_lowvram"} <= set(STEMS)


@pytest.mark.parametrize("stem", STEMS)
def test_ui_workflow_converts_to_its_api_twin(comfy_client, stem):
    ui = json.loads((WORKFLOWS / f"{stem}.json").read_text())
    assert ui_to_api(ui, comfy_client.object_info()) == without_meta(api_twin(stem))


def test_build_script_regenerates_every_workflow_byte_for_byte(tmp_path):
    spec = importlib.util.spec_from_file_location("wanmoe_build_workflows", REPO_ROOT / "scripts" / "build_workflows.py")
    build = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = build  # its dataclasses look their module up there
    spec.loader.exec_module(build)
    written = build.write_all(tmp_path)
    generated = sorted(str(p.relative_to(tmp_path)) for p in written)
    shipped = sorted(str(p.relative_to(WORKFLOWS)) for p in [*WORKFLOWS.glob("*.json"), *WORKFLOWS.glob("api/*.json")])
    assert generated == shipped
    stale = [name for name in generated if (tmp_path / name).read_bytes() != (WORKFLOWS / name).read_bytes()]
    assert stale == [], f"run scripts/build_workflows.py: these shipped files differ from what it writes: {stale}"


@pytest.mark.parametrize("stem", STEMS)
def test_api_workflow_runs_on_tiny_checkpoints_and_writes_the_video(comfy_server, comfy_client, stem):
    import av

    api = demo.patch_to_tiny_size(api_twin(stem))
    ensure_tiny_models(comfy_server, workflow_model_files(stem))
    ensure_workflow_inputs(comfy_server, stem)
    outputs = comfy_client.run(api, timeout=300)
    videos = [f for f in output_files(outputs) if f["filename"].endswith(".mp4")]
    assert len(videos) == 1, f"{stem}: outputs {outputs}"
    with av.open(str(comfy_server.output_path(videos[0]))) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(video=0))
        fps = float(stream.average_rate)
    frames_expected, width, height, fps_expected = expected_video(api)
    assert (len(frames), frames[0].width, frames[0].height, fps) == (frames_expected, width, height, fps_expected)
    if any(n["class_type"] == "WanMoEContextWindows" for n in api.values()):  # still windowed at the tiny size
        (sampler,) = [k for k, n in api.items() if n["class_type"] == "WanMoESampler"]
        assert outputs[sampler]["text"][0].split("\n")[1].startswith("2 context windows of 3 latent frames"), outputs[sampler]


def test_long_workflow_is_161_frames_in_81_frame_windows():
    api = api_twin("wan22_t2v_a14b_long")
    (latent,) = [n["inputs"] for n in api.values() if n["class_type"] in ("WanMoEEmptyLatent", "WanVaceToVideo")]
    (windows,) = [n["inputs"] for n in api.values() if n["class_type"] == "WanMoEContextWindows"]
    (video,) = [n["inputs"] for n in api.values() if n["class_type"] == "CreateVideo"]
    assert (latent["length"], windows["window_frames"], windows["overlap_frames"], video["fps"]) == (161, 81, 16, 16.0)


@pytest.fixture(scope="module")
def tiny_models_for_every_workflow(comfy_server) -> None:
    """Before any page opens (the frontend reads the model lists when it loads): every file every workflow names."""
    for stem in STEMS:
        ensure_tiny_models(comfy_server, workflow_model_files(stem))
        ensure_workflow_inputs(comfy_server, stem)


@pytest.mark.browser
@pytest.mark.parametrize("stem", STEMS)
def test_ui_workflow_opens_with_no_missing_nodes_models_or_errors(tiny_models_for_every_workflow, comfy_page,
                                                                 artifact_dir, stem):
    ui = json.loads((WORKFLOWS / f"{stem}.json").read_text())
    report = settled(comfy_page).load_workflow(ui)
    comfy_page.screenshot(artifact_dir / f"{stem}.png")
    assert report.missing_node_types == []
    assert report.missing.node_types == [] and report.missing.model_files == [], report.missing
    assert report.dialogs == []  # no dialog, and (frontend 1.5x) no issues card
    assert report.node_count == len(ui["nodes"])
    assert relevant_console_errors(comfy_page.console_errors) == []


@pytest.mark.browser
@pytest.mark.parametrize("stem", STEMS)
def test_frontend_queues_the_api_twin(tiny_models_for_every_workflow, comfy_page, stem):
    # What the frontend itself would POST on Run (app.graphToPrompt), not only our converter's reading of it.
    ui = json.loads((WORKFLOWS / f"{stem}.json").read_text())
    settled(comfy_page).load_workflow(ui, settle=2.0)
    queued = comfy_page.page.evaluate("async () => (await window.app.graphToPrompt()).output")
    assert without_meta(queued) == without_meta(api_twin(stem))
