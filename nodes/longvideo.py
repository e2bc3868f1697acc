"""Long videos: context windows for the sampler, and continuing a finished clip from its last frames.

WanMoEContextWindows -> the sampler's `windows`. WanMoEExtendLatent (previous IMAGE -> start LATENT with its last
frames kept) -> WanMoESampler -> WanMoEVAEDecode -> WanMoEExtendJoin (previous + new frames, colour-matched).
"""

from __future__ import annotations

from .api_version import io

from ..wan_core import api
from ..wan_core.config import FRAMES, FUSE_METHODS, WINDOW_FRAMES, WINDOW_OVERLAP

from .comfy_bridge import compute_device, frame_progress
from .sockets import WanMoEVAEType, WanMoEWindowsType

CATEGORY = "WanMoE"
CONTINUE_FRAMES = 17  # a second of 16 fps video (4n+1) carried into the next clip


class WanMoEContextWindows(io.ComfyNode):
    """Sample a video longer than the model's 81 frames as overlapping temporal windows, blended smoothly."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WanMoEContextWindows",
            display_name="Wan2.2 Context Windows",
            category=CATEGORY,
            description="Every step runs each expert on one window of latent frames at a time and blends the "
                        "overlaps, so memory per step follows the window, not the video. The noise is drawn once for "
                        "the whole video, so a seed and these settings always give the same video.",
            inputs=[
                io.Int.Input("window_frames", default=WINDOW_FRAMES, min=5, max=1025, step=4,
                             tooltip="Frames per window, 4n+1 (Wan2.2 is trained on 81 = 21 latent frames)."),
                io.Int.Input("overlap_frames", default=WINDOW_OVERLAP, min=0, max=1024, step=4,
                             tooltip="Frames neighbouring windows share at least (a multiple of 4; 16 = 4 latent "
                                     "frames). Windows are spread evenly, so they may share more."),
                io.Combo.Input("fuse", options=list(FUSE_METHODS), default="pyramid",
                               tooltip="Blend weights. pyramid: each window weighs its middle most and cross-fades over "
                                       "all shared frames; linear: flat, ramping over overlap_frames at each side."),
            ],
            outputs=[WanMoEWindowsType.Output(display_name="windows")],
        )

    @classmethod
    def validate_inputs(cls, window_frames: int, overlap_frames: int) -> bool | str:
        return api.window_problem(window_frames, overlap_frames) or True

    @classmethod
    def execute(cls, window_frames: int, overlap_frames: int, fuse: str) -> io.NodeOutput:
        return io.NodeOutput(api.ContextWindows(window_frames, overlap_frames, fuse))


class WanMoEExtendLatent(io.ComfyNode):
    """The start of the next clip: the previous clip's last frames, encoded and kept while the rest is generated."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WanMoEExtendLatent",
            display_name="Wan2.2 Extend Latent",
            category=CATEGORY,
            description="Encodes the last overlap_frames of a clip with the VAE as the first latent frames of a new "
                        "clip of `length` frames and marks them kept (noise_mask 0): the sampler (denoise 1) feeds "
                        "them noised to each step's sigma and generates the rest as their continuation.",
            inputs=[
                WanMoEVAEType.Input("vae", tooltip="From the Wan2.1 VAE Loader."),
                io.Image.Input("images", tooltip="The clip to continue (its last frames start the new clip)."),
                io.Int.Input("overlap_frames", default=CONTINUE_FRAMES, min=1, max=1025, step=4,
                             tooltip="Last frames carried over, 4n+1 (17 = 5 latent frames, about a second)."),
                io.Int.Input("length", default=FRAMES, min=5, max=1025, step=4,
                             tooltip="Frames of the new clip including the carried-over ones, 4n+1; it adds "
                                     "length - overlap_frames frames."),
            ],
            outputs=[io.Latent.Output()],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, overlap_frames: int, length: int) -> bool | str:
        return api.extend_problem(overlap_frames, length) or True

    @classmethod
    def execute(cls, vae: api.VAERequest, images, overlap_frames: int, length: int) -> io.NodeOutput:
        latent = api.extend_latent(vae, images, overlap=overlap_frames, length=length, device=compute_device(),
                                   on_frame=frame_progress(cls.hidden.unique_id))
        return io.NodeOutput(latent)


class WanMoEExtendJoin(io.ComfyNode):
    """The previous clip followed by the continuation's new frames, colours matched across the join."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WanMoEExtendJoin",
            display_name="Wan2.2 Extend Join",
            category=CATEGORY,
            description="Appends the new clip's frames after its first overlap_frames (which re-render the previous "
                        "clip's last frames, so the originals are kept). Colour match gives the new frames the colour "
                        "statistics that map the re-rendered overlap onto the original.",
            inputs=[
                io.Image.Input("previous", tooltip="The clip that was continued."),
                io.Image.Input("new", tooltip="The decoded continuation (from Wan2.2 Extend Latent -> sampler -> decode)."),
                io.Int.Input("overlap_frames", default=CONTINUE_FRAMES, min=0, max=1025,
                             tooltip="The same overlap_frames as in Wan2.2 Extend Latent."),
                io.Boolean.Input("color_match", default=True,
                                 tooltip="Match the new frames' colours to the previous clip (measured on the overlap)."),
            ],
            outputs=[io.Image.Output(tooltip="previous + the new frames: previous frames + length - overlap_frames.")],
        )

    @classmethod
    def execute(cls, previous, new, overlap_frames: int, color_match: bool) -> io.NodeOutput:
        return io.NodeOutput(api.join_continuation(previous, new, overlap=overlap_frames, color_match=color_match))


NODES = [WanMoEContextWindows, WanMoEExtendLatent, WanMoEExtendJoin]
