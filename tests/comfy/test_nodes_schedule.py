"""Schedules in the real ComfyUI: core schedulers into the sampler's `sigmas`, our WanMoESchedule, bad sigmas.

The core chain is the one users build: UNETLoader (the tiny high-noise expert, which core loads as a Wan model) ->
ModelSamplingSD3 (shift 12) -> BasicScheduler / BetaSamplingScheduler / SplitSigmas -> WanMoESampler.sigmas.
Latents come back losslessly through SaveLatent.
"""

from __future__ import annotations

import time

import pytest
from safetensors.torch import load_file

from harness.client import PromptFailed, PromptRejected, output_files
from nodes_testing import loads_in, log_mark, log_since, node_id_of, t2v_prompt, write_tiny_set
from wan_core.sampling.schedule import build_schedule, full_sigmas

pytestmark = pytest.mark.comfy
STEPS = 4


@pytest.fixture(scope="module")
def names(comfy_server) -> dict[str, str]:
    return write_tiny_set(comfy_server, "sched")


def base(names: dict, prefix: str, **sampler) -> dict:
    """The tiny t2v prompt ending at SaveLatent, with sampler inputs changed."""
    prompt = t2v_prompt(names, steps=STEPS, seed=3, prefix=f"schedule/{prefix}", latent_only=True)
    prompt[node_id_of(prompt, "WanMoESampler")]["inputs"].update(sampler)
    return prompt


def core_sigmas(prompt: dict, names: dict, node: dict, output: int = 0) -> dict:
    """`prompt` with core UNETLoader -> ModelSamplingSD3(12) -> `node` (taking "model") -> sampler.sigmas."""
    prompt["80"] = {"class_type": "UNETLoader", "inputs": {"unet_name": names["high"], "weight_dtype": "default"}}
    prompt["81"] = {"class_type": "ModelSamplingSD3", "inputs": {"model": ["80", 0], "shift": 12.0}}
    node["inputs"].setdefault("model", ["81", 0])
    prompt["82"] = node
    prompt[node_id_of(prompt, "WanMoESampler")]["inputs"]["sigmas"] = ["82", output]
    return prompt


def run(comfy_server, comfy_client, prompt: dict):
    """(latent, summary lines) of a run."""
    outputs = comfy_client.run(prompt, timeout=300)
    (entry,) = [f for f in output_files(outputs) if f["filename"].endswith(".latent")]
    latent = load_file(str(comfy_server.output_path(entry)))["latent_tensor"]
    return latent, outputs[node_id_of(prompt, "WanMoESampler")]["text"]


@pytest.mark.parametrize("grid, node", [
    ("simple", {"class_type": "BasicScheduler", "inputs": {"scheduler": "simple", "steps": STEPS, "denoise": 1.0}}),
    ("beta", {"class_type": "BetaSamplingScheduler", "inputs": {"steps": STEPS, "alpha": 0.6, "beta": 0.6}}),
])
def test_core_scheduler_into_sigmas_is_our_schedule_of_that_name(names, comfy_server, comfy_client, grid, node):
    ours, ours_text = run(comfy_server, comfy_client, base(names, f"ours_{grid}", schedule=grid))
    core, core_text = run(comfy_server, comfy_client, core_sigmas(base(names, f"core_{grid}"), names, node))
    assert core.equal(ours)  # bit for bit: the same sigmas, timesteps, experts and noise
    expected = build_schedule(sigmas=full_sigmas(STEPS, 12.0, "unipc", grid))  # our grid = core's (test_schedule_core)
    assert core_text == [expected.summary()]
    assert ours_text == [build_schedule(STEPS, 12.0, grid=grid).summary()]
    assert core_text[0].split(" [")[0] == ours_text[0].split(" [")[0]  # the same expert split, reported


def test_split_sigmas_low_half_runs_the_split_the_summary_reports(names, comfy_server, comfy_client):
    node = {"class_type": "SplitSigmas", "inputs": {"sigmas": ["83", 0], "step": 2}}
    prompt = core_sigmas(base(names, "split"), names, node, output=1)  # low_sigmas
    prompt["83"] = {"class_type": "BasicScheduler", "inputs": {"model": ["81", 0], "scheduler": "simple", "steps": 8,
                                                                "denoise": 1.0}}
    del node["inputs"]["model"]
    _, text = run(comfy_server, comfy_client, prompt)
    expected = build_schedule(sigmas=full_sigmas(8, 12.0, "unipc", "simple")[2:])
    assert text == [expected.summary()]
    assert text[0].startswith("4 steps high-noise (t 972-878, cfg 4), 2 steps low-noise (t 800-631, cfg 3)")
    assert not expected.from_noise  # starts at sigma 0.97: the (empty) latent is noised to it, as core does


