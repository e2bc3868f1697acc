"""How the MoE sampler gets its two experts: a small protocol the model cache implements.

The sampler asks for an expert by name at every step ("high" while t >= boundary, "low" below); the
source decides where its weights live (both resident, one swapped in at the boundary, or streamed
block by block) and returns an `Expert` that runs on the compute device: our WanDiT, or an adapter around
someone else's model (the nodes' adapter for ComfyUI's own MODELs). `release` is called when the run
ends, normally or not, so the source can move weights back and free the device.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch
import torch.nn as nn

from ..dit.model import DiTConfig

EXPERT_NAMES = ("high", "low")


class Expert(Protocol):
    """One DiT expert as the sampler calls it: the raw flow velocity for the official integer timesteps."""

    config: DiTConfig  # its shape (the CFG batching decision estimates activations from it)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, context: Sequence[torch.Tensor], *,
                 before_block: Callable[[int], None] | None = None) -> torch.Tensor:
        """x [B, 16, F, H, W], t [B] on 0..1000, one [L, 4096] context per item -> velocity [B, 16, F, H, W]."""
        ...


class ExpertSource(Protocol):
    """Supplies the high-noise and low-noise DiT experts to the sampler."""

    def expert(self, name: str) -> Expert:
        """The expert `name` ("high" or "low"), ready to run a forward pass on the compute device."""
        ...

    def release(self) -> None:
        """The run is over (finished, failed or cancelled): put weights where the policy keeps idle models."""
        ...


class ResidentExperts:
    """Both experts already where they run (the simplest source; tests and small models)."""

    def __init__(self, high: nn.Module, low: nn.Module) -> None:
        self._experts = {"high": high, "low": low}

    def expert(self, name: str) -> nn.Module:
        try:
            return self._experts[name]
        except KeyError:
            raise ValueError(f"unknown expert '{name}'; expected one of {EXPERT_NAMES}") from None

    def release(self) -> None:
        pass
