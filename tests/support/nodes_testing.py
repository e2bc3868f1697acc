"""Helpers of the real-ComfyUI node tests: tiny checkpoints in the session server's model folders, prompts, log reading.

The shipped workflows' API twins are the source of the prompts: tests change file names, sizes and seeds on copies.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import sys
import time
from typing import Callable

from harness.comfy_server import REPO_ROOT

if str(REPO_ROOT) not in sys.path:  # wan_core as a top-level package, as scripts/demo.py imports it
    sys.path.append(str(REPO_ROOT))

_spec = importlib.util.spec_from_file_location("wanmoe_demo_for_nodes", REPO_ROOT / "scripts" / "demo.py")
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)

WORKFLOWS = REPO_ROOT / "workflows"
UI_WORKFLOWS = sorted(WORKFLOWS.glob("*.json"))
API_WORKFLOWS = sorted((WORKFLOWS / "api").glob("*.json"))
T2V_API = WORKFLOWS / "api" / "wan22_t2v_a14b_720p.json"
LOADED = re.compile(r"model cache: loaded (\S+) (\S+)")  # kind, file name (cache.ModelCache.get)
RELEASED = re.compile(r"model cache: released (\d+) model\(s\)")  # cache.ModelCache.release_all


# Inputs that name a whole Hugging Face model folder (not a single file, so not in the UI's properties.models):
# class_type -> (input, ComfyUI folder).
FOLDER_MODEL_INPUTS = {"WanMoEFrameModerate": ("classifier", "classifiers"), "WanMoEPromptEnhance": ("llm_model", "LLM")}


def workflow_model_files(stem: str) -> list[tuple[str, str]]:
    """(model folder, name) of every model a shipped workflow names: the files in its UI file's node
    `properties.models` (what the frontend's Missing Models check reads) and the folder models its API twin names."""
    ui = json.loads((WORKFLOWS / f"{stem}.json").read_text())
    api = json.loads((WORKFLOWS / "api" / f"{stem}.json").read_text())
    files = {(m["directory"], m["name"]) for node in ui["nodes"] for m in node.get("properties", {}).get("models", [])}
    folders = {(FOLDER_MODEL_INPUTS[n["class_type"]][1], n["inputs"][FOLDER_MODEL_INPUTS[n["class_type"]][0]])
               for n in api.values() if n["class_type"] in FOLDER_MODEL_INPUTS}
    return sorted(files | folders)


def ensure_tiny_models(server, files: list[tuple[str, str]]) -> None:
    """A tiny random checkpoint for each (folder, public name): Wan files as `make demo` writes them, the upscale
    model from wan_core.testing.tiny.upscaler, classifier and LLM folders from tiny.classifier / tiny.llm, the
    Lightning LoRA pair from tiny.lora (fitting the tiny experts). Files already there are kept (their cache identity
    stays the same)."""
    from wan_core.config import COMFY_FILES, LIGHTNING_LORAS
    from wan_core.testing.tiny import classifier, llm, lora, upscaler

    for folder, name in files:
        path = server.models_dir / folder / name
        if path.exists():
            continue
        if name in COMFY_FILES.values():
            assert demo.model_folder(demo.component_of(name)[0]) == folder, f"{name} belongs elsewhere than {folder}/"
            demo.write_tiny_checkpoints(server.models_dir, [name])
        elif folder == "upscale_models":
            upscaler.write_comfy_file(path)
        elif folder == "classifiers":
            classifier.write_classifier_folder(path)
        elif folder == "LLM":
            llm.write_llm_folder(path)
        elif folder == "loras" and name in LIGHTNING_LORAS.values():
            lora.write_lightning_file(path, role=next(r for r, n in LIGHTNING_LORAS.items() if n == name))
        else:
            raise ValueError(f"no tiny writer for {folder}/{name}")


def write_control_video(path, frames: int = 9, width: int = 64, height: int = 48) -> None:
    """A tiny mp4 clip (a white square moving over a dark background) for workflows that load a control video."""
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=16)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            rgb = np.full((height, width, 3), 24, dtype=np.uint8)
            rgb[12:28, 4 + 4 * i: 20 + 4 * i] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())


