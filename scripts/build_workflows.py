"""Writes the shipped workflows (workflows/*.json): each graph once, as a UI file for the canvas and its API twin.

One definition per graph keeps the pair in sync by construction; tests/comfy/test_workflows.py also converts each
UI file to API format with the real ComfyUI's /object_info and compares it with the twin.
Run: .venv/bin/python scripts/build_workflows.py
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from wan_core.config import (  # noqa: E402
    COMFY_FILES, FPS, FRAMES, GUIDE_HIGH, GUIDE_LOW, HEIGHT, LIGHTNING_CFG, LIGHTNING_LORAS, LIGHTNING_SHIFT,
    LIGHTNING_STEPS, NEGATIVE_PROMPT, SHIFT, STEPS, WIDTH, WINDOW_FRAMES, WINDOW_OVERLAP,
)

WORKFLOWS_DIR = REPO_ROOT / "workflows"
HF_22 = "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files"
HF_21 = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
# The public upscaler the model variant names (Real-ESRGAN's RRDBNet x4; its GitHub URL is one the frontend's
# Missing Models dialog offers to download).
UPSCALER = "RealESRGAN_x4plus.pth"
DOWNLOADS = {  # public file name -> (model folder, download URL)
    COMFY_FILES["high_fp16"]: ("diffusion_models", f"{HF_22}/diffusion_models/{COMFY_FILES['high_fp16']}"),
    COMFY_FILES["low_fp16"]: ("diffusion_models", f"{HF_22}/diffusion_models/{COMFY_FILES['low_fp16']}"),
    COMFY_FILES["high_fp8"]: ("diffusion_models", f"{HF_22}/diffusion_models/{COMFY_FILES['high_fp8']}"),
    COMFY_FILES["low_fp8"]: ("diffusion_models", f"{HF_22}/diffusion_models/{COMFY_FILES['low_fp8']}"),
    COMFY_FILES["t5_fp16"]: ("text_encoders", f"{HF_21}/text_encoders/{COMFY_FILES['t5_fp16']}"),
    COMFY_FILES["t5_fp8"]: ("text_encoders", f"{HF_21}/text_encoders/{COMFY_FILES['t5_fp8']}"),
    COMFY_FILES["vae"]: ("vae", f"{HF_22}/vae/{COMFY_FILES['vae']}"),
    COMFY_FILES["vace_high_fp8"]: ("diffusion_models", f"{HF_22}/diffusion_models/{COMFY_FILES['vace_high_fp8']}"),
    COMFY_FILES["vace_low_fp8"]: ("diffusion_models", f"{HF_22}/diffusion_models/{COMFY_FILES['vace_low_fp8']}"),
    UPSCALER: ("upscale_models", "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth"),
    **{name: ("loras", f"{HF_22}/loras/{name}") for name in LIGHTNING_LORAS.values()},
}
PROMPT = ("A red fox trots through fresh snow in a sunlit birch forest, its breath steaming in the cold air; the camera "
          "tracks it at eye level, shallow depth of field, soft golden morning light, cinematic.")
# Frontend-only widgets that follow an input in the UI file's widgets_values (not part of the API prompt).
SEED_CONTROL = "fixed"

# Socket types of each node's inputs/outputs, for the UI file's slot records (name, type).
SOCKETS: dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]]]] = {
    "WanMoEModelLoader": ([], [("model", "WANMOE_MODEL")]),
    "WanMoELoraLoader": ([("model", "WANMOE_MODEL")], [("model", "WANMOE_MODEL")]),
    "WanMoETextEncoderLoader": ([], [("text_encoder", "WANMOE_TEXT_ENCODER")]),
    "WanMoETextEncode": ([("text_encoder", "WANMOE_TEXT_ENCODER")], [("positive", "CONDITIONING"), ("negative", "CONDITIONING")]),
    "WanMoEEmptyLatent": ([], [("LATENT", "LATENT")]),
    "WanMoESampler": ([("model", "WANMOE_MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                       ("latent", "LATENT"), ("sigmas", "SIGMAS"), ("windows", "WANMOE_WINDOWS")], [("LATENT", "LATENT")]),
    "WanMoEContextWindows": ([], [("windows", "WANMOE_WINDOWS")]),
    "WanMoEVAELoader": ([], [("vae", "WANMOE_VAE")]),
    "WanMoEVAEDecode": ([("vae", "WANMOE_VAE"), ("samples", "LATENT")], [("IMAGE", "IMAGE")]),
    "WanMoEUpscaleModelLoader": ([], [("upscale_model", "UPSCALE_MODEL")]),
    "UpscaleModelLoader": ([], [("UPSCALE_MODEL", "UPSCALE_MODEL")]),
    "WanMoEUpscale": ([("images", "IMAGE"), ("upscale_model", "UPSCALE_MODEL")], [("images", "IMAGE")]),
    "WanMoEPromptEnhance": ([], [("prompt", "STRING"), ("changes", "STRING")]),
    "WanMoESafetyFilter": ([], [("text", "STRING"), ("report", "STRING")]),
    "WanMoEFrameModerate": ([("images", "IMAGE")], [("images", "IMAGE"), ("report", "STRING")]),
    "WanMoEFrameInterpolate": ([("images", "IMAGE")], [("images", "IMAGE"), ("fps", "FLOAT"), ("report", "STRING")]),
    "WanMoEColorGrade": ([("images", "IMAGE"), ("reference", "IMAGE")], [("images", "IMAGE")]),
    "LoadVideo": ([], [("VIDEO", "VIDEO")]),
    "GetVideoComponents": ([("video", "VIDEO")], [("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")]),
    "WanMoEControlPreprocess": ([("images", "IMAGE")], [("images", "IMAGE")]),
    "VAELoader": ([], [("VAE", "VAE")]),
    "WanVaceToVideo": ([("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("vae", "VAE"),
                        ("control_video", "IMAGE"), ("control_masks", "MASK"), ("reference_image", "IMAGE")],
                       [("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent", "LATENT"),
                        ("trim_latent", "INT")]),
    "TrimVideoLatent": ([("samples", "LATENT")], [("LATENT", "LATENT")]),
    "CreateVideo": ([("images", "IMAGE"), ("audio", "AUDIO")], [("VIDEO", "VIDEO")]),
    "SaveVideo": ([("video", "VIDEO")], []),
    "MarkdownNote": ([], []),
}


@dataclass
class Node:
    """One graph node: API inputs (widget values, or (node, output slot) links) and its place on the canvas.

    A link into a widget input (e.g. a STRING into a prompt box) keeps a value for the widget in the UI file:
    `widget_values[name]` (default "").
    """

    id: int
    type: str
    inputs: dict = field(default_factory=dict)
    widget_values: dict = field(default_factory=dict)
    pos: tuple[int, int] = (0, 0)
    size: tuple[int, int] = (320, 120)
    title: str | None = None
    models: tuple[str, ...] = ()


def _is_link(value) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], Node)


def to_api(nodes: list[Node]) -> dict:
    """The API-format prompt (what /prompt takes): {id: {class_type, inputs}}; notes are UI-only."""
    api = {}
    for node in nodes:
        if node.type == "MarkdownNote":
            continue
        inputs = {k: ([str(v[0].id), v[1]] if _is_link(v) else v) for k, v in node.inputs.items()}
        api[str(node.id)] = {"class_type": node.type, "inputs": inputs, "_meta": {"title": node.title or node.type}}
    return api


def _slots(node: Node) -> list[tuple[str, str, bool]]:
    """The node's input slots in the UI file: its sockets, then the widget inputs that receive a link."""
    sockets = SOCKETS[node.type][0]
    names = {n for n, _ in sockets}
    widgets = [(name, SOCKETS[v[0].type][1][v[1]][1], True) for name, v in node.inputs.items()
               if _is_link(v) and name not in names]
    return [(n, t, False) for n, t in sockets] + widgets


