"""One DiT call on every rank: inputs broadcast from rank 0, a sharded forward per CFG group, outputs gathered once.

The same function runs on rank 0 (which has the inputs and gets the velocity back) and on the workers (which
learn the shapes from the call's `CallMeta`, sent ahead through their command queue). Before each block all
ranks agree, with one one-element all_reduce, on whether rank 0 was cancelled: then every rank leaves the
call at that same block (workers with CallCancelled, rank 0 with its own exception) and no collective is left
waiting for a rank that has gone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.distributed as dist

from ..dit.model import WanDiT
from .forward import assemble, latent_grid, sharded_forward
from .group import Groups
from .plan import Layout


class CallCancelled(Exception):
    """A worker's call stopped at a block because rank 0 was cancelled there."""

    def __init__(self, block: int) -> None:
        super().__init__(f"cancelled by rank 0 before block {block}")
        self.block = block


@dataclass(frozen=True)
class CallMeta:
    """What a worker needs to join a call: the expert, the latent's shape, the text shape and the layout."""

    expert: str
    shape: tuple[int, ...]  # latent [B, C, F, H, W]
    text: tuple[int, int]  # padded context [text_len, text_dim]
    cfg: int
    ulysses: int

    @property
    def layout(self) -> Layout:
        return Layout(self.cfg, self.ulysses)

    def to_message(self) -> dict:
        """Plain values for a queue (workers import wan_core under another module name than ComfyUI's rank 0)."""
        return asdict(self)

    @classmethod
    def from_message(cls, message: dict) -> "CallMeta":
        return cls(message["expert"], tuple(message["shape"]), tuple(message["text"]), message["cfg"], message["ulysses"])


class BlockSync:
    """`before_block` of every rank: rank 0's check (Cancel) becomes all ranks' decision at the same block."""

    def __init__(self, device: torch.device, check: Callable[[int], None] | None = None) -> None:
        self.check = check
        self.flag = torch.zeros(1, dtype=torch.int32, device=device)
        self.pending: BaseException | None = None
        self.stopped = False  # all ranks agreed to stop: the group is still in step
        self.block: int | None = None  # the block they stopped before

    def __call__(self, index: int) -> None:
        stop = 0
        if self.check is not None:
            try:
                self.check(index)
            except BaseException as exc:  # ComfyUI's interrupt is not an Exception subclass in every version
                self.pending, stop = exc, 1
        self.flag.fill_(stop)
        dist.all_reduce(self.flag, op=dist.ReduceOp.MAX)
        if int(self.flag.item()):
            self.stopped, self.block = True, index
            if self.pending is not None:
                raise self.pending
            raise CallCancelled(index)


def exchange_inputs(meta: CallMeta, device: torch.device,
                    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, ...]:
    """(x, t, padded context) on every rank: rank 0 gives them, the workers receive them (three broadcasts)."""
    b = meta.shape[0]
    if inputs is None:
        inputs = (torch.empty(meta.shape, dtype=torch.float32, device=device),
                  torch.empty(b, dtype=torch.float32, device=device),
                  torch.empty((b, *meta.text), dtype=torch.float32, device=device))
    tensors = tuple(t.to(device=device, dtype=torch.float32).contiguous() for t in inputs)
    for tensor in tensors:
        dist.broadcast(tensor, src=0)
    return tensors


def run_call(model: WanDiT, meta: CallMeta, groups: Groups, sync: BlockSync,
             inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor | None:
    """This rank's part of one call; rank 0 (given `inputs`) returns the velocity [B, out, F, H, W], workers None."""
    device = groups.device
    x, t, context = exchange_inputs(meta, device, inputs)
    layout = meta.layout
    cfg_group, rank_in_group = layout.group_of(groups.rank)
    per_group = meta.shape[0] // layout.cfg
    mine = slice(cfg_group * per_group, (cfg_group + 1) * per_group)
    share = sharded_forward(model, x[mine], t[mine], context[mine], rank=rank_in_group, size=layout.ulysses,
                            group=groups.ulysses_group(layout, cfg_group), before_block=sync).contiguous()
    shares = [torch.empty_like(share) for _ in range(groups.world)] if groups.rank == 0 else None
    dist.gather(share, shares, dst=0)
    if groups.rank != 0:
        return None
    return assemble(model, shares, layout, latent_grid(model, meta.shape))


def rank0_inputs(model: WanDiT, x: torch.Tensor, t: torch.Tensor | float,
                 context: torch.Tensor | list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank 0's (x, t [B], context padded to [B, text_len, text_dim]) as every rank will receive them."""
    b = x.shape[0]
    t = torch.as_tensor(t, dtype=torch.float32, device=x.device).reshape(-1).expand(b)
    return x, t, model.pad_context(context, b, x.device)