def test_our_schedule_node_into_sigmas_is_the_default_run_bit_for_bit(names, comfy_server, comfy_client):
    plain, plain_text = run(comfy_server, comfy_client, base(names, "plain"))
    prompt = base(names, "own_sigmas")
    prompt["85"] = {"class_type": "WanMoESchedule", "inputs": {"steps": STEPS, "shift": 12.0, "sampler": "unipc",
                                                                "schedule": "official"}}
    prompt[node_id_of(prompt, "WanMoESampler")]["inputs"]["sigmas"] = ["85", 0]
    own, own_text = run(comfy_server, comfy_client, prompt)
    assert own.equal(plain)
    assert own_text[0].split(" [")[0] == plain_text[0].split(" [")[0]


def bad_sigmas(names: dict, node: dict, output: int, maker: str) -> dict:
    """The tiny prompt with `maker` (our WanMoESchedule, node 85, or core BasicScheduler, 82) -> `node` (86) ->
    the sampler's sigmas."""
    prompt = base(names, "bad_sigmas")
    if maker == "ours":
        prompt["85"] = {"class_type": "WanMoESchedule", "inputs": {"steps": STEPS, "shift": 12.0, "sampler": "unipc",
                                                                    "schedule": "official"}}
    else:
        prompt = core_sigmas(prompt, names, {"class_type": "BasicScheduler", "inputs": {
            "scheduler": "simple", "steps": STEPS, "denoise": 1.0}})
    node["inputs"]["sigmas"] = ["85", 0] if maker == "ours" else ["82", 0]
    prompt["86"] = node
    prompt[node_id_of(prompt, "WanMoESampler")]["inputs"]["sigmas"] = ["86", output]
    return prompt


SPLIT = {"class_type": "SplitSigmas", "inputs": {"step": 2}}
FLIP = {"class_type": "FlipSigmas", "inputs": {}}


@pytest.mark.parametrize("node, output, maker, message", [
    # our grid's values are known at queue time, so the message is the one the sampler gives when it starts
    (SPLIT, 0, "ours", "sigmas must end at 0 so the video comes out clean; they end at 0.9"),
    (FLIP, 0, "ours", "sigmas must be strictly decreasing (highest noise first); got [0.0001, "),
    # a core scheduler's values depend on the model: its chain is named instead
    (SPLIT, 0, "core", "sigmas must end at 0 so the video comes out clean; they end at a sigma above 0 (high_sigmas "
                       "of SplitSigmas (node 86) of BasicScheduler (node 82))"),
    (FLIP, 0, "core", "sigmas must be strictly decreasing (highest noise first); got FlipSigmas (node 86) of "
                      "BasicScheduler (node 82). A FlipSigmas"),
], ids=["high_sigmas-ours", "flip-ours", "high_sigmas-core", "flip-core"])
def test_bad_sigmas_from_known_nodes_are_refused_at_queue_time(names, comfy_server, comfy_client, node, output,
                                                                maker, message):
    prompt = bad_sigmas(names, {**node, "inputs": dict(node["inputs"])}, output, maker)
    mark = log_mark(comfy_server)
    with pytest.raises(PromptRejected) as caught:
        comfy_client.queue(prompt)
    errors = caught.value.node_errors[node_id_of(prompt, "WanMoESampler")]["errors"]
    assert any(e["details"].startswith("sigmas - ") and message in e["details"] for e in errors), errors
    assert [name for kind, name in loads_in(log_since(comfy_server, mark)) if kind == "dit"] == []


def test_bad_sigmas_the_queue_cannot_see_fail_when_the_sampler_starts_before_any_expert_loads(names, comfy_server,
                                                                                              comfy_client):
    # SplitSigmasDenoise is not followed at queue time: its high part is caught when the sampler starts
    node = {"class_type": "SplitSigmasDenoise", "inputs": {"denoise": 0.5}}
    prompt = bad_sigmas(names, node, 0, "ours")
    mark = log_mark(comfy_server)
    with pytest.raises(PromptFailed) as failed:
        comfy_client.run(prompt, timeout=300)
    assert failed.value.details["node_type"] == "WanMoESampler"
    assert "sigmas must end at 0 so the video comes out clean; they end at 0.9" in failed.value.details[
        "exception_message"]
    assert [name for kind, name in loads_in(log_since(comfy_server, mark)) if kind == "dit"] == []


def test_absurd_values_upstream_of_the_sampler_are_left_to_validation_and_refused_at_once(names, comfy_client):
    # the queue-time check reads values before ComfyUI validates them: it must not compute with these
    prompt = base(names, "absurd")
    prompt["85"] = {"class_type": "WanMoESchedule", "inputs": {"steps": 10**12, "shift": 12.0, "sampler": "unipc",
                                                                "schedule": "official"}}
    prompt[node_id_of(prompt, "WanMoESampler")]["inputs"]["sigmas"] = ["85", 0]
    prompt[node_id_of(prompt, "WanMoEEmptyLatent")]["inputs"]["length"] = 10**12
    started = time.monotonic()
    with pytest.raises(PromptRejected) as caught:
        comfy_client.queue(prompt)
    assert time.monotonic() - started < 30  # a grid of 10^12 steps would not be refused in seconds
    steps_errors = caught.value.node_errors["85"]["errors"]
    assert any("steps" in e["details"] or "steps" in e["message"] for e in steps_errors), steps_errors
