"""The nodes in the real ComfyUI: queue-time validation messages, and the sampler's expert-per-step summary."""

from __future__ import annotations

import pytest

from harness.client import PromptRejected
from nodes_testing import demo, ensure_tiny_models, node_id_of, t2v_prompt, workflow_model_files

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def tiny_720p_models(comfy_server) -> None:
    ensure_tiny_models(comfy_server, workflow_model_files("wan22_t2v_a14b_720p"))


def rejection(comfy_client, prompt: dict, class_type: str) -> list[dict]:
    """The errors /prompt reports for the node of `class_type` (the only node it may report)."""
    with pytest.raises(PromptRejected) as caught:
        comfy_client.queue(prompt)
    node_id = node_id_of(prompt, class_type)
    assert set(caught.value.node_errors) == {node_id}, caught.value.node_errors
    return caught.value.node_errors[node_id]["errors"]


def messages(errors: list[dict]) -> dict[str, str]:
    """input name -> the message ComfyUI shows for it ("<input> - <our message>").

    ComfyUI runs a node's validate_inputs once and files its message under every input that function takes (all
    the node's inputs: the pack's validate_inputs take them all to check every value), so a WanMoEEmptyLatent problem
    is listed under each of its inputs alike; the message names the input."""
    return {e["extra_info"]["input_name"]: e["details"] for e in errors if e["type"] == "custom_validation_failed"}


def test_length_not_4n_plus_1_is_rejected_at_queue_time(tiny_720p_models, comfy_client):
    prompt = t2v_prompt(length=80)
    errors = rejection(comfy_client, prompt, "WanMoEEmptyLatent")
    message = "length must be 4n+1 frames (1, 5, 9, ..., 81), got 80; try 77 or 81"
    inputs = prompt[node_id_of(prompt, "WanMoEEmptyLatent")]["inputs"]
    assert messages(errors) == {name: f"{name} - {message}" for name in inputs} and len(errors) == len(inputs)


def test_width_not_a_multiple_of_16_is_rejected_at_queue_time(tiny_720p_models, comfy_client):
    prompt = t2v_prompt(width=100)
    errors = rejection(comfy_client, prompt, "WanMoEEmptyLatent")
    message = "width must be a multiple of 16 (8x VAE downsampling, then 2x2 patches), got 100; try 96 or 112"
    inputs = prompt[node_id_of(prompt, "WanMoEEmptyLatent")]["inputs"]
    assert messages(errors) == {name: f"{name} - {message}" for name in inputs} and len(errors) == len(inputs)


def test_missing_expert_file_is_rejected_with_the_folder_named(tiny_720p_models, comfy_server, comfy_client):
    prompt = t2v_prompt()
    prompt[node_id_of(prompt, "WanMoEModelLoader")]["inputs"]["low_noise_model"] = "wanmoe_no_such_expert.safetensors"
    errors = rejection(comfy_client, prompt, "WanMoEModelLoader")
    found = messages(errors)
    inputs = prompt[node_id_of(prompt, "WanMoEModelLoader")]["inputs"]
    assert set(found) == set(inputs) and len(errors) == len(inputs)
    message = found["low_noise_model"].removeprefix("low_noise_model - ")
    assert message.startswith("'wanmoe_no_such_expert.safetensors' is not in the diffusion_models folder (")
    assert str(comfy_server.models_dir / "diffusion_models") in message
    assert message.endswith("); download it there or pick one of the listed files")


def test_rejected_prompts_leave_no_traceback_in_the_log(tiny_720p_models, comfy_server, comfy_client):
    from harness.comfy_server import pack_load_report
    from nodes_testing import log_mark, log_since

    mark = log_mark(comfy_server)
    with pytest.raises(PromptRejected):
        comfy_client.queue(t2v_prompt(length=80))
    text = log_since(comfy_server, mark)
    assert "Failed to validate prompt" in text and "got 80; try 77 or 81" in text
    assert pack_load_report(text)["tracebacks"] == [] and "Traceback" not in text


def test_sampler_reports_which_steps_ran_on_which_expert(tiny_720p_models, comfy_client):
    from wan_core.sampling.schedule import build_schedule

    prompt = t2v_prompt(seed=1234, prefix="nodes_run/summary")
    outputs = comfy_client.run(prompt, timeout=300)
    summary = build_schedule(demo.TINY["steps"], 12.0, "unipc", boundary=0.875, cfg_high=4.0, cfg_low=3.0).summary()
    assert summary.startswith("3 steps high-noise (t 999-") and ", 1 step low-noise (t " in summary
    assert summary.endswith(", cfg 3) [unipc, boundary t 875]")
    assert outputs[node_id_of(prompt, "WanMoESampler")] == {"text": [summary]}


@pytest.mark.browser
def test_sampler_node_shows_its_schedule_in_the_canvas(tiny_720p_models, comfy_page, artifact_dir):
    # web/wanmoe.js: after a run queued from the canvas, the sampler node shows the summary in a read-only box.
    import json
    import time

    from harness.browser import relevant_console_errors
    from nodes_testing import WORKFLOWS, queue_tiny_from_canvas, settled
    from wan_core.sampling.schedule import build_schedule

    ui = json.loads((WORKFLOWS / "wan22_t2v_a14b_720p.json").read_text())
    settled(comfy_page).load_workflow(ui, settle=2.0)
    sampler_id = next(n["id"] for n in ui["nodes"] if n["type"] == "WanMoESampler")
    queue_tiny_from_canvas(comfy_page, "nodes_run/canvas", seed=4321)
    read = f"() => window.app.graph.getNodeById({sampler_id}).widgets.find(w => w.name === 'expert_schedule')?.value"
    deadline, shown = time.monotonic() + 120, None
    while time.monotonic() < deadline and not shown:
        time.sleep(0.25)
        shown = comfy_page.page.evaluate(read)
    comfy_page.screenshot(artifact_dir / "sampler_schedule.png")
    assert shown == build_schedule(demo.TINY["steps"], 12.0, "unipc", boundary=0.875, cfg_high=4.0, cfg_low=3.0).summary()
    saved = comfy_page.page.evaluate(f"() => window.app.graph.serialize().nodes.find(n => n.id === {sampler_id}).widgets_values")
    shipped = next(n["widgets_values"] for n in ui["nodes"] if n["type"] == "WanMoESampler")
    assert saved[:3] == [4321, "fixed", demo.TINY["steps"]] and len(saved) == len(shipped) == 12  # 11 inputs + seed control; the box is not saved
    assert relevant_console_errors(comfy_page.console_errors) == []
