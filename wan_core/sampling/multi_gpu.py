"""The experts of a run on several GPUs: the worker pool, the same cache-backed experts on every rank (or shards).

`cached_experts` is what every rank (rank 0 here, the workers by name) calls to get its ExpertSource: the
cache-backed CachedExperts on its own device, whose placement each rank plans from its own free memory.
`parallel_experts` checks the GPU count against the model's heads and the run's call batches, starts (or
reuses) the pool, and returns the ExpertSource the sampler drives; None when the pool cannot start (the run
then goes on one device, with a warning).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from ..dit.loader import inspect_dit
from ..dit.sizes import activation_bytes
from ..parallel.experts import ParallelExperts
from ..parallel.group import rank_devices
from ..parallel.plan import check_world, plan_layout
from ..parallel.pool import get_pool
from ..parallel.sharding import sharded_experts
from .placement import CachedExperts, dit_expert_spec
from .schedule import Schedule

log = logging.getLogger("wan_core.sampling.multi_gpu")
SHARD = "shard"  # the placement that splits every block's weights over the ranks
# What workers call, by name: they import wan_core as a top-level package, not under ComfyUI's module name.
WORKER_EXPERTS = {False: "wan_core.sampling.multi_gpu:cached_experts",
                  True: "wan_core.parallel.sharding:sharded_experts"}


def cached_experts(*, high_path: str, low_path: str, weight_dtype: str, placement: str, attention: str,
                   device: torch.device, tokens: int = 0, batch: int = 1, compute: str = "auto",
                   compile: bool = False, fp8_matmul: bool = False, loras_high: tuple = (),
                   loras_low: tuple = (), vace_high: str | None = None, vace_low: str | None = None) -> CachedExperts:
    """Both experts as a cache-backed ExpertSource on `device`, each with its LoRA stack ((file, strength), ...)
    and attached VACE module file (None: none), with room kept for `tokens` x `batch` activations."""
    specs = [dit_expert_spec(path, device=device, weight_dtype=weight_dtype, attention=attention,
                             compute_dtype=None if compute == "auto" else compute, compile=compile,
                             fp8_matmul=fp8_matmul, loras=loras, vace_module=vace)
             for path, loras, vace in ((high_path, loras_high, vace_high), (low_path, loras_low, vace_low))]
    working = activation_bytes(inspect_dit(high_path).config, tokens, batch) if tokens else 0
    return CachedExperts(*specs, device=device, placement=placement, working_bytes=working)


def call_batches(schedule: Schedule, batch: int) -> list[int]:
    """The batch sizes of the run's DiT calls: 2B at a guided step (cond + uncond), B at guidance 1."""
    return sorted({2 * batch if g != 1.0 else batch for g in schedule.guidance} or {batch})


def parallel_experts(settings: dict, *, gpus: int, device: torch.device, tokens: int, batch: int,
                     schedule: Schedule, check_cancel: Callable[[], None] | None = None) -> ParallelExperts | None:
    """The run's experts on `gpus` ranks (`settings`: cached_experts' file and placement arguments)."""
    sharded = settings["placement"] == SHARD
    if gpus < 2 and sharded:
        raise ValueError("placement 'shard' splits the experts' weights over several GPUs; set gpus to 2 or more "
                         "(or choose placement auto)")
    heads = inspect_dit(settings["high_path"]).config.num_heads
    batches = call_batches(schedule, batch)
    check_world(gpus, heads, batches)
    devices = rank_devices(gpus, device)
    layouts = [plan_layout(gpus, n, heads) for n in batches]
    rank_tokens, rank_batch = max(((-(-tokens // lay.ulysses), n // lay.cfg) for lay, n in zip(layouts, batches)),
                                  key=lambda pair: pair[0] * pair[1])
    try:
        pool = get_pool(devices)
    except Exception as exc:  # spawn, rendezvous or a worker's own start failed: one device still gives a video
        log.warning("WanMoE multi-GPU: could not start %d ranks (%s); sampling on one device instead", gpus, exc)
        return None
    if settings.get("compile"):  # the Ulysses kernel is swapped in per call: compiled blocks would recompile
        log.warning("WanMoE multi-GPU: compile is not applied on several GPUs; the blocks run eagerly")
    kwargs = dict(settings, tokens=rank_tokens, batch=rank_batch, compile=False)
    local = (sharded_experts if sharded else cached_experts)(device=device, **kwargs)
    log.info("WanMoE multi-GPU: %d ranks, per call %s", gpus,
             ", ".join(f"batch {n}: {lay.cfg} CFG group(s) x Ulysses {lay.ulysses}" for lay, n in zip(layouts, batches)))
    return ParallelExperts(pool, local, WORKER_EXPERTS[sharded], kwargs, check_cancel)
