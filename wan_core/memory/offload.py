"""Moving a module's weights between memory pools, all or nothing, and streaming its blocks to the device.

`move_module` never leaves a module half-moved: across pools it builds every copy first and swaps them in
only when all succeeded, so an out-of-memory error leaves the module where it was. `discard_module` frees a
module's storage even if other code still holds a reference to the module. `BlockStreamer` keeps a module's
transformer blocks on the host and copies each one to the compute device just before it runs (the next one
prefetched on a side CUDA stream), dropping the copy right after; on the CPU the same code runs with real
copies and no stream.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Iterator, Sequence

import torch
import torch.nn as nn

from .budget import NotEnoughMemoryError, gib, is_out_of_memory, tier_of

Slot = tuple[nn.Module, str, str]  # (owner module, "_parameters" or "_buffers", name)


def tensor_slots(module: nn.Module) -> Iterator[Slot]:
    """Every place a parameter or buffer of `module` (and its children) is stored."""
    for owner in module.modules():
        for kind in ("_parameters", "_buffers"):
            for name, value in getattr(owner, kind).items():
                if value is not None:
                    yield owner, kind, name


def read_slot(slot: Slot) -> torch.Tensor:
    """The tensor in a slot."""
    owner, kind, name = slot
    return getattr(owner, kind)[name]


def _storage_of(slot: Slot) -> torch.Tensor:
    """A plain tensor sharing the slot's storage, unaffected by later writes to the slot."""
    t = read_slot(slot)
    return t.data if isinstance(t, nn.Parameter) else t


def write_slot(slot: Slot, tensor: torch.Tensor) -> None:
    """Put `tensor` in a slot; a parameter keeps its identity when the tensor type allows it."""
    owner, kind, name = slot
    if kind == "_buffers":
        owner._buffers[name] = tensor
        return
    param = owner._parameters[name]
    try:
        param.data = tensor
    except RuntimeError:  # e.g. a CPU parameter cannot take a meta tensor in place
        owner._parameters[name] = nn.Parameter(tensor, requires_grad=param.requires_grad)


def _pinned_copy(t: torch.Tensor) -> torch.Tensor:
    out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    out.copy_(t)
    return out


def _copy_to(t: torch.Tensor, device: torch.device, pin: bool) -> torch.Tensor:
    """`t` on `device` (pinned when asked and the target is the CPU); `t` itself when nothing changes."""
    if device.type == "cpu" and pin and torch.cuda.is_available():
        return t if t.device.type == "cpu" and t.is_pinned() else _pinned_copy(t)
    return t.to(device)


def move_module(module: nn.Module, device: torch.device | str, *, pin: bool = False) -> None:
    """Move every tensor of `module` to `device`: across pools all-or-nothing, within a pool tensor by tensor."""
    device = torch.device(device)
    slots = list(tensor_slots(module))
    target = tier_of(device)
    cross = any(read_slot(s).device.type != "meta" and tier_of(read_slot(s).device) != target for s in slots)
    memo: dict[int, torch.Tensor] = {}
    if not cross:  # pinning in place: a failure leaves some tensors unpinned, all still on the same device
        for slot in slots:
            t = read_slot(slot)
            if t.device.type == "meta":
                continue
            new = memo.get(id(t))
            if new is None:
                new = memo[id(t)] = _copy_to(t, device, pin)
            if new is not t:
                write_slot(slot, new)
        return
    staged: list[tuple[Slot, torch.Tensor]] = []
    try:
        for slot in slots:
            t = read_slot(slot)
            new = memo.get(id(t))
            if new is None:
                new = memo[id(t)] = t if t.device.type == "meta" else _copy_to(t, device, pin)
            staged.append((slot, new))
    except BaseException:
        staged.clear()
        memo.clear()
        raise
    for slot, new in staged:
        write_slot(slot, new)


def discard_module(module: nn.Module) -> None:
    """Free every tensor of `module` (they become meta tensors) even where others still reference the module."""
    for slot in list(tensor_slots(module)):
        t = read_slot(slot)
        if t.device.type != "meta":
            write_slot(slot, torch.empty(t.shape, dtype=t.dtype, device="meta"))


