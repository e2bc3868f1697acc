"""Queue-time checks of values that reach the sampler through links, which ComfyUI's validation cannot see.

ComfyUI validates a node with its widget values only: an input linked from another node is None there. So the
sampler alone cannot tell at validation that the context windows are longer than the video, that a prompt list has
more prompts than windows, or that a FlipSigmas / high_sigmas chain gives sigmas it cannot run. This module reads
the whole prompt when it is queued (ComfyUI's on_prompt hook, before validation), follows each WanMoESampler's links
to nodes whose outputs follow from their widgets alone, and asks the engine the same questions the sampler asks
when it starts. A refused input's link is replaced by a `QueueRefusal` carrying the engine's message, which the
sampler's validate_inputs returns, so the prompt is refused at queue time under that input, as a widget value
would be. Anything that depends on a node this module does not know is left to the check when the sampler runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..wan_core import api

from .text import prompt_lines

log = logging.getLogger("ComfyUI-WanMoE")
SAMPLER = "WanMoESampler"
# LATENT producers whose frame count is their `length` widget (4n+1 pixel frames).
LENGTH_LATENTS = ("WanMoEEmptyLatent", "WanMoEExtendLatent", "EmptyHunyuanLatentVideo", "Wan22ImageToVideoLatent")
LATENT_PASSTHROUGH = {"SetLatentNoiseMask": "samples"}  # nodes that keep the frames of this input
PROMPT_ENCODERS = ("WanMoETextEncode", "CLIPTextEncode")  # one CONDITIONING entry each
# Core sigma makers: decreasing, ending at 0; steps + 1 of them except where equal values are merged (beta, and
# ddim_uniform's rounding), so only their order is known there.
SCHEDULERS = ("BasicScheduler", "BetaSamplingScheduler")
MERGING = ("beta", "ddim_uniform")
MAX_DEPTH = 32  # links followed upstream of a sampler (a prompt may hold cycles until validation refuses them)
MOST = 10_000  # above any frame, step or window count a node allows: larger values are left to validation


class QueueRefusal(str):
    """The engine's refusal of a linked input, put in place of the link for the node's validate_inputs to return."""


def refusal_in(values: dict[str, Any]) -> str | None:
    """The first QueueRefusal among a node's input values, if any."""
    return next((str(v) for v in values.values() if isinstance(v, QueueRefusal)), None)


@dataclass(frozen=True)
class StaticSigmas:
    """Sigmas known before the run: exact values, or a stand-in with their order (`exact` False) and, where
    `counted`, their length."""

    values: tuple[float, ...]
    exact: bool
    counted: bool
    source: str


