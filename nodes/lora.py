"""WanMoELoraLoader: a LoRA per expert (high-noise, low-noise), chained for stacks; applied when the sampler runs."""

from __future__ import annotations

from .api_version import io

from ..wan_core import api
from ..wan_core.config import NO_LORA

from .model_files import full_path, lora_choices, not_listed
from .sockets import WanMoEModelType

CATEGORY = "WanMoE"


class WanMoELoraLoader(io.ComfyNode):
    """Adds one LoRA to the high-noise expert and/or one to the low-noise expert, each at its own strength."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        choices = lora_choices()
        strength = dict(default=1.0, min=-10.0, max=10.0, step=0.01)
        return io.Schema(
            node_id="WanMoELoraLoader",
            display_name="Wan2.2 MoE LoRA Loader",
            category=CATEGORY,
            description="Applies a LoRA to each expert (either may be None). Chain several for a stack. Full-precision "
                        "experts get the LoRA merged into their weights; fp8 experts carry it as a run-time low-rank "
                        "term. Changing a strength later re-applies it without reading the expert again.",
            inputs=[
                WanMoEModelType.Input("model", tooltip="From the Wan2.2 MoE Model Loader or another LoRA loader."),
                io.Combo.Input("lora_high", options=choices, default=NO_LORA,
                               tooltip="LoRA for the high-noise expert, from models/loras (None: none). For the "
                                       "Lightning 4-step pair pick its ..._high_noise file here."),
                io.Float.Input("strength_high", **strength,
                               tooltip="Strength on the high-noise expert (1.0 as trained; negative subtracts it; "
                                       "0 applies nothing). The file's alpha / rank scaling is always applied."),
                io.Combo.Input("lora_low", options=choices, default=NO_LORA,
                               tooltip="LoRA for the low-noise expert (None: none). Many LoRAs are used on the "
                                       "low-noise expert alone."),
                io.Float.Input("strength_low", **strength, tooltip="Strength on the low-noise expert."),
            ],
            outputs=[WanMoEModelType.Output(display_name="model")],
        )

    @classmethod
    def validate_inputs(cls, lora_high: str, lora_low: str) -> bool | str:
        choices = lora_choices()
        for name in (lora_high, lora_low):
            message = None if name == NO_LORA else not_listed("loras", name, choices)
            if message:
                return message
        return True

    @classmethod
    def execute(cls, model: api.ModelRequest, lora_high: str, strength_high: float, lora_low: str,
                strength_low: float) -> io.NodeOutput:
        def request(name: str, strength: float) -> api.LoraRequest | None:
            return None if name == NO_LORA else api.LoraRequest(full_path("loras", name), strength, name)

        return io.NodeOutput(api.add_loras(model, high=request(lora_high, strength_high),
                                           low=request(lora_low, strength_low)))


NODES = [WanMoELoraLoader]
