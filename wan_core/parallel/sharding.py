"""Weight sharding (placement "shard"): every block's weights split over all ranks with FSDP2 `fully_shard`.

For GPUs that cannot hold a whole 14B expert (28 GB in bf16) beside the activations: each rank keeps 1/N of
every block (dim-0 shards) plus the small non-block layers (embeddings, head: about 0.5 GB at A14B), and a
block's full weights exist only while it runs (all-gathered just before it, freed after it; each block is
its own FSDP root, so the next block's gather is not started early: on NVLink a 14B block's 0.7 GB gather
is a few ms next to tens of ms of compute). Blocks are sharded one at a time from the CPU copy, so the device never holds a whole
expert. Sharded experts are tied to the process group: they stay resident for the pool's life (both experts,
2 x 28/N GB per GPU at A14B bf16) and are dropped with it, outside the model cache (whose moves between
devices cannot apply to shards). fp8 weights are not sharded (FSDP gathers 16/32-bit floats).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from ..config import COMPUTE_DTYPES
from ..dit.loader import load_dit
from ..io.checkpoint import file_identity

log = logging.getLogger("wan_core.parallel.sharding")
_held: dict[tuple, nn.Module] = {}  # (key, expert name) -> sharded module, while the group lives


def _fsdp():
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
    except ImportError as exc:
        raise RuntimeError(f"placement 'shard' needs PyTorch 2.6 or newer (torch.distributed.fsdp.fully_shard); "
                           f"this is {torch.__version__}: choose placement auto instead") from exc
    return init_device_mesh, fully_shard


def shard_blocks(model: nn.Module, device: torch.device) -> nn.Module:
    """Shard each of `model.blocks` over every rank of the group (one block on the device at a time); the rest to `device`."""
    narrow = sorted({str(p.dtype) for p in model.blocks.parameters() if p.element_size() < 2})
    if narrow:
        raise ValueError(f"placement 'shard' gathers 16/32-bit weights, but this expert keeps {', '.join(narrow)} "
                         "weights; choose weight_dtype bf16 or fp16 (or placement auto with fp8)")
    init_device_mesh, fully_shard = _fsdp()
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    blocks = list(model.blocks)
    for block in blocks:
        block.to(device)
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    for name, child in model.named_children():
        if name != "blocks":
            child.to(device)
    model.weights_sharded = True
    return model


class ShardedExperts:
    """ExpertSource of sharded experts: `loaders[name]()` gives the expert on the CPU, sharded on first use."""

    def __init__(self, loaders: dict[str, Callable[[], nn.Module]], device: torch.device, key: tuple,
                 configure: Callable[[nn.Module], None] | None = None) -> None:
        self.loaders, self.device, self.key, self.configure = loaders, torch.device(device), key, configure

    @property
    def plan(self) -> str:
        return f"placement shard: each block's weights split over {dist.get_world_size()} ranks"

    def expert(self, name: str) -> nn.Module:
        """The sharded expert `name` (loaded and sharded the first time on this rank)."""
        held = _held.get((self.key, name))
        if held is None:
            for stale in [k for k in _held if k[0] != self.key]:  # other files or settings: free their shards
                del _held[stale]
            held = shard_blocks(self.loaders[name](), self.device)
            _held[(self.key, name)] = held
            log.info("sharded expert %s: %.1f MiB of its weights on this rank", name, local_bytes(held) / 2**20)
        if self.configure is not None:
            self.configure(held)
        return held

    def release(self) -> None:
        """Sharded experts stay resident while the group lives (see forget)."""


def sharded_experts(high_path: str, low_path: str, *, weight_dtype: str, attention: str, device: torch.device,
                    compute: str = "auto", **_: object) -> ShardedExperts:
    """Both expert files as sharded experts (read on the CPU by dit.loader, then split block by block)."""
    device = torch.device(device)
    if compute != "auto":
        compute = COMPUTE_DTYPES[compute]
    else:
        compute = torch.bfloat16 if device.type == "cuda" else torch.float32
    loaders = {name: partial(load_dit, path, device="cpu", weight_dtype=weight_dtype, compute_dtype=compute,
                             attention=attention) for name, path in (("high", high_path), ("low", low_path))}
    key = (file_identity(high_path), file_identity(low_path), weight_dtype, str(compute))

    def configure(module: nn.Module) -> None:
        if module.attention != attention:
            module.set_attention(attention)

    return ShardedExperts(loaders, device, key, configure)


def local_bytes(module: nn.Module) -> int:
    """Bytes of the module's weights held by this rank (the local shard of sharded parameters)."""
    total = 0
    for p in module.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += local.numel() * local.element_size()
    return total


def forget() -> None:
    """Drop every sharded expert (the process group they belong to is going away)."""
    _held.clear()
