"""Control nodes: VACE control for the MoE sampler (WanMoEVaceControl) and model-free control preprocessing
(WanMoEControlPreprocess). Both write core's own types, so they chain with core WanVaceToVideo and any pack."""

from __future__ import annotations

import logging

from .api_version import io

from ..wan_core import api
from ..wan_core.config import CONTROL_MODES, CONTROL_PADS, FRAMES

from .comfy_bridge import compute_device, frame_progress, intermediate_device
from .sockets import WanMoEVAEType

CATEGORY = "WanMoE"
MAX_SIZE = 4096
MAX_FRAMES = 1025
log = logging.getLogger("ComfyUI-WanMoE")
PERCENT_NOTE = ("A fraction of this expert's steps: the control applies at the expert's step k of n when "
                "start <= k/n < end.")


def _percent(name: str, default: float, tooltip: str) -> io.Float.Input:
    return io.Float.Input(name, default=default, min=0.0, max=1.0, step=0.01, tooltip=f"{tooltip} {PERCENT_NOTE}")


class WanMoEVaceControl(io.ComfyNode):
    """Core WanVaceToVideo's control latents (same conditioning keys) with a step range per expert."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WanMoEVaceControl",
            display_name="Wan2.2 VACE Control",
            category=CATEGORY,
            description="Steers the video with a control video (edges, depth, pose ...), an optional mask and an "
                        "optional reference image through the VACE blocks of Wan2.2-VACE-Fun experts. Writes the "
                        "same conditioning as core WanVaceToVideo (chain several for several controls) plus the "
                        "steps each expert applies it at.",
            inputs=[
                io.Conditioning.Input("positive", tooltip="Prompt conditioning; the control is appended to it."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning; the same control is appended."),
                WanMoEVAEType.Input("vae", tooltip="From the Wan2.1 VAE Loader: encodes the control frames."),
                io.Int.Input("width", default=832, min=16, max=MAX_SIZE, step=16,
                             tooltip="Video width; the control video is centre-cropped and resized to it."),
                io.Int.Input("height", default=480, min=16, max=MAX_SIZE, step=16, tooltip="Video height."),
                io.Int.Input("length", default=FRAMES, min=1, max=MAX_FRAMES, step=4,
                             tooltip="Frames (4n+1). A longer control video is cut, a shorter one padded with grey "
                                     "(no control there)."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Videos sampled side by side."),
                io.Float.Input("strength", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="How strongly the control steers (0 = off: the plain experts' result)."),
                _percent("start_percent_high", 0.0, "First high-noise step with the control."),
                _percent("end_percent_high", 1.0, "High-noise steps from here on run without the control."),
                _percent("start_percent_low", 0.0, "First low-noise step with the control."),
                _percent("end_percent_low", 1.0, "Low-noise steps from here on run without the control (e.g. 0.5: "
                                                 "the last half of the details are free)."),
                io.Image.Input("control_video", optional=True,
                               tooltip="Control frames (from Wan2.2 Control Preprocess, a preprocessor pack, or any "
                                       "image batch); grey frames mean no control."),
                io.Mask.Input("control_masks", optional=True,
                              tooltip="Where to generate (1) and where to keep the control frames' content (0); one "
                                      "mask or one per frame."),
                io.Image.Input("reference_image", optional=True,
                               tooltip="A subject or style reference: encoded as an extra latent frame in front. Trim "
                                       "it after sampling with core TrimVideoLatent and trim_latent."),
            ],
            outputs=[io.Conditioning.Output(display_name="positive"), io.Conditioning.Output(display_name="negative"),
                     io.Latent.Output(display_name="latent"), io.Int.Output(display_name="trim_latent")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, width: int, height: int, length: int, start_percent_high: float, end_percent_high: float,
                        start_percent_low: float, end_percent_low: float) -> bool | str:
        for expert, start, end in (("high", start_percent_high, end_percent_high),
                                   ("low", start_percent_low, end_percent_low)):
            if start > end:
                return f"start_percent_{expert} ({start:g}) must not be above end_percent_{expert} ({end:g})"
        return api.size_problem(width, height, length, max_size=MAX_SIZE, max_frames=MAX_FRAMES) or True

    @classmethod
    def execute(cls, positive: list, negative: list, vae: api.VAERequest, width: int, height: int, length: int,
                batch_size: int, strength: float, start_percent_high: float, end_percent_high: float,
                start_percent_low: float, end_percent_low: float, control_video=None, control_masks=None,
                reference_image=None) -> io.NodeOutput:
        ranges = {"high": (start_percent_high, end_percent_high), "low": (start_percent_low, end_percent_low)}
        out = api.vace_control(vae, positive, negative, width=width, height=height, length=length, batch=batch_size,
                               strength=strength, ranges=ranges, device=compute_device(),
                               out_device=intermediate_device(), control_video=control_video,
                               control_masks=control_masks, reference_image=reference_image,
                               on_frame=frame_progress(cls.hidden.unique_id))
        for note in out.notes:
            log.info("WanMoEVaceControl: %s", note)
        return io.NodeOutput(out.positive, out.negative, out.latent, out.trim_latent)


class WanMoEControlPreprocess(io.ComfyNode):
    """Canny / soft edges / tile / grayscale control frames on opencv, fitted to a size and a 4n+1 frame count."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WanMoEControlPreprocess",
            display_name="Wan2.2 Control Preprocess",
            category=CATEGORY,
            description="Turns a clip into control frames without downloading any model: Canny edges, soft edges, a "
                        "blurred 'tile' image, grayscale, or only fitting the size and frame count.",
            inputs=[
                io.Image.Input("images", tooltip="The clip (e.g. Load Video -> Get Video Components -> images)."),
                io.Combo.Input("mode", options=list(CONTROL_MODES), default="canny",
                               tooltip="canny: white edges on black; soft edges: gradient strength of the blurred "
                                       "luminance; tile: the frames blurred (layout and colours, detail left to the "
                                       "model); grayscale: luminance only; none: the frames as they are."),
                io.Float.Input("low_threshold", default=100.0, min=0.0, max=1000.0, step=1.0,
                               tooltip="Canny: gradients below this are never edges (0-255 luminance scale)."),
                io.Float.Input("high_threshold", default=200.0, min=0.0, max=1000.0, step=1.0,
                               tooltip="Canny: gradients above this are always edges; between the two, only when "
                                       "connected to one."),
                io.Float.Input("blur", default=2.0, min=0.0, max=64.0, step=0.1,
                               tooltip="Gaussian sigma in pixels for soft edges (before the gradient) and tile."),
                io.Int.Input("width", default=832, min=0, max=MAX_SIZE, step=16,
                             tooltip="Output width (centre crop + resize); 0 keeps the clip's, or follows height."),
                io.Int.Input("height", default=480, min=0, max=MAX_SIZE, step=16,
                             tooltip="Output height; 0 keeps the clip's, or follows width."),
                io.Int.Input("length", default=FRAMES, min=0, max=MAX_FRAMES, step=4,
                             tooltip="Output frames (4n+1): a longer clip is cut, a shorter one padded. 0: the "
                                     "largest 4n+1 count the clip has."),
                io.Combo.Input("pad", options=list(CONTROL_PADS), default="grey",
                               tooltip="How a short clip is padded: grey (no control on those frames) or its last "
                                       "frame repeated."),
            ],
            outputs=[io.Image.Output(display_name="images")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, length: int, low_threshold: float, high_threshold: float) -> bool | str:
        if low_threshold > high_threshold:
            return f"low_threshold ({low_threshold:g}) must not be above high_threshold ({high_threshold:g})"
        return (api.frames_problem(length) if length else None) or True

    @classmethod
    def execute(cls, images, mode: str, low_threshold: float, high_threshold: float, blur: float, width: int,
                height: int, length: int, pad: str) -> io.NodeOutput:
        out = api.preprocess_control(images, mode, low_threshold=low_threshold, high_threshold=high_threshold,
                                     blur=blur, width=width, height=height, length=length, pad=pad,
                                     on_frame=frame_progress(cls.hidden.unique_id, images.shape[0]))
        for note in out.notes:
            log.info("WanMoEControlPreprocess: %s", note)
        return io.NodeOutput(out.images)


NODES = [WanMoEVaceControl, WanMoEControlPreprocess]
