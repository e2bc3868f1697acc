"""WanMoETextEncode: prompts -> standard CONDITIONING, interchangeable with core CLIPLoader(type=wan) + CLIPTextEncode."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ..wan_core import api as models
from ..wan_core.config import NEGATIVE_PROMPT
from ..wan_core.text.encoder import comfy_context

from .comfy_bridge import compute_device
from .handles import TextEncoderHandle, WanMoETextEncoderType

CATEGORY = "WanMoE"
log = logging.getLogger("ComfyUI-WanMoE")


def to_conditioning(embedding) -> list:
    """Core's CONDITIONING layout for umT5: [[cond [1, 512, 4096] with zeroed padding, {"pooled_output": None}]]."""
    return [[comfy_context(embedding), {"pooled_output": None}]]


class WanMoETextEncode(io.ComfyNode):
    """Encodes the positive and negative prompts with umT5-XXL (cached per prompt, so re-runs skip the encoder)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WanMoETextEncode",
            display_name="Wan2.2 Text Encode",
            category=CATEGORY,
            description="Encodes both prompts. Results are cached by encoder file, precision and cleaned prompt, so "
                        "running the same prompt again does not load or run the encoder.",
            inputs=[
                WanMoETextEncoderType.Input("text_encoder", tooltip="From the Wan2.2 Text Encoder Loader."),
                io.String.Input("positive", multiline=True, default="", dynamic_prompts=True,
                                tooltip="What the video shows. Cleaned as the official code does (HTML entities, "
                                        "mojibake, whitespace); at most 512 tokens, the rest is dropped with a warning."),
                io.String.Input("negative", multiline=True, default=NEGATIVE_PROMPT, dynamic_prompts=True,
                                tooltip="What to steer away from. Left empty, the official default negative prompt is "
                                        "used, as the official code does."),
            ],
            outputs=[io.Conditioning.Output(display_name="positive"), io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def execute(cls, text_encoder: TextEncoderHandle, positive: str, negative: str) -> io.NodeOutput:
        negative = negative if negative.strip() else NEGATIVE_PROMPT
        result = models.encode_prompts(text_encoder.path, [positive, negative], device=text_encoder.device,
                                       dtype=text_encoder.dtype, compute_device=compute_device())
        for label, dropped in zip(("positive", "negative"), result.dropped):
            if dropped:
                log.warning("WanMoETextEncode: the %s prompt is longer than 512 tokens; %d tokens were dropped", label, dropped)
        pos, neg = result.embeddings
        return io.NodeOutput(to_conditioning(pos), to_conditioning(neg))


NODES = [WanMoETextEncode]
