"""Step caching for the MoE loop: skip a whole block-stack evaluation when its output is predicted to change little.

EasyCache-style (runtime-adaptive, no per-model coefficients): between two full evaluations of an expert the
ratio k = relative change of the blocks' output / relative change of their input is measured; at each later step
the blocks' input change, times k, is accumulated as the predicted output change, and while that stays under the
threshold the step reuses the last residual (blocks' output minus input) on the new input instead of running the
blocks. A full evaluation resets the accumulator. The state is per expert and starts over at the expert switch;
each expert's first `warmup` steps always run in full, and runs shorter than `min_steps` are never cached (a
4-step Lightning run has no step to spare). Each CFG pass (its own text context) keeps its own residual; the
decision is made once per step, from the patch-embedded latent, which both passes share.

The embedding, the head and the unpatchify always run: only `run_blocks` is skipped. Threshold 0 disables it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..dit.vace import VaceInput
from ..memory.buffers import kept_buffer

MIN_STEPS = 10
WARMUP = 2


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, in float32."""
    return float((a - b).float().norm() / b.float().norm().clamp_min(1e-12))


@dataclass
class _ExpertState:
    steps: int = 0  # steps this expert has taken in the current stretch
    prev_in: torch.Tensor | None = None  # blocks' input (first pass) at the previous step
    full_in: torch.Tensor | None = None  # ... and output at the last full evaluation
    full_out: torch.Tensor | None = None
    rate: float | None = None  # k: output change per input change, from the last two full evaluations
    accumulated: float = 0.0
    residuals: dict = field(default_factory=dict)  # pass key -> blocks' output minus input at the last full step


class StepCache:
    """Decides per step whether an expert's blocks run, and runs the expert accordingly (see module docstring)."""

    def __init__(self, threshold: float, total_steps: int, *, warmup: int = WARMUP, min_steps: int = MIN_STEPS) -> None:
        if not threshold >= 0.0 or threshold != threshold or threshold == float("inf"):
            raise ValueError(f"step cache threshold must be a finite number >= 0; got {threshold!r}")
        self.threshold, self.warmup = float(threshold), warmup
        self.enabled = threshold > 0 and total_steps >= min_steps
        self.skipped: list[int] = []  # step indices that reused the residual
        self._expert: str | None = None
        self._state = _ExpertState()
        self._step = -1
        self._skip: bool | None = None

    def begin_step(self, index: int, expert: str) -> None:
        """A new step of `expert`: its state starts over when the expert changed."""
        if expert != self._expert:
            self._expert, self._state = expert, _ExpertState()
        self._step, self._skip = index, None

    def end_run(self) -> None:
        """The run is over: drop the kept residuals and measures (the counters stay for the summary)."""
        self._expert, self._state = None, _ExpertState()

    def summary(self, total_steps: int) -> str:
        """One line for the sampler's summary box."""
        if not self.enabled:
            return ""
        return f"step cache (threshold {self.threshold:g}): skipped {len(self.skipped)} of {total_steps} steps"

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, context,
                 before_block: Callable[[int], None] | None = None, control: VaceInput | None = None) -> torch.Tensor:
        """The expert's velocity for (x, t, context), its blocks run or skipped as decided for this step.

        `control` (VACE hints) goes to the blocks; a residual is reused only under the same control (contexts and
        strengths), so switching a control on or off at a step runs that step in full."""
        if not self.enabled:
            return model(x, t, context, before_block=before_block,
                         **({"control": control} if control is not None else {}))
        if not all(hasattr(model, stage) for stage in ("embed", "run_blocks", "finish")):
            raise TypeError(f"step caching needs an expert with the WanDiT forward stages embed / run_blocks / finish; "
                            f"{type(model).__name__} has not (run it with step_cache 0)")
        state = model.embed(x, t, context)
        tokens = state.x
        key = tuple(id(c) for c in ((context,) if isinstance(context, torch.Tensor) else context))
        key += _control_key(control)
        expert = self._state
        first_pass = self._skip is None
        if first_pass:
            self._skip = self._decide(tokens)
        if self._skip and key in expert.residuals:
            state.x = tokens + expert.residuals[key]
            if first_pass:
                self.skipped.append(self._step)
        else:
            state.x = model.run_blocks(state, before_block, **({"control": control} if control is not None else {}))
            expert.residuals[key] = torch.sub(state.x, tokens, out=kept_buffer(expert.residuals.get(key), tokens))
            if first_pass:
                self._measure(tokens, state.x)
        if first_pass:
            expert.prev_in, expert.steps = _probe(tokens, expert.prev_in), expert.steps + 1
        return model.finish(state)

    def _decide(self, tokens: torch.Tensor) -> bool:
        """True when this step may reuse the residual: past warm-up and the predicted change under the threshold."""
        expert = self._state
        if expert.steps < self.warmup or expert.rate is None or expert.prev_in is None:
            return False
        expert.accumulated += expert.rate * _rel(tokens, expert.prev_in)
        if expert.accumulated < self.threshold:
            return True
        expert.accumulated = 0.0
        return False

    def _measure(self, tokens: torch.Tensor, out: torch.Tensor) -> None:
        """After a full evaluation: the output-per-input change rate since the previous full one."""
        expert = self._state
        if expert.full_in is not None:
            moved = _rel(tokens, expert.full_in)
            expert.rate = _rel(out, expert.full_out) / moved if moved > 0 else None
        expert.full_in, expert.full_out = _probe(tokens, expert.full_in), _probe(out, expert.full_out)
        expert.accumulated = 0.0


def _control_key(control: VaceInput | None) -> tuple:
    """What a residual computed under `control` depends on: its context tensors and strengths (() for none)."""
    if control is None:
        return ()
    return tuple(id(c) for c in control.contexts) + tuple(tuple(s.tolist()) for s in control.strengths)


def _probe(x: torch.Tensor, kept: torch.Tensor | None = None) -> torch.Tensor:
    """A bf16 copy of a token stream for the change measures, into `kept` when it fits (memory.buffers): only norms
    of differences are taken from it, and a 0.4% relative precision is plenty for a heuristic that halves what the
    cache holds besides the residuals."""
    return kept_buffer(kept, x, torch.bfloat16).copy_(x)
