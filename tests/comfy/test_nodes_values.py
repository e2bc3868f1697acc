"""Hostile values over the real ComfyUI's HTTP API: every numeric input of the pack's nodes past its bounds, NaN and
infinity, values of the wrong type and unknown dropdown values are refused when the prompt is queued, with the
input named; values at the bounds run; and the server then runs a valid prompt to the same output as before.

Text and boolean widgets are not fuzzed: ComfyUI itself converts any value to str / bool before a node sees it.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from harness.client import PromptFailed, PromptRejected, output_files
from nodes_testing import node_id_of, t2v_prompt, write_tiny_set

pytestmark = pytest.mark.comfy

NUMERIC_BAD = ("twelve", None, {"x": 1}, float("nan"), float("inf"), float("-inf"))
COMBO_BAD = ("no such option", 12345, None)


@pytest.fixture(scope="module")
def names(comfy_server) -> dict[str, str]:
    from wan_core.testing.tiny import upscaler

    names = write_tiny_set(comfy_server, "values")
    upscaler.write_comfy_file(comfy_server.models_dir / "upscale_models" / "wanmoe_values_x4.pth")
    return {**names, "upscaler": "wanmoe_values_x4.pth"}


def upscale_prompt(names: dict[str, str]) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 24, "batch_size": 2, "color": 0x3366CC}},
        "2": {"class_type": "WanMoEUpscaleModelLoader", "inputs": {"model_name": names["upscaler"]}},
        "3": {"class_type": "WanMoEUpscale", "inputs": {
            "images": ["1", 0], "upscale_model": ["2", 0], "mode": "scale", "scale": 2.0, "width": 64, "height": 48,
            "fit": "crop", "resample": "lanczos", "sharpen": 0.0, "stabilize": 0.5, "color_fix": True, "tile_size": 0,
            "frame_batch": 0}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "wanmoe_values/up"}},
    }


def with_defaults(info: dict, class_type: str, links: dict) -> dict:
    """A node of `class_type` with `links` and every other required widget at its default (first option)."""
    inputs = dict(links)
    for name, spec in info[class_type]["input"]["required"].items():
        if name not in inputs:
            options = spec[1] if len(spec) > 1 else {}
            inputs[name] = options["default"] if "default" in options else spec[0][0]
    return {"class_type": class_type, "inputs": inputs}


def post_prompt(info: dict) -> dict:
    """Frames through the post nodes added after the first values test (grading, interpolation) to SaveImage."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 24, "batch_size": 3, "color": 0x3366CC}},
        "2": with_defaults(info, "WanMoEColorGrade", {"images": ["1", 0]}),
        "3": with_defaults(info, "WanMoEFrameInterpolate", {"images": ["2", 0]}),
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "wanmoe_values/post"}},
    }


def bad_values(kind: str, spec: dict) -> list:
    """Values past the bounds, of the wrong type, NaN/inf (numbers) or not among the options (dropdowns)."""
    if kind == "COMBO" or isinstance(kind, list):
        return list(COMBO_BAD)
    if kind not in ("INT", "FLOAT"):
        return []
    step = 1 if kind == "INT" else 0.5
    past = [spec["min"] - step] if spec.get("min") is not None else []
    past += [spec["max"] + step] if spec.get("max") is not None else []
    return past + list(NUMERIC_BAD)


def widget_cases(prompt: dict, info: dict) -> list[tuple[str, str, object]]:
    """(node id, input, bad value) for every widget input of the pack's nodes in `prompt`."""
    cases = []
    for node_id, node in prompt.items():
        schema = info[node["class_type"]]
        if not schema["python_module"].endswith("ComfyUI-WanMoE"):
            continue
        specs = {**schema["input"]["required"], **schema["input"].get("optional", {})}
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                continue  # a link
            kind, spec = specs[name][0], (specs[name][1] if len(specs[name]) > 1 else {})
            cases += [(node_id, name, bad) for bad in bad_values(kind, spec)]
    return cases


def latent_of(comfy_server, outputs: dict) -> torch.Tensor:
    (entry,) = [f for f in output_files(outputs) if f["filename"].endswith(".latent")]
    return load_file(str(comfy_server.output_path(entry)))["latent_tensor"]


def test_bad_values_are_refused_at_queue_time_naming_the_input_then_a_valid_prompt_runs(comfy_server, comfy_client,
                                                                                       names):
    info = comfy_client.object_info()
    t2v = t2v_prompt(names, prefix="wanmoe_values/ref")
    reference = latent_of(comfy_server, comfy_client.run(t2v_prompt(names, prefix="wanmoe_values/ref", latent_only=True),
                                                         timeout=300))
    counts: dict[str, int] = {}
    accepted, nulls = [], 0
    for base in (t2v, upscale_prompt(names), post_prompt(info)):
        for node_id, name, bad in widget_cases(base, info):
            prompt = json.loads(json.dumps(base))
            prompt[node_id]["inputs"][name] = bad
            kind = base[node_id]["class_type"]
            counts[kind] = counts.get(kind, 0) + 1
            try:
                prompt_id = comfy_client.queue(prompt)
            except PromptRejected as rejected:
                report = rejected.node_errors.get(node_id, {})
                text = json.dumps(report.get("errors", []))
                assert name in text, f"{kind}.{name} = {bad!r}: the refusal does not name the input: {text[:400]}"
                assert "Traceback" not in text
                continue
            if bad is None:  # validation sees a linked input as None too, so a null widget is refused when it runs
                with pytest.raises(PromptFailed) as failed:
                    comfy_client.wait(prompt_id, timeout=120)
                message = failed.value.details.get("exception_message", "")
                assert f"{kind}: {name} has no value" in message, f"{kind}.{name} = None: {message[:300]}"
                nulls += 1
                continue
            accepted.append(f"{kind}.{name} = {bad!r}")
    print("\nrefused at validation: " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))
          + f" ({sum(counts.values())} values; {nulls} null widgets refused when their node ran)")
    assert accepted == []

    comfy_client.free(unload_models=True, free_memory=True)  # clears ComfyUI's output cache: the prompt runs again
    again = latent_of(comfy_server, comfy_client.run(t2v_prompt(names, prefix="wanmoe_values/again", latent_only=True),
                                                     timeout=300))
    assert again.shape == (1, 16, 2, 6, 8) and torch.equal(again, reference)


@pytest.mark.parametrize("bounds", ["min", "max"])
def test_every_sampler_and_model_setting_at_its_bounds_runs(comfy_server, comfy_client, names, bounds):
    info = comfy_client.object_info()
    prompt = t2v_prompt(names, prefix=f"wanmoe_values/{bounds}", latent_only=True)
    for class_type, inputs in (("WanMoESampler", ("cfg_high", "cfg_low", "shift", "denoise")),
                               ("WanMoEModelLoader", ("boundary",))):
        node = prompt[node_id_of(prompt, class_type)]
        for name in inputs:
            node["inputs"][name] = info[class_type]["input"]["required"][name][1][bounds]
    sampler = prompt[node_id_of(prompt, "WanMoESampler")]["inputs"]
    sampler["steps"] = 2
    latent = latent_of(comfy_server, comfy_client.run(prompt, timeout=300))
    assert latent.shape == (1, 16, 2, 6, 8) and bool(torch.isfinite(latent).all())
    if bounds == "min":  # denoise 0 keeps no step: the empty latent comes back (normalised and back: float rounding)
        assert latent.abs().max() < 1e-5
    else:
        assert math.isfinite(float(latent.abs().max())) and latent.abs().max() > 0
