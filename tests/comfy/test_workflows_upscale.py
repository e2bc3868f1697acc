"""The upscale workflows (wan22_t2v_a14b_upscale, _upscale_model) and the upscaler's shared-cache use.

Engine: WanMoEUpscale's model copy goes through wan_core.memory.cache (counted loads, release_all, ComfyUI's
descriptor untouched). Real ComfyUI: both API twins run on tiny checkpoints at a tiny size and write a video of
the expected frames / size / fps; core UpscaleModelLoader's descriptor survives "Unload models". Chromium: both
UI files load with no missing nodes or models and the upscaler's widgets read as built.
"""

from __future__ import annotations

import copy
import gc
import importlib.util
import json
import time

import pytest
import torch

from harness.browser import relevant_console_errors
from harness.client import output_files
from harness.comfy_server import REPO_ROOT

if str(REPO_ROOT) not in __import__("sys").path:  # wan_core as a top-level package, as the demo imports it
    __import__("sys").path.append(str(REPO_ROOT))
_spec = importlib.util.spec_from_file_location("wanmoe_demo_for_upscale", REPO_ROOT / "scripts" / "demo.py")
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)

from wan_core.memory.cache import ModelCache  # noqa: E402
from wan_core.testing.tiny.upscaler import PUBLIC_NAME, write_comfy_file  # noqa: E402
from wan_core.upscale.pipeline import upscale_video  # noqa: E402
from wan_core.upscale.loader import cache_key, file_of, load_upscale_model, on_device, upscale_model_from_state_dict  # noqa: E402

PLAIN, WITH_MODEL = "wan22_t2v_a14b_upscale", "wan22_t2v_a14b_upscale_model"
STEMS = (PLAIN, WITH_MODEL)
TARGET = (demo.TINY["width"] * 2, demo.TINY["height"] * 2)  # 128x96 from the tiny 64x48 generation
UPSCALER_URL = "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth"


def api(stem: str) -> dict:
    return json.loads((REPO_ROOT / "workflows" / "api" / f"{stem}.json").read_text())


def ui(stem: str) -> dict:
    return json.loads((REPO_ROOT / "workflows" / f"{stem}.json").read_text())


def by_type(workflow: dict, class_type: str) -> tuple[str, dict]:
    found = [(k, n) for k, n in workflow.items() if n["class_type"] == class_type]
    assert len(found) == 1, f"expected one {class_type}, found {len(found)}"
    return found[0]


# --- the shipped graphs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("stem", STEMS)
def test_graph_generates_480p_then_upscales_to_exact_720p_before_the_video(stem):
    wf = api(stem)
    _, latent = by_type(wf, "WanMoEEmptyLatent")
    assert (latent["inputs"]["width"], latent["inputs"]["height"]) == (832, 480)
    decode_id, _ = by_type(wf, "WanMoEVAEDecode")
    up_id, up = by_type(wf, "WanMoEUpscale")
    assert up["inputs"]["images"] == [decode_id, 0]
    assert (up["inputs"]["mode"], up["inputs"]["width"], up["inputs"]["height"]) == ("exact size", 1280, 720)
    video_id, video = by_type(wf, "CreateVideo")
    assert video["inputs"] == {"images": [up_id, 0], "fps": 16.0}
    assert by_type(wf, "SaveVideo")[1]["inputs"]["video"] == [video_id, 0]
    loaders = [n for n in wf.values() if n["class_type"] == "UpscaleModelLoader"]
    if stem == PLAIN:
        assert loaders == [] and "upscale_model" not in up["inputs"]
    else:
        loader_id, loader = by_type(wf, "UpscaleModelLoader")
        assert loader["inputs"] == {"model_name": PUBLIC_NAME}
        assert up["inputs"]["upscale_model"] == [loader_id, 0]
        record = next(n for n in ui(stem)["nodes"] if n["type"] == "UpscaleModelLoader")
        assert record["properties"]["models"] == [{"name": PUBLIC_NAME, "url": UPSCALER_URL, "directory": "upscale_models"}]


