"""WanMoETextEncode: prompts -> standard CONDITIONING, interchangeable with core CLIPLoader(type=wan) + CLIPTextEncode.
WanMoEPromptTravel: one prompt per line -> a CONDITIONING of one entry per prompt (context windows spread them)."""

from __future__ import annotations

import logging

from .api_version import io

from ..wan_core import api
from ..wan_core.config import NEGATIVE_PROMPT

from .comfy_bridge import compute_device
from .sockets import WanMoETextEncoderType
from .values import widget_problem

CATEGORY = "WanMoE"
log = logging.getLogger("ComfyUI-WanMoE")


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
    def validate_inputs(cls, **values) -> bool | str:
        return widget_problem(cls, values) or True

    @classmethod
    def execute(cls, text_encoder: api.TextEncoderRequest, positive: str, negative: str) -> io.NodeOutput:
        result = api.encode_prompts(text_encoder, positive, negative, compute_device=compute_device())
        for label, dropped in zip(("positive", "negative"), result.dropped):
            if dropped:
                log.warning("WanMoETextEncode: the %s prompt is longer than 512 tokens; %d tokens were dropped", label, dropped)
        return io.NodeOutput(result.positive, result.negative)


def prompt_lines(prompts: str) -> list[str]:
    """The prompts of a prompt-travel text: one per non-blank line, stripped."""
    return [line.strip() for line in prompts.splitlines() if line.strip()]


class WanMoEPromptTravel(io.ComfyNode):
    """A prompt list for context windows: window groups of a long video follow the prompts in order."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WanMoEPromptTravel",
            display_name="Wan2.2 Prompt Travel",
            category=CATEGORY,
            description="One prompt per line. With context windows on the sampler, P prompts over W windows give "
                        "window w the prompt floor(w x P / W): consecutive windows share a prompt, the first and last "
                        "prompts open and close the video. Needs at most as many prompts as windows.",
            inputs=[
                WanMoETextEncoderType.Input("text_encoder", tooltip="From the Wan2.2 Text Encoder Loader."),
                io.String.Input("prompts", multiline=True, default="", dynamic_prompts=True,
                                tooltip="One prompt per line, in the order the video should follow; blank lines are "
                                        "skipped. Each is cleaned and cut at 512 tokens like Wan2.2 Text Encode's."),
                io.String.Input("negative", multiline=True, default=NEGATIVE_PROMPT, dynamic_prompts=True,
                                tooltip="One negative prompt for every window (empty: the official default)."),
            ],
            outputs=[io.Conditioning.Output(display_name="positive"), io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def validate_inputs(cls, prompts: str) -> bool | str:
        return True if prompt_lines(prompts) else "prompts is empty: write one prompt per line"

    @classmethod
    def execute(cls, text_encoder: api.TextEncoderRequest, prompts: str, negative: str) -> io.NodeOutput:
        result = api.encode_prompts(text_encoder, prompt_lines(prompts), negative, compute_device=compute_device())
        if any(result.dropped):
            log.warning("WanMoEPromptTravel: a prompt is longer than 512 tokens; tokens beyond were dropped")
        return io.NodeOutput(result.positive, result.negative)


NODES = [WanMoETextEncode, WanMoEPromptTravel]
