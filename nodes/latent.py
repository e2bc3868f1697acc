"""WanMoEEmptyLatent: an empty Wan2.1 video latent in core's LATENT layout (same as EmptyHunyuanLatentVideo)."""

from __future__ import annotations

import comfy.model_management
from .api_version import io

from ..wan_core import api
from ..wan_core.config import FRAMES, HEIGHT, WIDTH

from .values import widget_problem

CATEGORY = "WanMoE"
MAX_SIZE = 4096
MAX_FRAMES = 1025


class WanMoEEmptyLatent(io.ComfyNode):
    """Zeros of shape [batch, 16, (length-1)/4+1, height/8, width/8]: interchangeable with core's video latents."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WanMoEEmptyLatent",
            display_name="Wan2.2 Empty Video Latent",
            category=CATEGORY,
            description="Empty latent for text-to-video. Official sizes: 1280x720 and 832x480 (either orientation), "
                        "81 frames at 16 fps.",
            inputs=[
                io.Int.Input("width", default=WIDTH, min=16, max=MAX_SIZE, step=16,
                             tooltip="Video width in pixels, a multiple of 16 (8x VAE downsampling, then 2x2 patches)."),
                io.Int.Input("height", default=HEIGHT, min=16, max=MAX_SIZE, step=16,
                             tooltip="Video height in pixels, a multiple of 16."),
                io.Int.Input("length", default=FRAMES, min=1, max=MAX_FRAMES, step=4,
                             tooltip="Number of frames, 4n+1 (the VAE turns 4 frames into one latent frame, plus the "
                                     "first): 81 frames = 5 s at 16 fps."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Videos generated side by side."),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def validate_inputs(cls, **values) -> bool | str:
        problem = widget_problem(cls, values)
        if problem is None and all(k in values for k in ("width", "height", "length")):
            problem = api.size_problem(values["width"], values["height"], values["length"], max_size=MAX_SIZE,
                                       max_frames=MAX_FRAMES)
        return problem or True

    @classmethod
    def execute(cls, width: int, height: int, length: int, batch_size: int = 1) -> io.NodeOutput:
        return io.NodeOutput(api.empty_latent(width, height, length, batch_size,
                                              device=comfy.model_management.intermediate_device()))


NODES = [WanMoEEmptyLatent]