# --- the shared model cache (engine) -------------------------------------------------------------------------
def test_upscaler_copy_goes_through_the_cache_and_survives_release_all(tmp_path):
    descriptor = load_upscale_model(write_comfy_file(tmp_path / PUBLIC_NAME))
    cache = ModelCache()
    frames = torch.rand(3, 12, 16, 3, generator=torch.Generator().manual_seed(1))
    expected = upscale_video(frames, descriptor, scale=2.0, stabilize=0.0)
    weights = {k: v.clone() for k, v in descriptor.model.state_dict().items()}
    key = cache_key(descriptor, "cpu", cache=cache)
    assert key.identity == file_of(descriptor) and key.identity[0].endswith(PUBLIC_NAME)

    loads = []
    for release in (False, False, True, False):
        if release:
            assert cache.release_all() > 0 and key not in cache
            continue
        with on_device(descriptor, "cpu", cache=cache) as model:
            assert model.model is not descriptor.model and cache.where(key) == "cpu"
            assert cache.status().entries[0].locked  # in use: release_all / eviction leave it alone
            out = upscale_video(frames, model, scale=2.0, stabilize=0.0)
        assert torch.equal(out, expected)
        loads.append(cache.stats().loads_of(key))
    assert loads == [1, 1, 2]  # a hit on the second run; copied again after release_all
    # The descriptor ComfyUI keeps handing out is untouched: same tensors, still on the CPU, not meta.
    assert all(torch.equal(v, weights[k]) for k, v in descriptor.model.state_dict().items())
    assert {p.device.type for p in descriptor.model.parameters()} == {"cpu"}


def test_in_memory_descriptor_entry_is_forgotten_with_it():
    from spandrel.architectures.Compact import Compact

    cache = ModelCache()
    descriptor = upscale_model_from_state_dict(Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2).state_dict())
    with on_device(descriptor, "cpu", cache=cache):
        pass
    key = cache_key(descriptor, "cpu", cache=cache)
    assert key in cache and "Compact x2 (in memory)" in key.label
    del descriptor
    gc.collect()
    assert key not in cache  # its id() may be reused by another model: the entry goes with the object


# --- real ComfyUI -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_files(comfy_server) -> list[str]:
    """Tiny checkpoints under the public names both workflows use, and a tiny RRDBNet as RealESRGAN_x4plus.pth."""
    names = sorted({n for stem in STEMS for n in demo.referenced_model_files(api(stem))})
    demo.write_tiny_checkpoints(comfy_server.models_dir, names)
    write_comfy_file(comfy_server.models_dir / "upscale_models" / PUBLIC_NAME)
    return names + [PUBLIC_NAME]


def tiny_prompt(stem: str, prefix: str, **upscale) -> dict:
    """The API twin at the demo's tiny size, upscaled to TARGET, saving under `prefix`."""
    wf = demo.patch_to_tiny_size(api(stem))
    up = by_type(wf, "WanMoEUpscale")[1]["inputs"]
    up.update(width=TARGET[0], height=TARGET[1], **upscale)
    by_type(wf, "SaveVideo")[1]["inputs"]["filename_prefix"] = prefix
    return wf


def run_video(comfy_server, prompt: dict) -> tuple[dict, dict]:
    """Run a prompt; (PyAV facts of the .mp4 it wrote, its history entry with the outputs)."""
    import av
    import numpy as np

    client = comfy_server.client
    prompt_id = client.queue(prompt)
    outputs = client.wait(prompt_id, timeout=300)
    videos = [f for f in output_files(outputs) if f["filename"].endswith(".mp4")]
    assert len(videos) == 1, outputs
    with av.open(str(comfy_server.output_path(videos[0]))) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        facts = {"frames": len(frames), "size": (stream.width, stream.height), "fps": float(stream.average_rate),
                 "std": float(np.std(np.stack(frames)))}
    return facts, client.history(prompt_id)


def upscaler_copies(comfy_server) -> int:
    """How often the server's model cache made a copy of a core-loaded ESRGAN x4 (wan_core.upscale.loader logs each)."""
    label = "upscale_model ESRGAN x4 (in memory)"  # core's loader does not say which file it read
    return sum(label in line and "copying to" in line for line in comfy_server.log_text().splitlines())


@pytest.mark.comfy
@pytest.mark.parametrize("stem", STEMS)
def test_upscale_workflow_runs_on_tiny_checkpoints(comfy_server, tiny_files, stem):
    facts, _ = run_video(comfy_server, tiny_prompt(stem, f"wanmoe_test/{stem}"))
    assert {k: facts[k] for k in ("frames", "size", "fps")} == {"frames": demo.TINY["length"], "size": TARGET, "fps": 16.0}
    assert facts["std"] > 1.0, "the video is a flat colour"