class _Graph:
    """A queued prompt (API format: node id -> class_type and inputs, links as [node id, output index])."""

    def __init__(self, prompt: dict) -> None:
        self.prompt = prompt

    def source(self, value: Any) -> tuple[str, dict, int] | None:
        """The node a link points to: (id, node, output index), or None for a constant or a dangling link."""
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)):
            return None
        node = self.prompt.get(str(value[0]))
        return (str(value[0]), node, value[1]) if isinstance(node, dict) else None

    def producer(self, value: Any, depth: int) -> tuple[str, dict, int, str] | None:
        """(id, node, output index, class_type) of the node a link points to, within MAX_DEPTH links of the sampler."""
        found = self.source(value) if depth <= MAX_DEPTH else None
        return None if found is None else (*found, found[1].get("class_type"))

    def widgets(self, node: dict, *names: str) -> tuple | None:
        """These widget values of a node, or None when any of them is linked or missing."""
        inputs = node.get("inputs", {})
        values = tuple(inputs.get(n) for n in names)
        return None if any(v is None or isinstance(v, list) for v in values) else values

    def latent_frames(self, value: Any, depth: int = 0) -> int | None:
        """Latent frames of a linked LATENT, when its producer says them."""
        found = self.producer(value, depth)
        if found is None:
            return None
        _, node, _, kind = found
        if kind in LATENT_PASSTHROUGH:
            return self.latent_frames(node.get("inputs", {}).get(LATENT_PASSTHROUGH[kind]), depth + 1)
        length = self.widgets(node, "length") if kind in LENGTH_LATENTS else None
        if not length or not _whole(length[0]):
            return None
        try:
            return api.latent_frames(int(length[0]))
        except ValueError:
            return None  # not 4n+1: the latent node's own validation says so

    def windows(self, value: Any) -> api.ContextWindows | None:
        """The context windows of a linked WanMoEContextWindows."""
        found = self.source(value)
        if found is None or found[1].get("class_type") != "WanMoEContextWindows":
            return None
        settings = self.widgets(found[1], "window_frames", "overlap_frames", "fuse")
        if settings is None or not (_whole(settings[0]) and _whole(settings[1])):
            return None
        try:
            return api.ContextWindows(int(settings[0]), int(settings[1]), str(settings[2]))
        except ValueError:
            return None  # the windows node's own validation refuses it

    def prompt_count(self, value: Any, depth: int = 0) -> int | None:
        """CONDITIONING entries of a linked positive (prompt travel: one per prompt line)."""
        found = self.producer(value, depth)
        if found is None:
            return None
        _, node, _, kind = found
        if kind in PROMPT_ENCODERS:
            return 1
        if kind == "WanMoEPromptTravel":
            text = self.widgets(node, "prompts")
            return len(prompt_lines(str(text[0]))) if text else None
        if kind == "ConditioningCombine":
            parts = [self.prompt_count(node.get("inputs", {}).get(k), depth + 1) for k in ("conditioning_1",
                                                                                           "conditioning_2")]
            return None if None in parts else sum(parts)
        return None

    def sigmas(self, value: Any, depth: int = 0) -> StaticSigmas | None:
        """Linked SIGMAS, through our schedule node, core schedulers and core FlipSigmas / SplitSigmas."""
        found = self.producer(value, depth)
        if found is None:
            return None
        node_id, node, output, kind = found
        inputs = node.get("inputs", {})
        named = f"{kind} (node {node_id})"
        if kind == "WanMoESchedule":
            settings = self.widgets(node, "steps", "shift", "sampler", "schedule")
            if settings is None or not _whole(settings[0], 200) or not isinstance(settings[1], (int, float)):
                return None
            try:
                grid = api.schedule_sigmas(int(settings[0]), float(settings[1]), str(settings[2]), str(settings[3]))
            except ValueError:
                return None  # the schedule node's own validation refuses these values
            return StaticSigmas(tuple(float(v) for v in grid), True, True, named)
        if kind in SCHEDULERS:
            steps = self.widgets(node, "steps")
            denoise = self.widgets(node, "denoise") if "denoise" in inputs else (1.0,)
            if steps is None or denoise is None or not _whole(steps[0]) or not isinstance(denoise[0], (int, float)):
                return None
            count = int(steps[0]) + 1 if float(denoise[0]) > 0 else 0
            counted = kind == "BasicScheduler" and inputs.get("scheduler") not in MERGING
            return StaticSigmas(tuple((count - 1 - i) / max(count - 1, 1) for i in range(count)), False, counted,
                                named)
        upstream = self.sigmas(inputs.get("sigmas"), depth + 1) if kind in ("FlipSigmas", "SplitSigmas") else None
        if upstream is None:
            return None
        if kind == "FlipSigmas":
            flipped = list(reversed(upstream.values))
            if flipped and flipped[0] == 0:
                flipped[0] = 0.0001  # as core FlipSigmas
            return StaticSigmas(tuple(flipped), upstream.exact, upstream.counted, f"{named} of {upstream.source}")
        step = self.widgets(node, "step")
        if step is None or not _whole(step[0]) or not upstream.counted:
            return None
        part = upstream.values[:int(step[0]) + 1] if output == 0 else upstream.values[int(step[0]):]
        side = "high_sigmas" if output == 0 else "low_sigmas"
        return StaticSigmas(tuple(part), upstream.exact, True, f"{side} of {named} of {upstream.source}")


def _whole(value: Any, most: int = MOST) -> bool:
    """A widget int this module may compute with: the prompt is not validated yet, so its values are bounded here."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= most


def sampler_refusals(graph: _Graph, inputs: dict) -> dict[str, str]:
    """Input name -> the engine's refusal, for one sampler's linked inputs that can be judged before the run."""
    found: dict[str, str] = {}
    windows = graph.windows(inputs.get("windows"))
    frames = graph.latent_frames(inputs.get("latent"))
    if windows is not None and frames is not None:
        prompts = graph.prompt_count(inputs.get("positive")) or 1
        problem = api.windows_refusal(windows, frames, prompts)
        if problem:
            found["windows"] = problem
    sigmas = graph.sigmas(inputs.get("sigmas"))
    if sigmas is not None:
        problem = api.sigmas_problem(sigmas.values, None if sigmas.exact else sigmas.source)
        if problem:
            found["sigmas"] = problem
    return found


def check_prompt(json_data: dict) -> dict:
    """ComfyUI's on_prompt hook: mark each sampler input the engine would refuse (in place) and return the request."""
    prompt = json_data.get("prompt") if isinstance(json_data, dict) else None
    if not isinstance(prompt, dict):
        return json_data
    graph = _Graph(prompt)
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or node.get("class_type") != SAMPLER or not isinstance(node.get("inputs"), dict):
            continue
        try:
            refusals = sampler_refusals(graph, node["inputs"])
        except (ValueError, TypeError, OverflowError) as unusual:  # odd upstream values: validation judges them
            log.debug("WanMoESampler (node %s): no queue-time check (%s)", node_id, unusual)
            continue
        for name, message in refusals.items():
            log.info("WanMoESampler (node %s): refused at queue time: %s", node_id, message)
            node["inputs"][name] = QueueRefusal(message)
    return json_data


def register() -> bool:
    """Install check_prompt as a ComfyUI on_prompt handler (False where no server runs, e.g. a script)."""
    try:
        from server import PromptServer
    except ImportError:
        return False
    server = getattr(PromptServer, "instance", None)
    if server is None or not hasattr(server, "add_on_prompt_handler"):
        return False
    if check_prompt not in server.on_prompt_handlers:
        server.add_on_prompt_handler(check_prompt)
    return True
