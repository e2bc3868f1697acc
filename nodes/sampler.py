"""WanMoESampler: one sampler for both experts, switching at the boundary step as the official loop does."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ..wan_core.vae import latent_format

from ..wan_core import api as models
from ..wan_core.config import GUIDE_HIGH, GUIDE_LOW, SHIFT, STEPS, TEXT_LEN

from .comfy_bridge import StepProgress, check_cancel, compute_device
from .handles import ModelHandle, WanMoEModelType

CATEGORY = "WanMoE"
SOLVERS = ["unipc", "dpm++", "euler"]
log = logging.getLogger("ComfyUI-WanMoE")


# Keys core conditioning nodes add that change how a prompt applies (area, mask, timestep range, hooks); this
# sampler reads only the text tensor, so they are reported instead of silently doing nothing.
_UNHONOURED_KEYS = ("area", "mask", "strength", "start_percent", "end_percent", "hooks", "set_area_to_bounds")


def conditioning_embeddings(conditioning: list, label: str) -> list:
    """The text embedding of each batch item from a CONDITIONING ([[cond [B, L, 4096], {...}], ...]).

    The Wan2.2 DiT reads TEXT_LEN (512) tokens. Core CLIPTextEncode does not truncate long prompts and
    ConditioningConcat joins two 512-token contexts, so longer contexts are cut to 512 tokens: exact when the
    rows beyond are zero padding, otherwise those tokens are dropped with a warning (the official code truncates
    the prompt to 512 tokens too).
    """
    if not conditioning:
        raise ValueError(f"the {label} conditioning is empty; connect a Wan2.2 Text Encode or CLIPTextEncode (type wan)")
    if len(conditioning) > 1:
        log.warning("WanMoESampler: the %s conditioning has %d entries; only the first is used (combine prompts "
                    "in one text instead)", label, len(conditioning))
    cond, extra = conditioning[0][0], conditioning[0][1] if len(conditioning[0]) > 1 else {}
    if cond.ndim != 3:
        raise ValueError(f"the {label} conditioning has shape {tuple(cond.shape)}; expected [batch, tokens, 4096] "
                         "from umT5-XXL (a Wan text encoder)")
    ignored = [k for k in _UNHONOURED_KEYS if isinstance(extra, dict) and extra.get(k) is not None]
    if ignored:
        log.warning("WanMoESampler: the %s conditioning sets %s; this sampler applies the prompt to the whole video "
                    "at every step and ignores them", label, ", ".join(ignored))
    if cond.shape[1] > TEXT_LEN:
        tail = cond[:, TEXT_LEN:]
        dropped = int((tail != 0).any(dim=-1).sum(dim=-1).max())
        if dropped:
            log.warning("WanMoESampler: the %s conditioning has %d tokens; Wan2.2 reads %d, so %d non-padding token(s) "
                        "after token %d are dropped (a prompt longer than 512 umT5 tokens, or ConditioningConcat)",
                        label, cond.shape[1], TEXT_LEN, dropped, TEXT_LEN)
        cond = cond[:, :TEXT_LEN]
    return list(cond.unbind(0))


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
                WanMoEModelType.Input("model", tooltip="From the Wan2.2 MoE Model Loader."),
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
                io.Combo.Input("sampler", options=SOLVERS, default="unipc",
                               tooltip="unipc: the official flow UniPC (default); dpm++: the official flow DPM++ 2M; "
                                       "euler: first-order flow Euler."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="1.0 generates from noise. Below 1 the input latent is partly noised and only "
                                       "the last steps run (video-to-video, or a low-noise refine pass)."),
            ],
            outputs=[io.Latent.Output()],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model: ModelHandle, positive: list, negative: list, latent: dict, seed: int, steps: int,
                cfg_high: float, cfg_low: float, shift: float, sampler: str, denoise: float) -> io.NodeOutput:
        samples = latent["samples"]
        if samples.ndim != 5 or samples.shape[1] != 16:
            raise ValueError(f"the latent has shape {tuple(samples.shape)}; expected a Wan2.1 video latent "
                             "[batch, 16, frames, height/8, width/8] (Wan2.2 Empty Video Latent or a Wan VAE encode)")
        schedule = models.schedule_for(steps=steps, shift=shift, solver=sampler, boundary=model.boundary, denoise=denoise,
                                       cfg_high=cfg_high, cfg_low=cfg_low)
        log.info("WanMoESampler: %s", schedule.summary())
        progress = StepProgress(len(schedule.timesteps), node_id=cls.hidden.unique_id)
        result = models.sample(
            model, positive=conditioning_embeddings(positive, "positive"),
            negative=conditioning_embeddings(negative, "negative"),
            latent=latent_format.normalize(samples), seed=seed, schedule=schedule, device=compute_device(),
            callback=progress, check_cancel=check_cancel,
        )
        out = dict(latent)
        out["samples"] = latent_format.denormalize(result).to(samples.device)
        out.pop("noise_mask", None)
        return io.NodeOutput(out, ui={"text": [schedule.summary()]})


NODES = [WanMoESampler]
