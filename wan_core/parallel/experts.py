"""The sampler's ExpertSource over a worker pool: every expert call runs on all ranks.

Rank 0 keeps its own ExpertSource (`local`, e.g. the cache-backed CachedExperts on its device); the workers
build the same kind of source on theirs from `factory` ("package.module:function", called with
`device=` and `kwargs`), so every rank loads through the same cache and loaders. Activating an expert is a
queue round-trip (each rank loads or swaps in parallel, rank 0 waits for every 'ready' while polling Cancel
and the workers' liveness); a call is `WorkerPool.forward`.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import torch
import torch.nn as nn

from .pool import WorkerPool

log = logging.getLogger("wan_core.parallel.experts")


class ParallelExpert:
    """One expert as the sampler sees it: called like WanDiT (x, t, context, before_block) -> velocity on rank 0."""

    def __init__(self, pool: WorkerPool, name: str, module: nn.Module) -> None:
        self.pool, self.name, self.module = pool, name, module
        self.config = module.config
        self.attention = getattr(module, "attention", None)

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor | list[torch.Tensor],
                 before_block: Callable[[int], None] | None = None) -> torch.Tensor:
        return self.pool.forward(self.name, self.module, x, t, context, before_block)

    def forget_text(self) -> None:
        """This expert is done for the run (the sampler calls it): every rank drops its text embeddings and K/V."""
        self.module.forget_text()
        self.pool.forget_text(self.name)


class ParallelExperts:
    """ExpertSource: rank 0's `local` source plus the same source built by every worker."""

    def __init__(self, pool: WorkerPool, local: object, factory: str, kwargs: dict,
                 check_cancel: Callable[[], None] | None = None) -> None:
        self.pool, self.local, self.check_cancel = pool, local, check_cancel
        self._active: str | None = None
        self._expert: ParallelExpert | None = None
        pool.check_open()
        pool.send({"kind": "job", "seq": pool.next_seq(), "factory": factory, "kwargs": kwargs})

    @property
    def plan(self) -> object:
        """Rank 0's placement plan (the workers choose theirs from their own device's memory)."""
        return getattr(self.local, "plan", None)

    def expert(self, name: str) -> ParallelExpert:
        """`name` active on every rank (each loads or swaps it in parallel)."""
        if self._active == name and self._expert is not None:
            return self._expert
        seq = self.pool.next_seq()
        self.pool.send({"kind": "activate", "seq": seq, "expert": name})
        module = self.local.expert(name)
        self.pool.wait("ready", seq, deadline=time.monotonic() + self.pool.startup_timeout,
                       check_cancel=self.check_cancel)
        log.info("WanMoE multi-GPU: expert %s ready on %d ranks", name, self.pool.world)
        self._active, self._expert = name, ParallelExpert(self.pool, name, module)
        return self._expert

    def release(self) -> None:
        """Release rank 0's source and tell the workers to release theirs (no wait)."""
        try:
            self.local.release()
        finally:
            if not self.pool.closed:
                self.pool.send({"kind": "release", "seq": self.pool.next_seq()})
