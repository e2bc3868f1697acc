"""Where the two experts live during a run: the cache-backed ExpertSource and its placement policies.

  resident  both experts on the compute device for the whole run;
  swap      one expert on the device at a time, swapped at the boundary step; the idle one waits in RAM
            (pinned) when RAM allows, otherwise it is dropped and re-read from its file next time;
  stream    the active expert stays in RAM and its transformer blocks visit the device one at a time,
            the next block prefetched on a side CUDA stream (for devices that cannot hold one expert).

"auto" picks the first that fits from measured free memory and the cache's budgets; a requested policy
that cannot fit fails before anything loads, naming the one that would. The sampler calls
`expert(name)` at every step and `release()` in a finally: release leaves every entry unlocked and in the
policy's idle state (resident: on the device; swap: the last expert on the device; stream: in RAM, no
hooks), whatever happened during the run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

from ..config import PLACEMENTS, WEIGHT_DTYPES
from ..dit.loader import inspect_dit, load_dit
from ..dit.sizes import param_counts, stream_bytes_for, weight_bytes
from ..io.checkpoint import file_identity
from ..io.quant import FP8_DTYPES
from ..io.quant.fp8 import use_fp8_matmul
from ..lora import apply_stack, runtime_bytes
from ..memory.budget import NotEnoughMemoryError, gib, tier_of
from ..memory.cache import CacheKey, Loader, ModelCache, Reuse, get_cache
from .experts import EXPERT_NAMES

log = logging.getLogger("wan_core.sampling.placement")

STREAMED_BLOCKS = ("blocks", "vace_blocks")  # a DiT's block lists streamed under 'stream' (VACE blocks when present)
STREAM_FRACTION = 0.1  # device share of an expert while streaming when the spec does not say (A14B: ~6.6%)


@dataclass(frozen=True)
class ExpertSpec:
    """How to get one expert: its cache key, a loader `device -> module`, and its weight bytes.

    `configure(module)` runs each time the expert is activated, for settings that do not change its
    tensors and so are not in the key (the attention backend): entries stay shared across such settings.
    `reuse(module)` turns a cached entry of another variant of the same file (another LoRA stack) into this one.
    """

    key: CacheKey
    load: Loader
    size_bytes: int
    stream_bytes: int | None = None  # device bytes while streaming (non-block weights + two blocks)
    block_bytes: int = 0  # one transformer block's weights (for keeping blocks resident while streaming)
    configure: Callable[[nn.Module], None] | None = None
    reuse: Reuse | None = None

    def streaming_bytes(self) -> int:
        """Device bytes block streaming needs for this expert (the spec's, or an estimate)."""
        return self.stream_bytes if self.stream_bytes is not None else int(self.size_bytes * STREAM_FRACTION)


def dit_expert_spec(path: str | Path, *, device: torch.device | str, weight_dtype: str = "auto",
                    compute_dtype: torch.dtype | str | None = None, attention: str = "sdpa", compile: bool = False,
                    fp8_matmul: bool = False, loras: Sequence[tuple[str, float]] = (),
                    vace_module: str | Path | None = None,
                    **settings: object) -> ExpertSpec:
    """ExpertSpec of a DiT file loaded by `dit_loader.load_dit` with a LoRA stack (headers read now, weights on first
    use).

    The key holds the file identity, weight_dtype, compute_dtype (fp8 layers store their bias in it), the
    identity of an attached VACE module file and `settings`; the LoRA stack ((file, strength), ... ; strength 0
    left out) is its variant, so an entry with another stack of the same file is changed in place instead of
    re-read. The attention backend and torch.compile of the blocks are applied on activation (they change no
    tensor, so cached entries stay shared across them).
    """
    device = torch.device(device)
    compute = compute_dtype if compute_dtype is not None else (
        torch.bfloat16 if device.type == "cuda" else torch.float32)
    info = inspect_dit(path, vace_module)
    stored = WEIGHT_DTYPES[weight_dtype]
    size = weight_bytes(info.config, stored, stored_bytes=info.weight_bytes, stored_dtype=info.stored_dtype)
    params = param_counts(info.config).total
    stack = tuple((str(p), float(s)) for p, s in loras if s != 0)
    if stack and (stored in FP8_DTYPES or (stored is None and info.fp8)):  # run-time terms on the fp8 Linears
        size += runtime_bytes(stack, info.config, 4 if compute in (torch.float32, "fp32") else 2)
    variant = tuple((f"{Path(p).name} x{s:g}", *file_identity(p), s) for p, s in stack)
    if vace_module is not None:
        settings = {**settings, "vace_module": file_identity(vace_module)}
    key = CacheKey.for_file("dit", path, variant=variant, weight_dtype=weight_dtype, compute_dtype=str(compute),
                            **settings)

    def reuse(module: nn.Module) -> None:
        apply_stack(module, stack, base_path=path, weight_dtype=weight_dtype, work_device=device)

    def load(dev: torch.device) -> nn.Module:
        module = load_dit(path, device=dev, weight_dtype=weight_dtype, compute_dtype=compute, attention=attention,
                          vace_module=vace_module)
        if stack:
            reuse(module)
        return module

    def configure(module: nn.Module) -> None:
        if getattr(module, "attention", attention) != attention:
            module.set_attention(attention)
        if getattr(module, "compiled", compile) != compile:
            module.compile_blocks(compile)
        use_fp8_matmul(module, fp8_matmul)

    per_param = size / params
    return ExpertSpec(key, load, int(size), stream_bytes=stream_bytes_for(info.config, per_param),
                      block_bytes=int(param_counts(info.config).block * per_param), configure=configure, reuse=reuse)


def expert_advice(tier: str, policy: str) -> str:
    """What a user can change when an expert does not fit on `tier` under `policy`."""
    if tier == "cpu":
        swap = "" if policy == "swap" else "use placement 'swap' (one expert in memory at a time, the other re-read " \
                                           "from its file), "
        return f"To fit: {swap}use fp8 weights (half the size), or raise the RAM budget (WANMOE_RAM_GB) / close " \
               "other programs."
    others = " or ".join(p for p in ("'swap' (one expert on the GPU at a time)", "'stream' (blocks streamed to the GPU)")
                         if policy not in p)
    return (f"To fit: use placement {others}, fp8 weights (half the size), or free VRAM (Unload models, other "
            "programs).")


@dataclass(frozen=True)
class PlacementPlan:
    """The policy a run uses, where the idle expert waits ('device', 'ram' or 'file'), and why."""

    policy: str
    idle: str
    reason: str
    resident_blocks: int = 0  # stream: blocks kept on the device beside the two streamed ones

    def __str__(self) -> str:
        return f"placement {self.policy} (idle expert: {self.idle}): {self.reason}"


def plan_placement(requested: str, *, high_bytes: int, low_bytes: int, stream_bytes: int, device_room: int,
                   ram_room: int, device_is_cpu: bool, device_name: str = "the GPU",
                   room_note: str = "") -> PlacementPlan:
    """Choose (or check) a placement from the bytes the experts need and the room on the device and in RAM.

    `device_room`/`ram_room` are the bytes available for weights (budget and measured free memory, minus
    working memory). On a CPU device both are the same pool. Raises NotEnoughMemoryError when the requested
    policy (or, for "auto", every policy) does not fit.
    """
    if requested not in PLACEMENTS:
        raise ValueError(f"unknown placement '{requested}'; expected one of {', '.join(PLACEMENTS)}")
    both, one = high_bytes + low_bytes, max(high_bytes, low_bytes)
    if device_is_cpu:
        fits = {"resident": both <= device_room, "swap": one <= device_room,
                "stream": one + stream_bytes <= device_room}
        idle = {"resident": "device", "swap": "file", "stream": "file"}
    else:
        fits = {"resident": both <= device_room, "swap": one <= device_room,
                "stream": stream_bytes <= device_room and one <= ram_room}
        idle = {"resident": "device", "swap": "ram" if one <= ram_room else "file",
                "stream": "ram" if both <= ram_room else "file"}
    needs = {
        "resident": f"both experts on {device_name}: {gib(both)}",
        "swap": f"one expert on {device_name}: {gib(one)}",
        "stream": f"{gib(stream_bytes)} on {device_name} and one expert ({gib(one)}) in RAM",
    }
    room = f"{gib(device_room)} is available for weights on {device_name}"
    if not device_is_cpu:
        room += f" and {gib(ram_room)} in RAM"
    room += room_note
    auto_order = ("resident", "swap") if device_is_cpu else ("resident", "swap", "stream")
    fitting = [p for p in auto_order if fits[p]]
    if requested == "auto":
        if not fitting:
            raise NotEnoughMemoryError(
                f"the experts fit no placement: swap needs {needs['swap']}"
                + ("" if device_is_cpu else f"; stream needs {needs['stream']}") + f", but {room}. "
                "To fit: use fp8 weights (half the size), raise the budgets (WANMOE_VRAM_GB / WANMOE_RAM_GB), "
                "lower the resolution or frames, or close other programs.",
                needed=one, free=device_room, device=device_name)
        policy = fitting[0]
        return PlacementPlan(policy, idle[policy], f"auto: needs {needs[policy]}; {room}")
    if not fits[requested]:
        hint = (f"Placement '{fitting[0]}' fits: choose it or 'auto'." if fitting else
                "No placement fits: use fp8 weights (half the size), raise the budgets, or free memory.")
        raise NotEnoughMemoryError(f"placement '{requested}' needs {needs[requested]}, but {room}. {hint}",
                                   needed=both if requested == "resident" else one, free=device_room,
                                   device=device_name)
    return PlacementPlan(requested, idle[requested], f"requested; needs {needs[requested]}; {room}")


class CachedExperts:
    """The sampler's ExpertSource backed by the shared model cache, under one placement policy."""

    def __init__(self, high: ExpertSpec, low: ExpertSpec, *, device: torch.device | str, placement: str = "auto",
                 cache: ModelCache | None = None, working_bytes: int = 0, prefetch: bool = True,
                 pin_memory: bool | None = None) -> None:
        self.cache = cache if cache is not None else get_cache()
        self.device = torch.device(device)
        self.specs = {"high": high, "low": low}
        self.prefetch = prefetch
        self.pin = (self.device.type == "cuda") if pin_memory is None else pin_memory
        self.plan = self._plan(placement, working_bytes)
        self._active: str | None = None
        self._module: nn.Module | None = None
        self._locked: set[str] = set()
        log.info("%s\n%s", self.plan, self.cache.status())

    def _room(self, tier: str, device: torch.device) -> tuple[int, str]:
        """Bytes the cache could hold on a tier for this run: budget and measured free, counting evictable entries."""
        cache = self.cache
        held, evictable = cache.held(tier), cache.evictable(tier)
        by_budget = cache.budget.limit(tier) - (held - evictable)
        by_free = cache.free_memory(device) + evictable
        return min(by_budget, by_free), f"budget {gib(cache.budget.limit(tier))}, measured free {gib(by_free)}"

    def _plan(self, placement: str, working_bytes: int) -> PlacementPlan:
        high, low = self.specs["high"], self.specs["low"]
        tier = tier_of(self.device)
        device_room, note = self._room(tier, self.device)
        device_room -= working_bytes
        ram_room, ram_note = (device_room, "") if tier == "cpu" else self._room("cpu", torch.device("cpu"))
        note = f" ({tier}: {note}; {gib(working_bytes)} kept for activations" + \
               (f"; RAM: {ram_note})" if ram_note else ")")
        stream = max(high.streaming_bytes(), low.streaming_bytes())
        plan = plan_placement(placement, high_bytes=high.size_bytes, low_bytes=low.size_bytes, stream_bytes=stream,
                              device_room=device_room, ram_room=ram_room, device_is_cpu=tier == "cpu",
                              device_name=tier, room_note=note)
        block = max(high.block_bytes, low.block_bytes)
        if plan.policy == "stream" and block > 0 and tier != "cpu":  # the room left beside the streaming footprint holds whole blocks
            resident = max(0, (device_room - stream) // block)
            plan = PlacementPlan(plan.policy, plan.idle, plan.reason + f"; {resident} blocks kept on the device",
                                 int(resident))
        return plan

    @property
    def policy(self) -> str:
        """The placement in force: resident, swap or stream."""
        return self.plan.policy

    def expert(self, name: str) -> nn.Module:
        """The expert `name` ready on the compute device (swapping or streaming as the policy says)."""
        if name not in self.specs:
            raise ValueError(f"unknown expert '{name}'; expected one of {EXPERT_NAMES}")
        if self._active == name and self._module is not None:
            return self._module
        if self._active is not None:
            self._deactivate(self._active)
        self._module = self._activate(name)
        self._active = name
        return self._module

    def _activate(self, name: str) -> nn.Module:
        spec = self.specs[name]
        lock = name not in self._locked
        try:
            if self.plan.policy == "stream":
                module = self.cache.stream(spec.key, spec.load, size_bytes=spec.size_bytes, device=self.device,
                                           prefetch=self.prefetch, pin=self.pin, lock=lock,
                                           resident=self.plan.resident_blocks, reuse=spec.reuse,
                                           blocks=STREAMED_BLOCKS)
            else:
                module = self.cache.get(spec.key, spec.load, size_bytes=spec.size_bytes, device=self.device,
                                        lock=lock, reuse=spec.reuse)
        except NotEnoughMemoryError as exc:
            raise exc.advise(expert_advice(tier_of(self.device), self.plan.policy)) from exc
        self._locked.add(name)
        if spec.configure is not None:
            spec.configure(module)
        return module

    def _deactivate(self, name: str) -> None:
        """Put the expert that just ran where the policy keeps an idle one."""
        self._active, self._module = None, None
        key = self.specs[name].key
        if self.plan.policy == "resident" or self.specs["high"].key == self.specs["low"].key:
            return  # the same file and settings for both experts: one entry, nothing to swap
        try:
            if self.plan.policy == "stream":
                self.cache.unstream(key)
        finally:
            self._unlock(name)
        if self.plan.idle == "ram":
            self.cache.offload(key)
        elif self.plan.idle == "file":
            self.cache.drop(key)

    def _unlock(self, name: str) -> None:
        if name in self._locked:
            self._locked.discard(name)
            self.cache.unlock(self.specs[name].key)

    def release(self) -> None:
        """End of run (normal or not): stop streaming, unlock both experts; never raises."""
        self._active, self._module = None, None
        for name in list(self._locked):
            try:
                if self.plan.policy == "stream":
                    self.cache.unstream(self.specs[name].key)
            except Exception:  # release runs in the sampler's finally: never mask the run's own error
                log.exception("could not stop streaming the %s-noise expert", name)
            finally:
                self._unlock(name)
