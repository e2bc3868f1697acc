"""After the VAE decode: frame moderation, frame interpolation and colour grading of core IMAGE clips.

Each takes and gives IMAGE, so they chain with VAE Decode, the upscaler, CreateVideo and SaveVideo;
WanMoEFrameInterpolate also gives the new frame rate for CreateVideo's fps.
"""

from __future__ import annotations

import logging

from .api_version import io

from ..wan_core import api
from ..wan_core.config import FPS

from .comfy_bridge import compute_device, frame_progress, release_device_cache
from .extra_folders import NONE, folder_not_listed, model_folder_path, model_folders
from .model_files import file_choices, full_path, not_listed

CATEGORY = "WanMoE/post"
CLASSIFIERS, LUTS = "classifiers", "luts"
log = logging.getLogger("ComfyUI-WanMoE")


class WanMoEFrameModerate(io.ComfyNode):
    """Scores decoded frames with your image classifier and blocks, blurs or passes them, with a report."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WanMoEFrameModerate",
            display_name="Wan2.2 Frame Moderation",
            category=CATEGORY,
            description="Runs an image classifier you supply (a Hugging Face image-classification folder in "
                        "models/classifiers, e.g. Falconsai/nsfw_image_detection) on the frames, offline. Frames whose "
                        "unsafe score reaches the threshold stop the run (block), are pixelated (blur), or only "
                        "reported (pass).",
            inputs=[
                io.Image.Input("images", tooltip="Decoded frames (e.g. from VAE Decode)."),
                io.Combo.Input("classifier", options=model_folders(CLASSIFIERS) or [NONE],
                               tooltip="Classifier folder in models/classifiers (config.json + model.safetensors + "
                                       "preprocessor_config.json). Nothing is downloaded."),
                io.String.Input("unsafe_labels", default="nsfw",
                                tooltip="The classifier's label(s) that count as unsafe, comma-separated; the score is "
                                        "their summed probability (see the classifier's config.json id2label)."),
                io.Float.Input("threshold", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Frames scoring at or above this are acted on."),
                io.Combo.Input("action", options=list(api.MODERATION_ACTIONS), default="block",
                               tooltip="block: stop the run with an error listing the frames. blur: pixelate those "
                                       "frames beyond recognition. pass: change nothing, report only."),
                io.Int.Input("stride", default=1, min=1, max=64,
                             tooltip="Score every n-th frame (and the last); the frames between take the higher score "
                                     "of their neighbours. 1 scores every frame."),
            ],
            outputs=[io.Image.Output(display_name="images"), io.String.Output(display_name="report")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, classifier: str) -> bool | str:
        return folder_not_listed(CLASSIFIERS, classifier) or True

    @classmethod
    def execute(cls, images, classifier: str, unsafe_labels: str, threshold: float, action: str,
                stride: int) -> io.NodeOutput:
        frames, report = api.moderate_frames(
            images, model_folder_path(CLASSIFIERS, classifier), unsafe_labels=unsafe_labels, threshold=threshold,
            action=action, stride=stride, device=compute_device(), progress=frame_progress(cls.hidden.unique_id))
        return io.NodeOutput(frames, report, ui={"text": [report]})


class WanMoEFrameInterpolate(io.ComfyNode):
    """16 -> 32/48/64 fps by optical flow (OpenCV), occlusion-aware, scene cuts held; no model download."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WanMoEFrameInterpolate",
            display_name="Wan2.2 Frame Interpolation",
            category=CATEGORY,
            description="Inserts factor-1 frames between each pair along optical flow measured both ways, blending "
                        "the two warps by where each frame really shows the content (occlusions). Pairs across a "
                        "scene cut are not blended: their new frames repeat the nearer original. n frames become "
                        "(n-1) x factor + 1; connect 'fps' to CreateVideo's fps.",
            inputs=[
                io.Image.Input("images", tooltip="Frames in order (e.g. from VAE Decode or the upscaler)."),
                io.Int.Input("factor", default=2, min=min(api.INTERPOLATION_FACTORS),
                             max=max(api.INTERPOLATION_FACTORS),
                             tooltip="Frame-rate multiplier: 2 turns Wan2.2's 16 fps into 32 fps, 3 into 48, 4 into 64."),
                io.Float.Input("fps", default=float(FPS), min=1.0, max=240.0, step=1.0,
                               tooltip="Frame rate of the input (Wan2.2: 16); the 'fps' output is this x factor."),
                io.Combo.Input("method", options=list(api.INTERPOLATION_METHODS), default="dis",
                               tooltip="Optical flow: dis (OpenCV DIS, fast, sharp motion edges) or farneback "
                                       "(smoother flow, a little slower)."),
                io.Float.Input("scene_threshold", default=api.SCENE_THRESHOLD, min=0.0, max=1.0, step=0.01,
                               tooltip="A pair is a scene cut when fewer than this share of its pixels match both ways "
                                       "(same shot: ~0.95; a cut: below 0.2). 0 turns cut detection off."),
                io.Combo.Input("flow_resolution", options=list(api.FLOW_RESOLUTIONS), default="auto",
                               tooltip="Resolution the flow is measured at: auto is full up to 960 px and half above "
                                       "(720p and up), which is about 4x faster at a small cost in accuracy."),
            ],
            outputs=[io.Image.Output(display_name="images"), io.Float.Output(display_name="fps"),
                     io.String.Output(display_name="report")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, images, factor: int, fps: float, method: str, scene_threshold: float,
                flow_resolution: str) -> io.NodeOutput:
        frames, report = api.interpolate_frames(
            images, factor=factor, method=method, scene_threshold=scene_threshold, flow_resolution=flow_resolution,
            progress=frame_progress(cls.hidden.unique_id, max(1, images.shape[0] - 1)))
        return io.NodeOutput(frames, fps * factor, report, ui={"text": [report]})


