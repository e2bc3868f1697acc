"""WanMoEModelFromComfy: two of ComfyUI's own Wan MODELs as the MoE sampler's experts.

A MODEL from core `UNETLoader`, ComfyUI-GGUF's `UnetLoaderGGUF`, `LoraLoaderModelOnly` or any patch node is a
ModelPatcher; this module makes it look like the engine's `Expert` (wan_core/sampling/experts.py). Each run
prepares it the way ComfyUI's own sampler does (its wrappers and callbacks into the options,
`sampler_helpers.prepare_sampling` -> `load_models_gpu`, `pre_run`, and `cleanup` at the end), so ComfyUI's
model management keeps its memory, LoRA weight patches apply, and patch nodes' transformer options
(attention overrides, block patches, diffusion-model wrappers) reach the forward. Each step calls
`BaseModel.apply_model` with sigma = t / 1000 and a wrapper that gives the DiT the official integer timestep and
keeps its raw velocity (wan_core/interop/comfy_dit.py says why).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import comfy.model_base
import comfy.model_patcher
import comfy.patcher_extension as extension
import comfy.sampler_helpers as helpers

from ..wan_core import api
from ..wan_core.config import TEXT_LEN

from .api_version import io
from .sockets import WanMoEModelType, boundary_input

CATEGORY = "WanMoE"
TEXT_DIM = 4096  # umT5-XXL
WRAPPER_KEY = "wanmoe_official_timestep"
# model_options entries patch nodes set for ComfyUI's own sampling loop (CFG functions, the model call wrapper);
# our sampler has its own schedule and guidance, so they do not apply and the user is told.
SAMPLING_OPTIONS = ("model_function_wrapper", "sampler_cfg_function", "sampler_pre_cfg_function",
                    "sampler_post_cfg_function", "disable_cfg1_optimization")
log = logging.getLogger("ComfyUI-WanMoE")


@dataclass(frozen=True, eq=False)
class ComfyModelPair:
    """WANMOE_MODEL made of two ComfyUI MODELs (ModelPatchers) and the expert switch point."""

    high: object
    low: object
    boundary: float


def wan_t2v_problem(patcher: object, label: str) -> str | None:
    """Why `patcher` cannot be a Wan text-to-video expert (for the user), or None when it can."""
    model = getattr(patcher, "model", None)
    if type(model) is not comfy.model_base.WAN21:
        kind = type(model).__name__ if model is not None else type(patcher).__name__
        return (f"the {label} MODEL is a {kind} model; WanMoEModelFromComfy takes Wan2.2/2.1 text-to-video DiT models "
                "such as wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors from Load Diffusion Model (UNETLoader) or "
                "Unet Loader (GGUF), optionally through LoRA or patch nodes (image-to-video, VACE and the 5B model "
                "need inputs this sampler does not give)")
    dm = model.diffusion_model
    if (dm.in_dim, dm.out_dim) != (16, 16) or model.model_type != comfy.model_base.ModelType.FLOW:
        return (f"the {label} MODEL is a Wan model with {dm.in_dim} input / {dm.out_dim} output channels "
                f"({model.model_type.name}); the text-to-video A14B experts have 16 / 16 and flow prediction")
    return None


def ignored_sampling_options(patcher: object) -> list[str]:
    """The model_options entries of `patcher` that only ComfyUI's own sampling loop reads."""
    options = getattr(patcher, "model_options", {}) or {}
    return [name for name in SAMPLING_OPTIONS if options.get(name) is not None]