def _slot_bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class BlockStreamer:
    """Runs `module` on `device` while the modules in `blocks` stay on the host and visit the device one at a time.

    attach(): every tensor outside the blocks is copied to the device (the host tensors are kept); hooks
    copy block i to the device before its forward and put the host tensors back after it. With `prefetch`,
    block i+1 (wrapping to 0 for the next forward) is copied while block i runs, on a side CUDA stream. The first
    `resident` blocks stay on the device for as long as the streamer is attached (fewer copies per step for the
    device memory they take). `more`: further block lists (a control branch's blocks) streamed the same way, each
    prefetching its own next block, so a list that does not run in a forward is not copied for it.
    detach() puts every host tensor back and drops all device copies; it allocates nothing, so it cannot
    fail for lack of memory, and it is safe after an exception in the middle of a forward.
    """

    def __init__(self, module: nn.Module, blocks: nn.ModuleList, device: torch.device | str, *,
                 prefetch: bool = True, resident: int = 0, more: Sequence[nn.ModuleList] = ()) -> None:
        self.module, self.device = module, torch.device(device)
        self.resident = max(0, min(int(resident), len(blocks)))
        groups = [g for g in [list(blocks)[self.resident:]] + [list(m) for m in more] if g]
        self.blocks = [b for g in groups for b in g]  # the streamed ones
        self._next: list[int] = []  # block i prefetches block _next[i]: the next of its own list, wrapping
        for g in groups:
            start = len(self._next)
            self._next += [start + (j + 1) % len(g) for j in range(len(g))]
        self._groups = len(groups)
        self.prefetch = prefetch
        block_ids = {id(m) for b in self.blocks for m in b.modules()}
        self._block_slots = [list(tensor_slots(b)) for b in self.blocks]
        self._other_slots = [s for s in tensor_slots(module) if id(s[0]) not in block_ids]
        self._host: dict[Slot, torch.Tensor] = {}
        self._staged: dict[int, tuple[list[torch.Tensor], object]] = {}
        self._active: set[int] = set()
        self._hooks: list = []
        self._side = None
        self.attached = False
        self.copies = 0  # blocks copied to the device (tests and benchmarks read it)
        self.max_blocks_on_device = 0

    def device_bytes(self) -> int:
        """Bytes the streamer needs on the device: everything outside the streamed blocks plus the running block and
        one prefetched per block list (two blocks for one list)."""
        other = _slot_bytes([self._host.get(s, read_slot(s)) for s in self._other_slots])
        block = max((_slot_bytes([self._host.get(s, read_slot(s)) for s in slots]) for slots in self._block_slots),
                    default=0)
        return other + (1 + self._groups) * block if self.blocks else other

    def bytes_by_tier(self) -> dict[str, int]:
        """Accounting for the cache: host tensors on their pool, the streaming reserve on the device."""
        out: dict[str, int] = {}
        for t in self._host.values():
            tier = tier_of(t.device)
            out[tier] = out.get(tier, 0) + t.numel() * t.element_size()
        dev = tier_of(self.device)
        out[dev] = out.get(dev, 0) + self.device_bytes()
        return out

    def attach(self) -> None:
        """Copy the non-block tensors to the device and install the per-block hooks (undone on failure)."""
        if self.attached:
            return
        for slot in self._other_slots + [s for block in self._block_slots for s in block]:
            self._host[slot] = _storage_of(slot)
        self.attached = True
        try:
            if self.device.type == "cuda":
                self._side = torch.cuda.Stream(self.device)
            copies = [self._host[s].to(self.device, copy=True) for s in self._other_slots]
            for slot, t in zip(self._other_slots, copies):
                write_slot(slot, t)
            for i, block in enumerate(self.blocks):
                self._hooks.append(block.register_forward_pre_hook(self._make_pre(i)))
                self._hooks.append(block.register_forward_hook(self._make_post(i)))
        except BaseException:
            self.detach()
            raise

    def detach(self) -> None:
        """Remove the hooks, put every host tensor back and drop the device copies."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        if self._side is not None:
            self._side.synchronize()
        for slot, t in self._host.items():
            write_slot(slot, t)
        self._host.clear()
        self._staged.clear()
        self._active.clear()
        self._side = None
        self.attached = False

    def _stage(self, i: int, stream: object | None) -> None:
        """Start copying block i to the device (on `stream` when given)."""
        if i in self._staged or i in self._active:
            return
        ctx = torch.cuda.stream(stream) if stream is not None else nullcontext()
        event = None
        with ctx:
            copies = [self._host[s].to(self.device, non_blocking=True, copy=True) for s in self._block_slots[i]]
            if stream is not None:
                event = torch.cuda.Event()
                event.record(stream)
        self._staged[i] = (copies, event)
        self.copies += 1

    def _make_pre(self, i: int):
        def pre(block: nn.Module, args: tuple) -> None:
            try:
                self._stage(i, None)
                copies, event = self._staged.pop(i)
                if event is not None:
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(event)
                    for t in copies:  # the side stream allocated them; keep them until this stream is done
                        t.record_stream(current)
                for slot, t in zip(self._block_slots[i], copies):
                    write_slot(slot, t)
                self._active.add(i)
                if self.prefetch:
                    self._stage(self._next[i], self._side)
                self.max_blocks_on_device = max(self.max_blocks_on_device, len(self._active) + len(self._staged))
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc) or isinstance(exc, NotEnoughMemoryError):
                    raise
                raise NotEnoughMemoryError(
                    f"block streaming ran out of memory on {self.device} while copying block {i} "
                    f"({gib(self.device_bytes() // 2)} per block pair). Lower the resolution or the number of "
                    "frames, close other programs using the GPU, or use fp8 weights.",
                    needed=self.device_bytes(), device=str(self.device)) from exc
        return pre

    def _make_post(self, i: int):
        def post(block: nn.Module, args: tuple, output: object) -> None:
            for slot in self._block_slots[i]:
                write_slot(slot, self._host[slot])
            self._active.discard(i)
        return post
