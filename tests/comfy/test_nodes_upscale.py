"""The upscale nodes in the real ComfyUI: schemas served, chained after core's UpscaleModelLoader and our own loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact

from harness.client import output_files

pytestmark = pytest.mark.comfy

UPSCALE_INPUTS = {"images", "upscale_model", "mode", "scale", "width", "height", "fit", "resample", "sharpen",
                  "stabilize", "color_fix", "tile_size", "frame_batch"}


@pytest.fixture(scope="module")
def tiny_models(comfy_server, tmp_path_factory) -> dict[str, str]:
    """A random-weight SRVGGNetCompact x4 saved as .pth and .safetensors into models/upscale_models."""
    torch.manual_seed(0)
    sd = Compact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=4).state_dict()
    folder = tmp_path_factory.mktemp("upscale_models")
    torch.save(sd, folder / "wanmoe_test_compact_x4.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, folder / "wanmoe_test_compact_x4.safetensors")
    for name in ("wanmoe_test_compact_x4.pth", "wanmoe_test_compact_x4.safetensors"):
        comfy_server.add_model("upscale_models", folder / name)
    return {"pth": "wanmoe_test_compact_x4.pth", "safetensors": "wanmoe_test_compact_x4.safetensors"}


def upscale_prompt(loader: dict, **upscale_inputs) -> dict:
    """EmptyImage (3 frames, 40x24) -> loader -> WanMoEUpscale -> SaveImage."""
    inputs = {"images": ["1", 0], "upscale_model": ["2", 0], "mode": "scale", "scale": 4.0, "width": 1280, "height": 720,
              "fit": "crop", "resample": "lanczos", "sharpen": 0.0, "stabilize": 0.5, "color_fix": True,
              "tile_size": 0, "frame_batch": 0, **upscale_inputs}
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 40, "height": 24, "batch_size": 3, "color": 0x3366CC}},
        "2": loader,
        "3": {"class_type": "WanMoEUpscale", "inputs": inputs},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "wanmoe_upscale"}},
    }


def saved_sizes(comfy_server, outputs: dict) -> list[tuple[int, int]]:
    files = [f for f in output_files(outputs) if f["filename"].startswith("wanmoe_upscale")]
    return [Image.open(comfy_server.output_path(f)).size for f in files]


def test_object_info_lists_both_nodes_with_tooltips(comfy_client, tiny_models):
    info = comfy_client.object_info()
    up = info["WanMoEUpscale"]
    assert up["category"] == "WanMoE" and up["output"] == ["IMAGE"]
    inputs = {**up["input"]["required"], **up["input"].get("optional", {})}
    assert set(inputs) == UPSCALE_INPUTS
    assert inputs["upscale_model"][0] == "UPSCALE_MODEL" and "upscale_model" in up["input"]["optional"]
    assert all(spec[1].get("tooltip") for name, spec in inputs.items()), "every input needs a tooltip"
    loader = comfy_client.object_info("WanMoEUpscaleModelLoader")
    assert loader["output"] == ["UPSCALE_MODEL"]
    kind, spec = loader["input"]["required"]["model_name"][:2]
    assert set(tiny_models.values()) <= set(spec["options"] if kind == "COMBO" else kind)


def test_core_upscale_model_loader_feeds_our_upscaler(comfy_server, comfy_client, tiny_models):
    prompt = upscale_prompt({"class_type": "UpscaleModelLoader", "inputs": {"model_name": tiny_models["pth"]}})
    assert saved_sizes(comfy_server, comfy_client.run(prompt, timeout=120)) == [(160, 96)] * 3


def test_our_loader_with_exact_size_pad(comfy_server, comfy_client, tiny_models):
    prompt = upscale_prompt({"class_type": "WanMoEUpscaleModelLoader", "inputs": {"model_name": tiny_models["safetensors"]}},
                            mode="exact size", width=96, height=96, fit="pad")
    outputs = comfy_client.run(prompt, timeout=120)
    assert saved_sizes(comfy_server, outputs) == [(96, 96)] * 3
    files = [f for f in output_files(outputs) if f["filename"].startswith("wanmoe_upscale")]
    pixels = np.asarray(Image.open(comfy_server.output_path(files[0])).convert("RGB"), dtype=np.float64)
    assert pixels[:19].max() == 0 and pixels[77:].max() == 0  # pad bars (content is 96x58, centred)
    # The random model draws a 4x4 pattern on the flat colour; the colour fix keeps its mean.
    assert np.abs(pixels[19:77].mean(axis=(0, 1)) - (0x33, 0x66, 0xCC)).max() <= 1