class ComfyExpert:
    """One ComfyUI Wan MODEL callable as the sampler's Expert: raw velocity for the official integer timestep."""

    def __init__(self, patcher: object, label: str) -> None:
        self.patcher, self.label = patcher, label
        dm = patcher.model.diffusion_model
        self.config = api.DiTConfig(dim=dm.dim, ffn_dim=dm.ffn_dim, num_heads=dm.num_heads,
                                       num_layers=dm.num_layers, in_dim=dm.in_dim, out_dim=dm.out_dim,
                                       freq_dim=dm.freq_dim, text_len=TEXT_LEN, patch_size=tuple(dm.patch_size))
        self.model_options: dict | None = None
        self._additional: list = []

    def prepare(self, noise_shape: tuple[int, ...]) -> None:
        """What ComfyUI's sampler does before its loop: options with the patcher's wrappers, load, pre_run."""
        if self.model_options is not None:
            return
        options = comfy.model_patcher.create_model_options_clone(self.patcher.model_options)
        options.setdefault("transformer_options", {})
        helpers.prepare_model_patcher(self.patcher, {}, options)
        _, _, self._additional = helpers.prepare_sampling(self.patcher, list(noise_shape), {}, options)
        self.patcher.pre_run()
        self.model_options = options

    def cleanup(self) -> None:
        """What ComfyUI's sampler does after its loop (the weights stay wherever model management keeps them)."""
        if self.model_options is None:
            return
        self.model_options = None
        try:
            self.patcher.cleanup()
        finally:
            helpers.cleanup_models({}, self._additional)
            self._additional = []

    def __call__(self, x, t, context, *, before_block: Callable[[int], None] | None = None):
        self.prepare(tuple(x.shape))
        step = api.comfy_step_inputs(x, t, context, text_len=TEXT_LEN, text_dim=TEXT_DIM,
                                        device=self.patcher.load_device)
        outputs: list = []
        options = self._transformer_options(step, outputs, before_block)
        denoised = self.patcher.model.apply_model(step.x, step.sigma, c_crossattn=step.context,
                                                  transformer_options=options)
        if not outputs:  # an apply_model wrapper answered without running the DiT (a step cache)
            return api.velocity_from_denoised(step, denoised, like=x)
        return api.velocity_of(outputs[-1], like=x)

    def _transformer_options(self, step, outputs: list, before_block: Callable[[int], None] | None) -> dict:
        """The patcher's transformer options for one call, plus ours: the official timestep, block-level Cancel."""
        options = extension.copy_nested_dicts(self.model_options.get("transformer_options", {}))
        options["sigmas"] = step.sigma

        def official_timestep(executor, x, timestep, *args, **kwargs):
            exact = step.timestep if tuple(timestep.shape) == tuple(step.timestep.shape) else timestep
            out = executor(x, exact, *args, **kwargs)
            outputs.append(out)
            return out

        wrappers = options.setdefault("wrappers", {})
        # First in the list = outermost: inner wrappers (other packs') see the official timestep too.
        wrappers[extension.WrappersMP.DIFFUSION_MODEL] = {
            WRAPPER_KEY: [official_timestep], **wrappers.get(extension.WrappersMP.DIFFUSION_MODEL, {})}
        if before_block is not None:
            blocks = options.setdefault("patches_replace", {}).setdefault("dit", {})
            for i in range(self.config.num_layers):
                blocks.setdefault(("double_block", i), _checked_block(i, before_block))
        return options


def _checked_block(index: int, before_block: Callable[[int], None]):
    """A Wan block replacement that runs `before_block(index)` (the Cancel check), then the block itself."""

    def block(args: dict, extra: dict) -> dict:
        before_block(index)
        return extra["original_block"](args)

    return block


class ComfyExperts:
    """The sampler's ExpertSource for a ComfyModelPair; ComfyUI's model management decides where weights live."""

    def __init__(self, pair: ComfyModelPair) -> None:
        self._experts = {"high": ComfyExpert(pair.high, "high_noise"), "low": ComfyExpert(pair.low, "low_noise")}
        self._current: str | None = None

    def expert(self, name: str) -> ComfyExpert:
        if name not in self._experts:
            raise ValueError(f"unknown expert '{name}'; expected one of {tuple(self._experts)}")
        if self._current is not None and self._current != name:
            self._experts[self._current].cleanup()  # the switch: ComfyUI may now unload it to load the other
        self._current = name
        return self._experts[name]

    def release(self) -> None:
        for expert in self._experts.values():
            expert.cleanup()
        self._current = None


class WanMoEModelFromComfy(io.ComfyNode):
    """Two core MODELs (high-noise, low-noise Wan2.2 experts) as one WANMOE_MODEL for the MoE sampler."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WanMoEModelFromComfy",
            display_name="Wan2.2 MoE Model from MODELs",
            category=CATEGORY,
            description="Lets the Wan2.2 MoE Sampler drive models loaded by core or other packs (Load Diffusion "
                        "Model, Unet Loader (GGUF), LoRA and patch nodes) with the official schedule and expert "
                        "switch. ComfyUI's model management keeps their memory.",
            inputs=[
                io.Model.Input("high_noise_model", tooltip="The high-noise expert as a core MODEL (runs while t >= "
                                                           "boundary x 1000), e.g. Load Diffusion Model with "
                                                           "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors."),
                io.Model.Input("low_noise_model", tooltip="The low-noise expert as a core MODEL (runs below the "
                                                          "boundary), e.g. wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors."),
                boundary_input(),
            ],
            outputs=[WanMoEModelType.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, high_noise_model: object, low_noise_model: object, boundary: float) -> io.NodeOutput:
        for patcher, label in ((high_noise_model, "high_noise"), (low_noise_model, "low_noise")):
            problem = wan_t2v_problem(patcher, label)
            if problem:
                raise ValueError(problem)
            ignored = ignored_sampling_options(patcher)
            if ignored:
                log.warning("WanMoEModelFromComfy: the %s MODEL sets %s (patch nodes for ComfyUI's own sampler); the "
                            "MoE sampler uses its own schedule and guidance and does not apply them",
                            label, ", ".join(ignored))
        return io.NodeOutput(ComfyModelPair(high_noise_model, low_noise_model, float(boundary)))


def expert_source(model: object) -> ComfyExperts | None:
    """The ExpertSource for a WANMOE_MODEL made by WanMoEModelFromComfy, or None for one naming our own files."""
    return ComfyExperts(model) if isinstance(model, ComfyModelPair) else None


NODES = [WanMoEModelFromComfy]