@pytest.mark.comfy
def test_core_loader_descriptor_survives_unload_models(comfy_server, tiny_files):
    # The same descriptor from core's UpscaleModelLoader (cached by ComfyUI) must work after "Unload models"
    # released our cache's copy of its network; the copy is made again, once.
    prompt = tiny_prompt(WITH_MODEL, "wanmoe_test/unload", stabilize=0.3)
    loader_id = by_type(prompt, "UpscaleModelLoader")[0]

    def with_stabilize(value: float) -> dict:  # changes only the upscaler's input: the rest of the graph is cached
        changed = copy.deepcopy(prompt)
        by_type(changed, "WanMoEUpscale")[1]["inputs"]["stabilize"] = value
        return changed

    first, _ = run_video(comfy_server, prompt)
    copies = upscaler_copies(comfy_server)
    assert copies >= 1
    second, _ = run_video(comfy_server, with_stabilize(0.4))
    assert upscaler_copies(comfy_server) == copies, "the second run should reuse the cached copy"
    comfy_server.client.free(unload_models=True, free_memory=False)  # output cache kept, our model cache released
    time.sleep(1.5)  # /free is acted on by the idle prompt worker
    third, history = run_video(comfy_server, with_stabilize(0.5))
    cached = [m[1]["nodes"] for m in history["status"]["messages"] if m[0] == "execution_cached"]
    assert cached and loader_id in cached[0], "core's loader should not have run again (same descriptor object)"
    assert upscaler_copies(comfy_server) == copies + 1, "released by Unload models, so copied again exactly once"
    for facts in (first, second, third):
        assert (facts["frames"], facts["size"]) == (demo.TINY["length"], TARGET)


@pytest.mark.comfy
def test_refine_pass_from_docs_runs_low_noise_steps_only(comfy_server, tiny_files):
    # docs/upscale.md's refine pass: upscale -> VAE encode -> sampler (denoise 0.3, 40 steps, shift 12) -> decode.
    prompt = tiny_prompt(PLAIN, "wanmoe_test/refine")
    up_id = by_type(prompt, "WanMoEUpscale")[0]
    model_id, text_id, vae_id = (by_type(prompt, t)[0] for t in ("WanMoEModelLoader", "WanMoETextEncode", "WanMoEVAELoader"))
    tiling = {"tiling": "auto", "tile_size": 0, "tile_overlap": 0}
    prompt["20"] = {"class_type": "WanMoEVAEEncode", "inputs": {"vae": [vae_id, 0], "image": [up_id, 0], **tiling}}
    prompt["21"] = {"class_type": "WanMoESampler", "inputs": {
        "model": [model_id, 0], "positive": [text_id, 0], "negative": [text_id, 1], "latent": ["20", 0], "seed": 7,
        "steps": 40, "cfg_high": 4.0, "cfg_low": 3.0, "shift": 12.0, "sampler": "unipc", "denoise": 0.3}}
    prompt["22"] = {"class_type": "WanMoEVAEDecode", "inputs": {"vae": [vae_id, 0], "samples": ["21", 0], **tiling}}
    by_type(prompt, "CreateVideo")[1]["inputs"]["images"] = ["22", 0]
    facts, history = run_video(comfy_server, prompt)
    assert (facts["frames"], facts["size"], facts["fps"]) == (demo.TINY["length"], TARGET, 16.0)
    assert history["outputs"]["21"]["text"] == [
        "12 steps low-noise (t 837-235, cfg 3) [unipc, 12 of 40 steps, boundary t 875]"]


# --- the UI files in Chromium -------------------------------------------------------------------------------
UPSCALE_WIDGETS_JS = """() => {
  const up = window.app.graph._nodes.find(n => n.type === 'WanMoEUpscale');
  const w = Object.fromEntries(up.widgets.map(w => [w.name, w.value]));
  const link = up.inputs.find(i => i.name === 'upscale_model').link;
  const source = link == null ? null : window.app.graph.getNodeById(window.app.graph.links[link].origin_id).type;
  return {mode: w.mode, width: w.width, height: w.height, fit: w.fit, stabilize: w.stabilize, source};
}"""


@pytest.mark.browser
@pytest.mark.parametrize("stem", STEMS)
def test_upscale_ui_workflow_loads_with_nothing_missing(comfy_page, artifact_dir, tiny_files, stem):
    workflow = ui(stem)
    # Frontend 1.32 race: ModelFolder.load() returns a folder whose listing is still in flight as empty (e.g. while
    # the tab restores the previous workflow), so a first load can name present files as missing. Load once to
    # fetch the folder listings, then check a second load (a file that is really absent is reported by both).
    comfy_page.load_workflow(workflow)
    comfy_page.close_dialogs()
    report = comfy_page.load_workflow(workflow)
    comfy_page.screenshot(artifact_dir / f"{stem}.png")
    assert report.missing_node_types == []
    assert report.node_count == len(workflow["nodes"])
    assert report.missing.model_files == [] and report.missing.node_types == [], report.missing
    widgets = comfy_page.page.evaluate(UPSCALE_WIDGETS_JS)
    assert widgets == {"mode": "exact size", "width": 1280, "height": 720, "fit": "crop", "stabilize": 0.5,
                       "source": "UpscaleModelLoader" if stem == WITH_MODEL else None}
    assert relevant_console_errors(comfy_page.console_errors) == []