def to_ui(nodes: list[Node], notes_group: str = "", scale: float = 0.7) -> dict:
    """The UI-format workflow (LiteGraph 0.4, as the frontend saves it), opening at zoom `scale`."""
    links, by_target = [], {}
    for node in nodes:
        names = [n for n, _, _ in _slots(node)]
        for name, value in node.inputs.items():
            if _is_link(value):
                source, slot = value
                link_id = len(links) + 1
                links.append([link_id, source.id, slot, node.id, names.index(name), SOCKETS[source.type][1][slot][1]])
                by_target[(node.id, name)] = link_id
    ui_nodes = []
    for order, node in enumerate(nodes):
        out_sockets = SOCKETS[node.type][1]
        sockets = {n for n, _ in SOCKETS[node.type][0]}
        widgets = []
        for name, value in node.inputs.items():
            if not _is_link(value) or name not in sockets:
                widgets.append(node.widget_values.get(name, "") if _is_link(value) else value)
                if name == "seed":
                    widgets.append(SEED_CONTROL)
        if node.type == "MarkdownNote":
            widgets = [node.inputs["text"]]
        properties = {"Node name for S&R": node.type}
        if node.models:
            properties["models"] = [{"name": m, "url": DOWNLOADS[m][1], "directory": DOWNLOADS[m][0]} for m in node.models]
        record = {
            "id": node.id, "type": node.type, "pos": list(node.pos), "size": list(node.size), "flags": {},
            "order": order, "mode": 0,
            "inputs": [{"name": n, "type": t, **({"widget": {"name": n}} if w else {}), "link": by_target.get((node.id, n))}
                       for n, t, w in _slots(node)],
            "outputs": [{"name": n, "type": t, "slot_index": i,
                         "links": [l[0] for l in links if l[1] == node.id and l[2] == i]}
                        for i, (n, t) in enumerate(out_sockets)],
            "properties": properties, "widgets_values": widgets,
        }
        if node.title:
            record["title"] = node.title
        ui_nodes.append(record)
    return {"last_node_id": max(n.id for n in nodes), "last_link_id": len(links), "nodes": ui_nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": scale, "offset": [40, 40]}}, "version": 0.4}


def files_note(files: list[str], extra: str = "") -> str:
    """Markdown for the note node: which file goes in which folder, with download links."""
    lines = ["**Model files** (put each in its folder under `ComfyUI/models/`, then press R to refresh):", ""]
    for name in files:
        folder, url = DOWNLOADS[name]
        lines.append(f"- `{folder}/` [{name}]({url})")
    if extra:
        lines += ["", extra]
    return "\n".join(lines)


# The sampler's optional settings at their defaults (today's behaviour), written out so UI file and API twin agree.
SAMPLER_OPTIONS = {"step_cache": 0.0, "schedule": "official", "switch": "boundary", "switch_step": 20}


def t2v_nodes(*, high: str, low: str, t5: str, t5_device: str, width: int, height: int,
              placement: str, length: int = FRAMES, windows: Node | None = None) -> list[Node]:
    """Text-to-video up to the frames (ids 1-7): loaders -> text encode -> sampler -> VAE decode (the last node)."""
    vae = COMFY_FILES["vae"]
    model = Node(1, "WanMoEModelLoader", {"high_noise_model": high, "low_noise_model": low, "weight_dtype": "auto",
                                          "placement": placement, "attention": "sdpa", "boundary": 0.875,
                                          "compute_dtype": "auto", "compile": False, "fp8_matmul": False, "gpus": 1,
                                          "vace_module_high": "none", "vace_module_low": "none"},
                 pos=(40, 80), size=(380, 226), models=(high, low))
    encoder = Node(2, "WanMoETextEncoderLoader", {"text_encoder": t5, "device": t5_device, "dtype": "auto"},
                   pos=(40, 320), size=(380, 110), models=(t5,))
    text = Node(3, "WanMoETextEncode", {"text_encoder": (encoder, 0), "positive": PROMPT, "negative": NEGATIVE_PROMPT},
                pos=(460, 320), size=(420, 300))
    latent = Node(4, "WanMoEEmptyLatent", {"width": width, "height": height, "length": length, "batch_size": 1},
                  pos=(460, 660), size=(320, 130))
    sampler_inputs = {"model": (model, 0), "positive": (text, 0), "negative": (text, 1), "latent": (latent, 0),
                      "seed": 42, "steps": STEPS, "cfg_high": GUIDE_HIGH, "cfg_low": GUIDE_LOW, "shift": SHIFT,
                      "sampler": "unipc", "denoise": 1.0, **SAMPLER_OPTIONS}
    if windows is not None:
        sampler_inputs["windows"] = (windows, 0)
    sampler = Node(5, "WanMoESampler", sampler_inputs, pos=(920, 80), size=(340, 420))
    vae_loader = Node(6, "WanMoEVAELoader", {"vae": vae, "dtype": "bf16"}, pos=(460, 830), size=(340, 90), models=(vae,))
    decode = Node(7, "WanMoEVAEDecode", {"vae": (vae_loader, 0), "samples": (sampler, 0), "tiling": "auto",
                                         "tile_size": 0, "tile_overlap": 0}, pos=(1300, 80), size=(300, 150))
    return [model, encoder, text, latent, sampler, vae_loader, decode]


def video_nodes(images: tuple[Node, int], prefix: str, x: int) -> list[Node]:
    """CreateVideo (16 fps) -> SaveVideo (ids 8, 9) from an IMAGE output, placed from canvas column `x`."""
    video = Node(8, "CreateVideo", {"images": images, "fps": float(FPS)}, pos=(x, 280), size=(300, 80))
    save = Node(9, "SaveVideo", {"video": (video, 0), "filename_prefix": prefix, "format": "auto", "codec": "auto"},
                pos=(x + 340, 80), size=(420, 460))
    return [video, save]


def model_files(nodes: list[Node]) -> list[str]:
    """The model files the nodes name, in graph order (for the note)."""
    return [m for node in nodes for m in node.models]


def t2v_graph(*, high: str, low: str, t5: str, t5_device: str, width: int, height: int, placement: str,
              note_extra: str, prefix: str) -> list[Node]:
    """Text-to-video with the MoE sampler: loaders -> text encode -> sampler -> VAE decode -> CreateVideo -> SaveVideo."""
    nodes = t2v_nodes(high=high, low=low, t5=t5, t5_device=t5_device, width=width, height=height, placement=placement)
    nodes += video_nodes((nodes[-1], 0), prefix, x=1300)
    note = Node(10, "MarkdownNote", {"text": files_note(model_files(nodes), note_extra)}, pos=(40, 480), size=(380, 300),
                title="Model files")
    return nodes + [note]


def t2v_upscale_graph(*, target: tuple[int, int], upscale_model: str | None, note_extra: str, prefix: str) -> list[Node]:
    """Low-VRAM text-to-video at 832x480, then WanMoEUpscale to exactly `target` (w, h) -> CreateVideo -> SaveVideo.

    With `upscale_model`, core's UpscaleModelLoader feeds the upscaler; without, it resamples (Lanczos) and sharpens.
    """
    nodes = t2v_nodes(high=COMFY_FILES["high_fp8"], low=COMFY_FILES["low_fp8"], t5=COMFY_FILES["t5_fp8"], t5_device="cpu",
                      width=832, height=480, placement="auto")
    decode = nodes[-1]
    upscale_inputs: dict = {"images": (decode, 0)}
    loader = None
    if upscale_model is not None:
        loader = Node(12, "UpscaleModelLoader", {"model_name": upscale_model}, pos=(1300, 270), size=(300, 80),
                      title="Load Upscale Model", models=(upscale_model,))
        upscale_inputs["upscale_model"] = (loader, 0)
    upscale_inputs |= {"mode": "exact size", "scale": 2.0, "width": target[0], "height": target[1], "fit": "crop",
                       "resample": "lanczos", "sharpen": 0.0 if loader else 0.3, "stabilize": 0.5, "color_fix": True,
                       "tile_size": 0, "frame_batch": 0}
    upscale = Node(11, "WanMoEUpscale", upscale_inputs, pos=(1640, 80), size=(340, 440))
    tail = video_nodes((upscale, 0), prefix, x=1300)
    tail[0].pos, tail[1].pos, tail[1].size = (1300, 400), (1300, 520), (320, 400)  # under the decode: all on screen
    nodes += ([loader] if loader else []) + [upscale] + tail
    note = Node(10, "MarkdownNote", {"text": files_note(model_files(nodes), note_extra)}, pos=(40, 480), size=(380, 300),
                title="Model files")
    return nodes + [note]


def t2v_long_graph(*, frames: int, note_extra: str, prefix: str) -> list[Node]:
    """Text-to-video longer than 81 frames: the 720p graph with Wan2.2 Context Windows on the sampler."""
    windows = Node(11, "WanMoEContextWindows", {"window_frames": WINDOW_FRAMES, "overlap_frames": WINDOW_OVERLAP,
                                                "fuse": "pyramid"}, pos=(460, 960), size=(320, 130))
    nodes = t2v_nodes(high=COMFY_FILES["high_fp8"], low=COMFY_FILES["low_fp8"], t5=COMFY_FILES["t5_fp8"],
                      t5_device="cpu", width=832, height=480, placement="auto", length=frames, windows=windows)
    nodes += video_nodes((nodes[-1], 0), prefix, x=1300)
    note = Node(10, "MarkdownNote", {"text": files_note(model_files(nodes), note_extra)}, pos=(40, 480), size=(380, 300),
                title="Model files")
    return nodes + [windows, note]


def lightning_graph(*, prefix: str, note_extra: str) -> list[Node]:
    """Text-to-video with the Lightning 4-step LoRA pair: model loader -> WanMoELoraLoader (high + low LoRA at 1.0)
    -> sampler at 4 Euler steps, shift 5, cfg 1 on both experts -> VAE decode -> CreateVideo -> SaveVideo."""
    nodes = t2v_nodes(high=COMFY_FILES["high_fp8"], low=COMFY_FILES["low_fp8"], t5=COMFY_FILES["t5_fp8"],
                      t5_device="cpu", width=WIDTH, height=HEIGHT, placement="auto")
    model, sampler = nodes[0], nodes[4]
    lora = Node(11, "WanMoELoraLoader", {"model": (model, 0), "lora_high": LIGHTNING_LORAS["high"], "strength_high": 1.0,
                                         "lora_low": LIGHTNING_LORAS["low"], "strength_low": 1.0},
                pos=(460, 80), size=(420, 180), title="Lightning 4-step LoRAs",
                models=(LIGHTNING_LORAS["high"], LIGHTNING_LORAS["low"]))
    sampler.inputs.update(model=(lora, 0), steps=LIGHTNING_STEPS, cfg_high=LIGHTNING_CFG, cfg_low=LIGHTNING_CFG,
                          shift=LIGHTNING_SHIFT, sampler="euler")
    nodes.insert(1, lora)
    nodes += video_nodes((nodes[-1], 0), prefix, x=1300)
    note = Node(10, "MarkdownNote", {"text": files_note(model_files(nodes), note_extra)}, pos=(40, 480), size=(380, 300),
                title="Model files")
    return nodes + [note]


LIGHTNING_NOTE = ("Lightning 4-step distillation (ModelTC/Wan2.2-Lightning V1.1): one LoRA per expert at strength 1.0, "
                  "4 Euler steps at shift 5 and cfg 1.0 on both experts (no negative pass). The sampler feeds the "
                  "timesteps the LoRAs were distilled on, 1000, 937.5 (high-noise) and 833.3, 625 (low-noise): "
                  "8 DiT passes instead of 80. On the fp8 experts the LoRAs run as low-rank terms beside the fp8 "
                  "weights; on fp16/bf16 experts they are merged into the weights.")
UPSCALE_NOTE = ("Generates at 832x480 (fp8 experts, text encoder on the CPU), then 'Wan2.2 Video Upscale' makes "
                "exactly {w}x{h} (centre crop to the aspect ratio) in tiles and frame chunks sized to free memory, "
                "with its temporal stabiliser and colour fix. For 1080p set width 1920 and height 1080. "
                "Refine pass (upscale -> VAE encode -> low-noise expert at denoise 0.3): see docs/upscale.md.")


SHORT_PROMPT = "A red fox trots through fresh snow"
CLASSIFIER = "nsfw_image_detection"  # Falconsai/nsfw_image_detection (ViT, labels normal / nsfw)
LLM = "Qwen2.5-3B-Instruct"  # one of the official prompt extension's local models
ENHANCED_NOTE = (
    "**Around the generator.** 'Prompt Enhance' appends scene, shot, camera, lighting and style to the short prompt "
    "(template mode: no model, the same text every time; switch mode to llm for a local language model). 'Prompt "
    "Safety Filter' stops the run on sensitive terms (docs/nodes.md lists the shipped ones; add your own .txt lists "
    "in models/safety_terms). After decoding, 'Frame Moderation' scores the frames with your image classifier and "
    "pixelates flagged ones (set action to block to stop instead), 'Frame Interpolation' makes 16 fps into 32 fps "
    "(CreateVideo takes its fps), 'Color Grade' adds a little contrast and saturation (a .cube LUT from models/luts, "
    "or a reference image, can go there too).\n\n"
    "**Folder models** (whole Hugging Face folders, not single files):\n\n"
    f"- `classifiers/{CLASSIFIER}/`: `huggingface-cli download Falconsai/nsfw_image_detection --local-dir "
    f"ComfyUI/models/classifiers/{CLASSIFIER}`\n"
    f"- `LLM/{LLM}/` (llm mode only): `huggingface-cli download Qwen/{LLM} --local-dir ComfyUI/models/LLM/{LLM}`")


def t2v_enhanced_graph(*, prefix: str) -> list[Node]:
    """enhance -> filter -> encode -> sample -> decode -> moderate -> interpolate (x2) -> grade -> CreateVideo -> save."""
    nodes = t2v_nodes(high=COMFY_FILES["high_fp16"], low=COMFY_FILES["low_fp16"], t5=COMFY_FILES["t5_fp16"],
                      t5_device="gpu", width=WIDTH, height=HEIGHT, placement="auto")
    model, encoder, text, latent, sampler, vae_loader, decode = nodes
    enhance = Node(13, "WanMoEPromptEnhance", {
        "prompt": SHORT_PROMPT, "mode": "template", "language": "auto",
        "scene": "a quiet birch forest in winter, snow on the branches", "shot": "wide shot", "camera": "tracking",
        "lighting": "golden hour", "color": "none", "style": "cinematic", "skip_covered": True, "llm_model": LLM,
        "subject": "red fox", "on_subject_lost": "keep original", "max_new_tokens": 256, "temperature": 0.0,
        "seed": 42, "llm_dtype": "auto"}, pos=(460, 80), size=(400, 680))
    safety = Node(14, "WanMoESafetyFilter", {"text": (enhance, 0), "mode": "block", "term_lists": "default",
                                            "extra_terms": ""}, pos=(460, 800), size=(400, 260))
    text.inputs["positive"] = (safety, 0)
    text.pos, text.size = (900, 80), (420, 300)
    latent.pos, vae_loader.pos = (900, 420), (900, 590)
    sampler.pos, decode.pos = (1360, 80), (1360, 450)
    moderate = Node(15, "WanMoEFrameModerate", {"images": (decode, 0), "classifier": CLASSIFIER, "unsafe_labels": "nsfw",
                                               "threshold": 0.5, "action": "blur", "stride": 1},
                    pos=(1740, 80), size=(320, 230))
    interpolate = Node(16, "WanMoEFrameInterpolate", {"images": (moderate, 0), "factor": 2, "fps": float(FPS),
                                                     "method": "dis", "scene_threshold": 0.5, "flow_resolution": "auto"},
                       pos=(1740, 350), size=(320, 230))
    grade = Node(17, "WanMoEColorGrade", {"images": (interpolate, 0), "match_strength": 1.0, "exposure": 0.0,
                                         "contrast": 1.05, "saturation": 1.05, "temperature": 0.0, "tint": 0.0,
                                         "lut": "none", "lut_strength": 1.0}, pos=(1740, 620), size=(320, 330))
    video, save = video_nodes((grade, 0), prefix, x=2100)
    video.inputs["fps"] = (interpolate, 1)
    video.widget_values["fps"] = float(FPS * 2)
    video.pos, save.pos, save.size = (2100, 170), (2100, 290), (360, 420)  # below the frontend's Run bar
    graph = [model, encoder, enhance, safety, text, latent, sampler, vae_loader, decode, moderate, interpolate, grade,
             video, save]
    note = Node(10, "MarkdownNote", {"text": files_note(model_files(graph), ENHANCED_NOTE)}, pos=(40, 480),
                size=(380, 560), title="Model files")
    return graph + [note]


# Zoom each UI file opens at: the default 0.7 shows the others whole on a 1600x900 canvas; the enhanced graph is
# wider, and below 0.6 the canvas stops drawing widget text.
SCALES = {"wan22_t2v_a14b_enhanced": 0.62}


CONTROL_VIDEO = "control_video.mp4"  # the user's clip in ComfyUI/input (Load Video's upload button puts it there)
VACE_NOTE = ("Control: Load Video -> Get Video Components -> 'Wan2.2 Control Preprocess' (Canny edges here; soft "
             "edges, tile, grayscale; or any preprocessor pack's depth / pose frames) -> core WanVaceToVideo, which "
             "writes the control into both conditionings and makes the latent. The VACE-Fun experts follow it; "
             "TrimVideoLatent removes the reference-image frame when one is connected. 'Wan2.2 VACE Control' "
             "replaces WanVaceToVideo when you want the control only for part of each expert's steps.")


def t2v_vace_graph(*, prefix: str, width: int = 832, height: int = 480) -> list[Node]:
    """Control video -> preprocess -> core WanVaceToVideo -> MoE sampler (VACE-Fun experts) -> trim -> decode -> video."""
    nodes = t2v_nodes(high=COMFY_FILES["vace_high_fp8"], low=COMFY_FILES["vace_low_fp8"], t5=COMFY_FILES["t5_fp8"],
                      t5_device="cpu", width=width, height=height, placement="auto")
    model, encoder, text, _, sampler, vae_loader, decode = nodes  # WanVaceToVideo makes the latent
    core_vae = Node(11, "VAELoader", {"vae_name": COMFY_FILES["vae"]}, pos=(40, 820), size=(380, 80),
                    title="Load VAE (for WanVaceToVideo)", models=(COMFY_FILES["vae"],))
    load = Node(12, "LoadVideo", {"file": CONTROL_VIDEO}, pos=(40, 940), size=(380, 440), title="Load Video (control)")
    parts = Node(13, "GetVideoComponents", {"video": (load, 0)}, pos=(460, 940), size=(300, 90))
    prep = Node(14, "WanMoEControlPreprocess", {"images": (parts, 0), "mode": "canny", "low_threshold": 100.0,
                                                "high_threshold": 200.0, "blur": 2.0, "width": width, "height": height,
                                                "length": FRAMES, "pad": "grey"}, pos=(460, 1070), size=(340, 280))
    vace = Node(15, "WanVaceToVideo", {"positive": (text, 0), "negative": (text, 1), "vae": (core_vae, 0),
                                       "width": width, "height": height, "length": FRAMES, "batch_size": 1,
                                       "strength": 1.0, "control_video": (prep, 0)}, pos=(920, 660), size=(340, 300))
    sampler.inputs.update(positive=(vace, 0), negative=(vace, 1), latent=(vace, 2))
    trim = Node(16, "TrimVideoLatent", {"samples": (sampler, 0), "trim_amount": (vace, 3)},
                widget_values={"trim_amount": 0}, pos=(1300, 80), size=(300, 80))
    decode.inputs["samples"], decode.pos = (trim, 0), (1300, 200)
    tail = video_nodes((decode, 0), prefix, x=1300)
    tail[0].pos, tail[1].pos = (1300, 400), (1640, 80)
    body = [model, encoder, text, sampler, vae_loader, core_vae, load, parts, prep, vace, trim, decode, *tail]
    note = Node(10, "MarkdownNote", {"text": files_note(model_files(body), VACE_NOTE)}, pos=(40, 480), size=(380, 300),
                title="Model files")
    return body + [note]


def all_workflows() -> dict[str, list[Node]]:
    """Every shipped workflow by file stem."""
    return {
        "wan22_t2v_a14b_720p": t2v_graph(
            high=COMFY_FILES["high_fp16"], low=COMFY_FILES["low_fp16"], t5=COMFY_FILES["t5_fp16"], t5_device="gpu",
            width=WIDTH, height=HEIGHT, placement="auto", prefix="video/wan22_t2v_720p",
            note_extra="Official defaults: 1280x720, 81 frames at 16 fps, 40 UniPC steps, shift 12, cfg 4.0 (high-noise) "
                       "/ 3.0 (low-noise), switching experts at t = 875."),
        "wan22_t2v_a14b_fp8_lowvram": t2v_graph(
            high=COMFY_FILES["high_fp8"], low=COMFY_FILES["low_fp8"], t5=COMFY_FILES["t5_fp8"], t5_device="cpu",
            width=832, height=480, placement="auto", prefix="video/wan22_t2v_480p_fp8",
            note_extra="Low-VRAM setup: Comfy-Org's fp8_scaled experts, the text encoder on the CPU, 832x480; placement "
                       "auto swaps or streams the experts to fit the GPU."),
        "wan22_t2v_a14b_long": t2v_long_graph(
            frames=161, prefix="video/wan22_t2v_long_480p",
            note_extra="161 frames (10 s at 16 fps) at 832x480: Wan2.2 Context Windows runs every step on windows of "
                       "81 frames (what Wan2.2 is trained on) that share at least 16 frames, blended smoothly; memory "
                       "per step follows the window. For more frames raise the latent's length (4n+1). To continue "
                       "a finished clip instead, see docs/long_video.md (Wan2.2 Extend Latent / Extend Join)."),
        "wan22_t2v_a14b_lightning_4step": lightning_graph(prefix="video/wan22_t2v_lightning_720p",
                                                          note_extra=LIGHTNING_NOTE),
        "wan22_t2v_a14b_upscale": t2v_upscale_graph(
            target=(WIDTH, HEIGHT), upscale_model=None, prefix="video/wan22_t2v_upscale_720p",
            note_extra=UPSCALE_NOTE.format(w=WIDTH, h=HEIGHT) + " Without an upscale model the frames are resampled "
                       "with Lanczos and mildly sharpened; the model variant is wan22_t2v_a14b_upscale_model."),
        "wan22_t2v_a14b_upscale_model": t2v_upscale_graph(
            target=(WIDTH, HEIGHT), upscale_model=UPSCALER, prefix="video/wan22_t2v_upscale_model_720p",
            note_extra=UPSCALE_NOTE.format(w=WIDTH, h=HEIGHT) + f" Core 'Load Upscale Model' feeds it {UPSCALER} "
                       "(4x, then resampled to the target); any ESRGAN / Real-ESRGAN / SRVGGNetCompact / SwinIR-family "
                       "file in upscale_models works, e.g. realesr-animevideov3.pth (faster)."),
        "wan22_t2v_a14b_enhanced": t2v_enhanced_graph(prefix="video/wan22_t2v_enhanced_720p_32fps"),
        "wan22_t2v_a14b_vace_control": t2v_vace_graph(prefix="video/wan22_t2v_vace_control"),
    }


def api_path(stem: str, directory: Path = WORKFLOWS_DIR) -> Path:
    """Where the API twin of workflow `stem` lives."""
    return directory / "api" / f"{stem}.json"


def write_all(directory: Path = WORKFLOWS_DIR) -> list[Path]:
    """Write every workflow's UI file and its API twin (in api/, so ComfyUI's templates browser lists only UI files)."""
    (directory / "api").mkdir(parents=True, exist_ok=True)
    written = []
    for stem, nodes in all_workflows().items():
        ui = to_ui(nodes, scale=SCALES.get(stem, 0.7))
        for path, data in ((directory / f"{stem}.json", ui), (api_path(stem, directory), to_api(nodes))):
            path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
            written.append(path)
    return written


if __name__ == "__main__":
    for p in write_all():
        print(p.relative_to(REPO_ROOT))