def ensure_workflow_inputs(server, stem: str) -> None:
    """Each file a shipped workflow's LoadVideo nodes name, as a tiny clip in ComfyUI's input folder (kept if there)."""
    api = json.loads((WORKFLOWS / "api" / f"{stem}.json").read_text())
    for node in api.values():
        if node["class_type"] == "LoadVideo" and not (server.input_dir / node["inputs"]["file"]).exists():
            write_control_video(server.input_dir / node["inputs"]["file"])


def write_tiny_set(server, tag: str, dit_layers: int | None = None) -> dict[str, str]:
    """Tiny experts, text encoder and VAE under names of this test's own (`wanmoe_<tag>_*`); returns role -> name.

    dit_layers: a deeper tiny DiT (more transformer blocks per step) than wan_core.testing.tiny's 2-layer one.
    """
    from dataclasses import replace

    from wan_core.testing.tiny import dit, t5, vae

    names = {role: f"wanmoe_{tag}_{role}.safetensors" for role in ("high", "low", "t5", "vae")}
    models = server.models_dir
    for role in ("high", "low"):
        path = models / "diffusion_models" / names[role]
        if path.exists():
            continue
        if dit_layers is None:
            dit.write_comfy_file(path, role=role, fp8=False)
        else:
            config = replace(dit.TINY_DIT_CONFIG, num_layers=dit_layers)
            sd = dit.random_state_dict(config, seed={"high": 11, "low": 13}[role])
            dit.write_single_file(path, {k: v.half() for k, v in sd.items()})
    if not (models / "text_encoders" / names["t5"]).exists():
        t5.write_comfy_file(models / "text_encoders" / names["t5"], role="t5")
    if not (models / "vae" / names["vae"]).exists():
        vae.write_comfy_file(models / "vae" / names["vae"], role="vae")
    return names


def t2v_prompt(names: dict[str, str] | None = None, *, width: int = 64, height: int = 48, length: int = 5,
               steps: int = 4, seed: int = 42, prefix: str = "nodes_test", latent_only: bool = False,
               positive: str | None = None) -> dict:
    """The 720p workflow's API twin at a tiny size, with this test's files (`names` from write_tiny_set).

    latent_only: end at the sampler with core SaveLatent (no VAE, no video), for sampler-only timings.
    """
    prompt = copy.deepcopy(json.loads(T2V_API.read_text()))
    by_type = {node["class_type"]: (node_id, node) for node_id, node in prompt.items()}
    if names:
        by_type["WanMoEModelLoader"][1]["inputs"].update(high_noise_model=names["high"], low_noise_model=names["low"])
        by_type["WanMoETextEncoderLoader"][1]["inputs"]["text_encoder"] = names["t5"]
        by_type["WanMoEVAELoader"][1]["inputs"]["vae"] = names["vae"]
    by_type["WanMoEEmptyLatent"][1]["inputs"].update(width=width, height=height, length=length)
    by_type["WanMoESampler"][1]["inputs"].update(steps=steps, seed=seed)
    if positive is not None:
        by_type["WanMoETextEncode"][1]["inputs"]["positive"] = positive
    by_type["SaveVideo"][1]["inputs"]["filename_prefix"] = prefix
    if latent_only:
        for kind in ("WanMoEVAELoader", "WanMoEVAEDecode", "CreateVideo", "SaveVideo"):
            del prompt[by_type[kind][0]]
        prompt["90"] = {"class_type": "SaveLatent",
                        "inputs": {"samples": [by_type["WanMoESampler"][0], 0], "filename_prefix": prefix}}
    return prompt


def with_core_model_loaders(prompt: dict) -> dict:
    """The prompt with its WanMoEModelLoader replaced by core UNETLoader x2 -> WanMoEModelFromComfy (same node id, so
    the sampler's link stays): ComfyUI's own models of the same files, sampled by our sampler."""
    prompt = copy.deepcopy(prompt)
    loader_id = node_id_of(prompt, "WanMoEModelLoader")
    files = prompt[loader_id]["inputs"]
    for suffix, name in (("h", files["high_noise_model"]), ("l", files["low_noise_model"])):
        prompt[f"{loader_id}{suffix}"] = {"class_type": "UNETLoader", "inputs": {"unet_name": name, "weight_dtype": "default"}}
    prompt[loader_id] = {"class_type": "WanMoEModelFromComfy", "inputs": {
        "high_noise_model": [f"{loader_id}h", 0], "low_noise_model": [f"{loader_id}l", 0], "boundary": files["boundary"]}}
    return prompt