class WanMoEColorGrade(io.ComfyNode):
    """Grades a clip with one transform for all frames: colour match to a reference, basic controls, a .cube LUT."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WanMoEColorGrade",
            display_name="Wan2.2 Color Grade",
            category=CATEGORY,
            description="Optionally matches the clip's colours to a reference image (mean and covariance in Lab, "
                        "measured over the whole clip, so it cannot flicker), then exposure, contrast, saturation, "
                        "temperature and tint, then a .cube LUT from models/luts.",
            inputs=[
                io.Image.Input("images", tooltip="The clip to grade."),
                io.Image.Input("reference", optional=True,
                               tooltip="Optional image (or images) whose colours the clip should take on."),
                io.Float.Input("match_strength", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="How far to move the clip's colours to the reference's (with a reference)."),
                io.Float.Input("exposure", default=0.0, min=-4.0, max=4.0, step=0.05,
                               tooltip="Exposure in stops, on linear light (+1 doubles the light)."),
                io.Float.Input("contrast", default=1.0, min=0.0, max=3.0, step=0.01,
                               tooltip="Lightness contrast about mid-grey (L* 50); 1 = unchanged."),
                io.Float.Input("saturation", default=1.0, min=0.0, max=3.0, step=0.01,
                               tooltip="Colourfulness (Lab chroma scale); 0 = black and white, 1 = unchanged."),
                io.Float.Input("temperature", default=0.0, min=-50.0, max=50.0, step=0.5,
                               tooltip="Warmth in Lab b* units: + warmer (yellow), - cooler (blue); 10 is clearly visible."),
                io.Float.Input("tint", default=0.0, min=-50.0, max=50.0, step=0.5,
                               tooltip="Tint in Lab a* units: + magenta, - green."),
                io.Combo.Input("lut", options=[NONE, *file_choices(LUTS)], default=NONE,
                               tooltip="A .cube LUT (1D, 3D or shaper + 3D) from models/luts, applied last; none = no LUT."),
                io.Float.Input("lut_strength", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Mix of the LUT's result with the graded colours (1 = the LUT fully)."),
            ],
            outputs=[io.Image.Output(display_name="images")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, lut: str) -> bool | str:
        return lut == NONE or not_listed(LUTS, lut, file_choices(LUTS)) or True

    @classmethod
    def execute(cls, images, match_strength: float, exposure: float, contrast: float, saturation: float,
                temperature: float, tint: float, lut: str, lut_strength: float, reference=None) -> io.NodeOutput:
        out = api.grade_frames(
            images, reference=reference, match_strength=match_strength, exposure=exposure, contrast=contrast,
            saturation=saturation, temperature=temperature, tint=tint,
            lut_path=None if lut == NONE else full_path(LUTS, lut), lut_strength=lut_strength,
            device=compute_device(), progress=frame_progress(cls.hidden.unique_id, images.shape[0]))
        release_device_cache()
        return io.NodeOutput(out)


NODES = [WanMoEFrameModerate, WanMoEFrameInterpolate, WanMoEColorGrade]
