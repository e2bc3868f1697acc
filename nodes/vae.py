"""WanMoEVAEDecode / WanMoEVAEEncode: Wan2.1 VAE between core's LATENT and IMAGE, in bounded memory."""

from __future__ import annotations

from .api_version import io

from ..wan_core import api
from ..wan_core.config import TILING

from .comfy_bridge import check_cancel, compute_device, frame_progress
from .sockets import WanMoEVAEType
from .values import widget_problem

CATEGORY = "WanMoE"


def _tiling_inputs() -> list:
    return [
        io.Combo.Input("tiling", options=list(TILING), default="auto",
                       tooltip="Spatial tiling bounds memory by the tile, not the frame. auto turns it on when the "
                               "untiled estimate exceeds the free memory of the device."),
        io.Int.Input("tile_size", default=0, min=0, max=4096, step=32,
                     tooltip="Tile size in pixels (0 = automatic). Smaller tiles use less memory."),
        io.Int.Input("tile_overlap", default=0, min=0, max=1024, step=8,
                     tooltip="Overlap between tiles in pixels, blended smoothly (0 = automatic)."),
    ]


class WanMoEVAEDecode(io.ComfyNode):
    """Latent -> frames, one latent frame at a time with the causal cache (memory does not grow with length)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WanMoEVAEDecode",
            display_name="Wan2.1 VAE Decode",
            category=CATEGORY,
            inputs=[
                WanMoEVAEType.Input("vae", tooltip="From the Wan2.1 VAE Loader."),
                io.Latent.Input("samples", tooltip="A Wan2.1 video latent (from the sampler or any core video latent)."),
                *_tiling_inputs(),
            ],
            outputs=[io.Image.Output(tooltip="Frames [frames, height, width, 3] in 0..1, for CreateVideo, "
                                             "upscalers or any IMAGE input.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, **values) -> bool | str:
        return widget_problem(cls, values) or True

    @classmethod
    def execute(cls, vae: api.VAERequest, samples: dict, tiling: str, tile_size: int, tile_overlap: int) -> io.NodeOutput:
        images = api.decode(vae, samples, device=compute_device(), tiling=tiling, tile_px=tile_size,
                            overlap_px=tile_overlap, on_frame=frame_progress(cls.hidden.unique_id),
                            check_cancel=check_cancel)
        return io.NodeOutput(images)


class WanMoEVAEEncode(io.ComfyNode):
    """Frames -> latent (4n+1 frames -> n+1 latent frames), for video-to-video and refine passes."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WanMoEVAEEncode",
            display_name="Wan2.1 VAE Encode",
            category=CATEGORY,
            inputs=[
                WanMoEVAEType.Input("vae", tooltip="From the Wan2.1 VAE Loader."),
                io.Image.Input("image", tooltip="4n+1 frames (1, 5, 9, ..., 81); width and height multiples of 16."),
                *_tiling_inputs(),
            ],
            outputs=[io.Latent.Output()],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, **values) -> bool | str:
        return widget_problem(cls, values) or True

    @classmethod
    def execute(cls, vae: api.VAERequest, image, tiling: str, tile_size: int, tile_overlap: int) -> io.NodeOutput:
        latent = api.encode(vae, image, device=compute_device(), tiling=tiling, tile_px=tile_size,
                            overlap_px=tile_overlap, on_frame=frame_progress(cls.hidden.unique_id),
                            check_cancel=check_cancel)
        return io.NodeOutput(latent)


NODES = [WanMoEVAEDecode, WanMoEVAEEncode]