def node_id_of(prompt: dict, class_type: str) -> str:
    """The id of the (single) node of `class_type` in an API prompt."""
    (node_id,) = [k for k, v in prompt.items() if v["class_type"] == class_type]
    return node_id


def log_mark(server) -> int:
    """A position in ComfyUI's log; `log_since(server, mark)` gives what was printed after it."""
    return len(server.log_text())


def log_since(server, mark: int) -> str:
    return server.log_text()[mark:]


def wait_for_log(server, mark: int, pattern: re.Pattern, timeout: float = 30.0) -> re.Match:
    """The first match of `pattern` printed after `mark`, waiting up to `timeout` seconds for it."""
    deadline = time.monotonic() + timeout
    while True:
        found = pattern.search(log_since(server, mark))
        if found or time.monotonic() > deadline:
            assert found, f"ComfyUI's log shows no /{pattern.pattern}/ within {timeout:.0f} s:\n{log_since(server, mark)[-3000:]}"
            return found
        time.sleep(0.1)


def loads_in(text: str) -> list[tuple[str, str]]:
    """(kind, file name) of every model the cache loaded from its file, in a stretch of ComfyUI's log."""
    return LOADED.findall(text)


def status_messages(entry: dict) -> dict:
    """A history entry's status messages by event name (execution_start, execution_cached, ...)."""
    return {event: data for event, data in entry["status"]["messages"]}


def run_seconds(entry: dict) -> float:
    """Seconds a prompt ran, from its history entry (execution_start to execution_success)."""
    messages = status_messages(entry)
    return (messages["execution_success"]["timestamp"] - messages["execution_start"]["timestamp"]) / 1000.0


def interrupt_midway(client, prompt: dict, after: float, started: Callable[[], object] | None = None) -> tuple[dict, float]:
    """Queue `prompt`, interrupt it `after` seconds once it runs (or once `started()` returns); (its
    execution_interrupted message, seconds from the interrupt request to the prompt's end as ComfyUI recorded it)."""
    from harness.client import PromptInterrupted

    prompt_id = client.queue(prompt)
    if started is not None:
        started()
    while client.queue_state()["running"] == 0 and client.history(prompt_id) is None:
        time.sleep(0.02)
    time.sleep(after)
    interrupted_at = time.time()
    client.interrupt(prompt_id)
    try:
        client.wait(prompt_id, timeout=120)
    except PromptInterrupted:
        pass
    else:
        raise AssertionError(f"prompt {prompt_id} finished before the interrupt {after:.2f} s into it")
    entry = client.history(prompt_id)
    assert entry["status"]["status_str"] == "error"
    stopped = status_messages(entry)["execution_interrupted"]
    return stopped, stopped["timestamp"] / 1000.0 - interrupted_at


def settled(page, quiet: float = 1.0, timeout: float = 15.0):
    """The page once the frontend finished restoring the previous tab's workflow (Comfy.Workflow.Persist): that
    restore runs its own loadGraphData, which would otherwise race ours (its Missing Models check and its graph)."""
    deadline = time.monotonic() + timeout
    state = lambda: page.page.evaluate("() => [window.app.graph._nodes.length, document.querySelectorAll('[role=dialog]').length]")
    last, since = state(), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet:
        time.sleep(0.1)
        now = state()
        if now != last:
            last, since = now, time.monotonic()
    page.close_dialogs()
    return page


def queue_tiny_from_canvas(page, prefix: str, seed: int | None = None) -> None:
    """Set the loaded workflow's latent size, steps (and the sampler's seed) to the demo's tiny run, its SaveVideo
    prefix to `prefix`, and queue it as the Run button does (app.queuePrompt)."""
    page.page.evaluate("""async ([tiny, seed]) => {
        const set = (type, name, value) => {
            const node = window.app.graph._nodes.find(n => n.type === type);
            node.widgets.find(w => w.name === name).value = value;
        };
        for (const name of ["width", "height", "length"]) set("WanMoEEmptyLatent", name, tiny[name]);
        set("WanMoESampler", "steps", tiny.steps);
        if (seed !== null) set("WanMoESampler", "seed", seed);
        set("SaveVideo", "filename_prefix", tiny.prefix);
        await window.app.queuePrompt(0, 1);
    }""", [{**demo.TINY, "prefix": prefix}, seed])
