"""One DiT call on every rank: inputs broadcast from rank 0, a sharded forward per CFG group, outputs gathered once.

The same function runs on rank 0 (which has the inputs and gets the velocity back) and on the workers (which
learn the shapes from the call's `CallMeta`, sent ahead through their command queue). Before each block all
ranks agree, with one one-element all_reduce, on whether rank 0 was cancelled: then every rank leaves the
call at that same block (workers with CallCancelled, rank 0 with its own exception) and no collective is left
waiting for a rank that has gone.

Text contexts are broadcast once per run, not per step: rank 0 numbers each distinct context it is given
(`RunTexts`), and every rank keeps its CFG group's part of it as one tensor, passed at every step, so each
rank's DiT keeps its text embedding and cross-attention keys/values for the run (WanDiT caches them by
tensor identity) and `forget_text` drops them on every rank at the run's end.
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
    text_id: int = 0  # which of the run's text contexts (RunTexts) the call uses
    send_text: bool = True  # the context is new: broadcast now (else every rank has its part already)

    @property
    def layout(self) -> Layout:
        return Layout(self.cfg, self.ulysses)

    def to_message(self) -> dict:
        """Plain values for a queue (workers import wan_core under another module name than ComfyUI's rank 0)."""
        return asdict(self)

    @classmethod
    def from_message(cls, message: dict) -> "CallMeta":
        return cls(message["expert"], tuple(message["shape"]), tuple(message["text"]), message["cfg"],
                   message["ulysses"], message["text_id"], message["send_text"])


TEXT_ENTRIES = 4  # as WanDiT's text cache: cond, uncond, and both as one batch


def _version(t: torch.Tensor) -> int:
    """The tensor's in-place-change counter (-1 for inference-mode tensors, which have none)."""
    try:
        return t._version
    except RuntimeError:
        return -1


class RunTexts:
    """One rank's text contexts of the current run: text id -> this rank's CFG-group part, one tensor per id.

    Rank 0 also maps the sampler's context tensors (by identity and version, held so their ids stay unique) to
    the ids. Every rank adds and evicts in the same order (the calls' order), so the ids agree on all ranks.
    """

    def __init__(self) -> None:
        self.parts: dict[int, torch.Tensor] = {}
        self.known: dict[tuple, tuple[int, tuple]] = {}  # rank 0: source key -> (text id, the sources)
        self.next_id = 0

    def lookup(self, context: torch.Tensor | list[torch.Tensor]) -> tuple[int, bool]:
        """Rank 0: (text id, new) for the context the sampler passed."""
        sources = (context,) if isinstance(context, torch.Tensor) else tuple(context)
        key = tuple((id(t), _version(t)) for t in sources)
        found = self.known.get(key)
        if found is not None and found[0] in self.parts:
            return found[0], False
        self.next_id += 1
        self.known[key] = (self.next_id, sources)
        return self.next_id, True

    def put(self, text_id: int, part: torch.Tensor) -> torch.Tensor:
        """Keep this rank's part of a new context (the oldest one goes beyond TEXT_ENTRIES)."""
        if len(self.parts) >= TEXT_ENTRIES:
            gone = next(iter(self.parts))
            del self.parts[gone]
            self.known = {k: v for k, v in self.known.items() if v[0] != gone}
        self.parts[text_id] = part
        return part

    def clear(self) -> None:
        """End of a run: drop the contexts (each rank's DiT drops its embeddings in forget_text)."""
        self.parts.clear()
        self.known.clear()


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


def exchange_inputs(meta: CallMeta, device: torch.device, inputs: tuple | None) -> tuple[torch.Tensor, ...]:
    """(x, t, padded context or None) on every rank: rank 0 gives them, the workers receive them (a broadcast
    each; the context only when `meta.send_text`)."""
    b = meta.shape[0]
    if inputs is None:
        inputs = (torch.empty(meta.shape, dtype=torch.float32, device=device),
                  torch.empty(b, dtype=torch.float32, device=device),
                  torch.empty((b, *meta.text), dtype=torch.float32, device=device) if meta.send_text else None)
    tensors = tuple(t.to(device=device, dtype=torch.float32).contiguous() if t is not None else None for t in inputs)
    for tensor in tensors:
        if tensor is not None:
            dist.broadcast(tensor, src=0)
    return tensors


def run_call(model: WanDiT, meta: CallMeta, groups: Groups, sync: BlockSync, texts: RunTexts,
             inputs: tuple | None = None) -> torch.Tensor | None:
    """This rank's part of one call; rank 0 (given `inputs`) returns the velocity [B, out, F, H, W], workers None."""
    device = groups.device
    x, t, context = exchange_inputs(meta, device, inputs)
    layout = meta.layout
    cfg_group, rank_in_group = layout.group_of(groups.rank)
    per_group = meta.shape[0] // layout.cfg
    mine = slice(cfg_group * per_group, (cfg_group + 1) * per_group)
    text = texts.put(meta.text_id, context[mine]) if meta.send_text else texts.parts[meta.text_id]
    share = sharded_forward(model, x[mine], t[mine], text, rank=rank_in_group, size=layout.ulysses,
                            group=groups.ulysses_group(layout, cfg_group), before_block=sync).contiguous()
    shares = [torch.empty_like(share) for _ in range(groups.world)] if groups.rank == 0 else None
    dist.gather(share, shares, dst=0)
    if groups.rank != 0:
        return None
    return assemble(model, shares, layout, latent_grid(model, meta.shape))


def rank0_inputs(model: WanDiT, x: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor | list[torch.Tensor],
                 send_text: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Rank 0's (x, t [B], context padded to [B, text_len, text_dim] when it is sent) as every rank receives them."""
    b = x.shape[0]
    t = torch.as_tensor(t, dtype=torch.float32, device=x.device).reshape(-1).expand(b)
    return x, t, model.pad_context(context, b, x.device) if send_text else None
