"""WanMoESampler: one sampler for both experts, switching at the boundary step as the official loop does.
WanMoESchedule: a sigma grid as core SIGMAS, for core sigma nodes (SplitSigmas, ...) and the sampler's `sigmas`."""

from __future__ import annotations

import logging

from .api_version import io

from ..wan_core import api
from ..wan_core.config import GUIDE_HIGH, GUIDE_LOW, SCHEDULES, SHIFT, SOLVERS, STEPS, SWITCH_MODES

from .comfy_bridge import StepProgress, check_cancel, compute_device
from .comfy_models import ComfyModelPair, expert_source
from .queue_checks import refusal_in
from .sockets import WanMoEModelType, WanMoEWindowsType
from .values import widget_problem

CATEGORY = "WanMoE"
STEP_CACHE_OFF = ("step_cache {:g} not applied: it needs the pack's own DiT (Wan2.2 MoE Model Loader); models from "
                  "WanMoEModelFromComfy compute every step")
log = logging.getLogger("ComfyUI-WanMoE")
SCHEDULE_TOOLTIP = ("Sigma grid. official: the sampler's own (unipc: linspace(0.999, 0) shifted, t 999..; dpm++ / "
                    "euler: linspace(1, 0) shifted, t 1000..); unipc_grid / dpm_grid: either one with any sampler; "
                    "simple / beta: ComfyUI's schedulers of those names at this shift (as ModelSamplingSD3 + "
                    "BasicScheduler).")


def _schedule_input(optional: bool) -> io.Combo.Input:
    """The sigma-grid choice, shared by the sampler and the schedule node."""
    return io.Combo.Input("schedule", options=list(SCHEDULES), default="official", optional=optional,
                          tooltip=SCHEDULE_TOOLTIP)


