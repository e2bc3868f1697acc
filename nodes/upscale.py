"""Upscaling nodes: a loader for models/upscale_models (core UPSCALE_MODEL type) and the video upscaler."""

from __future__ import annotations

from .api_version import io

from ..wan_core import api
from ..wan_core.config import RESAMPLES, UPSCALE_FITS, UPSCALE_MODES

from .comfy_bridge import check_cancel, compute_device, frame_progress, intermediate_device, release_device_cache
from .model_files import file_choices, fingerprint, full_path, not_listed
from .values import widget_problem

CATEGORY = "WanMoE"
FOLDER = "upscale_models"


class WanMoEUpscaleModelLoader(io.ComfyNode):
    """An upscale model file recognised by spandrel, as ComfyUI's core UPSCALE_MODEL."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WanMoEUpscaleModelLoader",
            display_name="Wan2.2 Upscale Model Loader",
            category=CATEGORY,
            description="Loads an ESRGAN / Real-ESRGAN / SRVGGNetCompact / SwinIR-family file with spandrel. The output "
                        "is core's UPSCALE_MODEL, so it also feeds core 'Upscale Image (using Model)'.",
            inputs=[
                io.Combo.Input("model_name", options=file_choices(FOLDER),
                               tooltip="Upscale model file (.pth or .safetensors) from models/upscale_models, e.g. "
                                       "realesr-animevideov3.pth or RealESRGAN_x4plus.pth."),
            ],
            outputs=[io.UpscaleModel.Output(display_name="upscale_model")],
        )

    @classmethod
    def validate_inputs(cls, **values) -> bool | str:
        listed = not_listed(FOLDER, values["model_name"], file_choices(FOLDER)) if "model_name" in values else None
        return listed or widget_problem(cls, values) or True

    @classmethod
    def fingerprint_inputs(cls, model_name: str) -> object:
        return fingerprint(FOLDER, model_name)

    @classmethod
    def execute(cls, model_name: str) -> io.NodeOutput:
        # ComfyUI's output cache reuses the descriptor while model_name is unchanged; on_device puts a copy on
        # the GPU through the shared model cache when WanMoEUpscale runs.
        return io.NodeOutput(api.load_upscale_model(full_path(FOLDER, model_name)))


class WanMoEUpscale(io.ComfyNode):
    """Upscales a whole clip: tiled model or Lanczos/bicubic, temporal stabiliser, colour fix, bounded memory."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WanMoEUpscale",
            display_name="Wan2.2 Video Upscale",
            category=CATEGORY,
            description="Upscales video frames chunk by chunk (memory does not grow with the clip length), with an "
                        "optional upscale model run in overlapping tiles, then stabilises the model's detail along "
                        "optical flow and matches each frame's colours to the input.",
            inputs=[
                io.Image.Input("images", tooltip="Frames to upscale (a batch of images, e.g. from VAE Decode)."),
                io.UpscaleModel.Input("upscale_model", optional=True,
                                      tooltip="Optional model from 'Load Upscale Model' or 'Wan2.2 Upscale Model Loader'. "
                                              "Without one the frames are resampled (see resample) and optionally sharpened."),
                io.Combo.Input("mode", options=list(UPSCALE_MODES), default="scale",
                               tooltip="scale: multiply width and height by 'scale'. exact size: output exactly "
                                       "width x height, keeping the aspect ratio with 'fit'."),
                io.Float.Input("scale", default=2.0, min=0.25, max=8.0, step=0.05,
                               tooltip="Scale factor in 'scale' mode (e.g. 1.5 for 480p -> 720p). A model's own factor "
                                       "is applied first and the result resampled to this factor."),
                io.Int.Input("width", default=1280, min=16, max=16384, step=2,
                             tooltip="Output width in 'exact size' mode (1280 for 720p, 1920 for 1080p)."),
                io.Int.Input("height", default=720, min=16, max=16384, step=2,
                             tooltip="Output height in 'exact size' mode (720 for 720p, 1080 for 1080p)."),
                io.Combo.Input("fit", options=list(UPSCALE_FITS), default="crop",
                               tooltip="How a different aspect ratio fits 'exact size': crop the input's centre, pad "
                                       "with black bars, or stretch."),
                io.Combo.Input("resample", options=list(RESAMPLES), default="lanczos",
                               tooltip="Filter for resizing (without a model, or from the model's factor to the target): "
                                       "lanczos is sharpest, bicubic softer, bilinear softest."),
                io.Float.Input("sharpen", default=0.0, min=0.0, max=2.0, step=0.05,
                               tooltip="Unsharp-mask amount after resizing; 0 = off, 0.3-0.6 is a mild sharpening."),
                io.Float.Input("stabilize", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="Temporal stabiliser strength for a model's detail (0 = off): blends each frame's "
                                       "invented detail with the previous frame's, warped along optical flow, where the "
                                       "motion is reliable. Higher is steadier but can smear fast motion."),
                io.Boolean.Input("color_fix", default=True,
                                 tooltip="Match each output frame's low frequencies and mean colour to the input frame, "
                                         "so a model cannot shift colours or brightness."),
                io.Int.Input("tile_size", default=0, min=0, max=4096, step=8,
                             tooltip="Model tile size in input pixels; 0 = chosen from free memory (whole frames when "
                                     "they fit). Lower it if you run out of memory."),
                io.Int.Input("frame_batch", default=0, min=0, max=256, step=1,
                             tooltip="Frames per chunk sent to the device at once; 0 = chosen from free memory."),
            ],
            outputs=[io.Image.Output(display_name="images")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, **values) -> bool | str:
        return widget_problem(cls, values) or True

    @classmethod
    def execute(cls, images, mode: str, scale: float, width: int, height: int, fit: str, resample: str,
                sharpen: float, stabilize: float, color_fix: bool, tile_size: int, frame_batch: int,
                upscale_model=None) -> io.NodeOutput:
        out = api.upscale(
            images, upscale_model, device=compute_device(), out_device=intermediate_device(),
            progress=frame_progress(cls.hidden.unique_id, images.shape[0]), check_cancel=check_cancel,
            scale=scale if mode == "scale" else None, target=(width, height) if mode == "exact size" else None,
            fit=fit, resample=resample, sharpen=sharpen, stabilize=stabilize, color_fix=color_fix,
            tile=tile_size or None, frame_batch=frame_batch or None,
        )
        release_device_cache()
        return io.NodeOutput(out)


NODES = [WanMoEUpscaleModelLoader, WanMoEUpscale]