class WanMoESampler(io.ComfyNode):
    """Denoises with the high-noise expert while t >= boundary and the low-noise expert after, each with its own cfg."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WanMoESampler",
            display_name="Wan2.2 MoE Sampler",
            category=CATEGORY,
            description="Runs both experts in one sampler: the expert is chosen per step from the timestep and the "
                        "model's boundary (official: high-noise for t >= 875). Shows which steps ran on which expert.",
            inputs=[
                WanMoEModelType.Input("model", tooltip="From the Wan2.2 MoE Model Loader, or Wan2.2 MoE Model from "
                                                       "MODELs (core/GGUF loaders, LoRA and patch nodes)."),
                io.Conditioning.Input("positive", tooltip="Prompt conditioning (Wan2.2 Text Encode, or core "
                                                         "CLIPTextEncode with a CLIPLoader of type wan)."),
                io.Conditioning.Input("negative", tooltip="Negative prompt conditioning."),
                io.Latent.Input("latent", tooltip="An empty video latent, or an encoded video with denoise < 1."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed. Noise is drawn on the CPU, so a seed gives the same video on any machine."),
                io.Int.Input("steps", default=STEPS, min=1, max=200, tooltip="Sampling steps (official: 40)."),
                io.Float.Input("cfg_high", default=GUIDE_HIGH, min=1.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Guidance of the high-noise expert (official: 4.0). 1.0 skips the negative pass."),
                io.Float.Input("cfg_low", default=GUIDE_LOW, min=1.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Guidance of the low-noise expert (official: 3.0). 1.0 skips the negative pass."),
                io.Float.Input("shift", default=SHIFT, min=0.1, max=100.0, step=0.1,
                               tooltip="Flow-matching timestep shift (official T2V-A14B: 12.0). Higher spends more "
                                       "steps at high noise."),
                io.Combo.Input("sampler", options=list(SOLVERS), default="unipc",
                               tooltip="unipc: the official flow UniPC (default); dpm++: the official flow DPM++ 2M; "
                                       "euler: first-order flow Euler."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="1.0 generates from noise. Below 1 the input latent is partly noised and only "
                                       "the last steps run (video-to-video, or a low-noise refine pass)."),
                io.Float.Input("step_cache", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Step caching threshold (0 = off). Steps whose predicted change is small reuse "
                                       "the last transformer residual instead of running the blocks: 0.05-0.1 skips "
                                       "about a third of a 40-step run. Off below 10 steps and at each expert's first "
                                       "two steps; the summary says how many steps were skipped. Models from Wan2.2 MoE "
                                       "Model from MODELs run every step."),
                _schedule_input(optional=True),
                io.Combo.Input("switch", options=list(SWITCH_MODES), default="boundary", optional=True,
                               tooltip="Where the high-noise expert hands over. boundary: while t >= the model "
                                       "loader's boundary x 1000 (official); step: the first switch_step steps."),
                io.Int.Input("switch_step", default=20, min=0, max=200, optional=True,
                             tooltip="With switch = step: how many steps (of the full schedule) run on the high-noise "
                                     "expert; the rest run on the low-noise one (per-expert step counts)."),
                io.Sigmas.Input("sigmas", optional=True,
                                tooltip="Custom sigmas (core SIGMAS: BasicScheduler, BetaSamplingScheduler, SplitSigmas' "
                                        "low_sigmas, Wan2.2 MoE Schedule ...): n+1 decreasing values ending at 0. "
                                        "Replace steps, shift and schedule; denoise still cuts them."),
                WanMoEWindowsType.Input("windows", optional=True,
                                        tooltip="Context windows (Wan2.2 Context Windows) for videos longer than the "
                                                "model's 81 frames; a positive CONDITIONING of several entries (Wan2.2 "
                                                "Prompt Travel, ConditioningCombine) is then a prompt per window group."),
            ],
            outputs=[io.Latent.Output()],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, **values) -> bool | str:
        return refusal_in(values) or widget_problem(cls, values) or True

    @classmethod
    def execute(cls, model: api.ModelRequest | ComfyModelPair, positive: list, negative: list, latent: dict, seed: int,
                steps: int, cfg_high: float, cfg_low: float, shift: float, sampler: str, denoise: float,
                step_cache: float = 0.0, schedule: str = "official", switch: str = "boundary", switch_step: int = 20,
                sigmas=None, windows: api.ContextWindows | None = None) -> io.NodeOutput:
        plan = api.plan_sampling(model, steps=steps, shift=shift, solver=sampler, denoise=denoise, cfg_high=cfg_high,
                                 cfg_low=cfg_low, schedule=schedule, sigmas=sigmas, switch=switch,
                                 switch_step=switch_step)
        log.info("WanMoESampler: %s", plan.summary())
        progress = StepProgress(len(plan.timesteps), node_id=cls.hidden.unique_id)
        run = dict(positive=positive, negative=negative, latent=latent, seed=seed, device=compute_device(),
                   callback=progress, check_cancel=check_cancel, windows=windows)
        experts = expert_source(model)  # ComfyUI's own MODELs, or None: our files through the shared cache
        if experts is None:
            result = api.sample(model, plan, step_cache=step_cache, **run)
            return io.NodeOutput(result.latent, ui={"text": [result.summary]})
        result = api.sample_with(experts, plan, **run)  # no step_cache: it needs our DiT's forward stages
        notice = [STEP_CACHE_OFF.format(step_cache)] if step_cache else []
        for line in notice:
            log.warning("WanMoESampler: %s", line)
        return io.NodeOutput(result.latent, ui={"text": ["\n".join([result.summary, *notice])]})


class WanMoESchedule(io.ComfyNode):
    """The sampler's sigma grid as core SIGMAS, to edit or split with core sigma nodes and feed back as `sigmas`."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WanMoESchedule",
            display_name="Wan2.2 MoE Schedule",
            category=CATEGORY,
            description="Outputs the sigmas Wan2.2 MoE Sampler would run (with the final 0), in float64 so that fed "
                        "back into its `sigmas` input the run is the built-in one bit for bit.",
            inputs=[
                io.Int.Input("steps", default=STEPS, min=1, max=200, tooltip="Sampling steps (official: 40)."),
                io.Float.Input("shift", default=SHIFT, min=0.1, max=100.0, step=0.1,
                               tooltip="Flow-matching timestep shift (official T2V-A14B: 12.0)."),
                io.Combo.Input("sampler", options=list(SOLVERS), default="unipc",
                               tooltip="The sampler whose official grid `official` means (unipc or dpm++/euler)."),
                _schedule_input(optional=False),
            ],
            outputs=[io.Sigmas.Output()],
        )

    @classmethod
    def execute(cls, steps: int, shift: float, sampler: str, schedule: str) -> io.NodeOutput:
        return io.NodeOutput(api.schedule_sigmas(steps, shift, sampler, schedule))


NODES = [WanMoESampler, WanMoESchedule]
