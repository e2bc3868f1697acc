"""The process group of one worker pool: gloo on CPU, NCCL on CUDA, rendezvous on 127.0.0.1 only.

Rank 0 (the ComfyUI process) owns the TCP store; workers connect to it by port. Every collective of the
group has `timeout` seconds: a rank that died closes its sockets (the others fail at once), a rank that hangs
makes the others fail after the timeout instead of waiting forever. The CFG subgroups (two halves of the
ranks) are created on every rank at join time, in the same order, as torch.distributed requires.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .plan import Layout

LOOPBACK = "127.0.0.1"


def backend_for(device: torch.device) -> str:
    """The collective backend for a compute device: NCCL for CUDA, gloo otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def _loopback_environment(backend: str, rank: int) -> None:
    """Keep every connection on the loopback interface; NCCL errors raise in the caller instead of killing it."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if backend == "nccl":
        os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")  # a timed-out collective raises in wait()
        # 2 = abort the communicator, keep the process: rank 0 is the ComfyUI server.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2" if rank == 0 else "3")


def make_store(world: int, timeout: float) -> dist.TCPStore:
    """Rank 0's rendezvous store on a free loopback port (workers connect with `join`)."""
    return dist.TCPStore(LOOPBACK, 0, world, is_master=True, timeout=datetime.timedelta(seconds=timeout),
                         wait_for_workers=False)


@dataclass
class Groups:
    """This rank's view of the pool's process group: rank, size, device and the CFG subgroups."""

    rank: int
    world: int
    device: torch.device
    halves: list = field(default_factory=list)  # two subgroups of world/2 ranks, when world/2 > 1

    def ulysses_group(self, layout: Layout, cfg_group: int) -> object:
        """The group a CFG group's all-to-all runs on (the whole world when there is one CFG group)."""
        if layout.cfg == 1:
            return dist.group.WORLD
        return self.halves[cfg_group] if self.halves else None  # Ulysses size 1: no all-to-all


def join(rank: int, world: int, device: torch.device, *, timeout: float, store: dist.Store | None = None,
         port: int | None = None) -> Groups:
    """Join the pool's process group (rank 0 passes its store, workers the store's port) and make the subgroups."""
    device = torch.device(device)
    backend = backend_for(device)
    _loopback_environment(backend, rank)
    if dist.is_initialized():
        raise RuntimeError("this process already belongs to a torch.distributed process group (another custom node "
                           "or script started one); WanMoE multi-GPU needs the process's default group for itself")
    if store is None:
        store = dist.TCPStore(LOOPBACK, port, world, is_master=False, timeout=datetime.timedelta(seconds=timeout))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout))
    halves = []
    if world % 2 == 0 and world > 2:
        half = world // 2
        halves = [dist.new_group(list(range(0, half))), dist.new_group(list(range(half, world)))]
    return Groups(rank, world, device, halves)


def leave() -> None:
    """Leave the process group (safe when there is none)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_devices(world: int, device: torch.device | str) -> list[torch.device]:
    """The device of each rank: rank 0 on the compute device, the others on the next CUDA devices (all CPU on a CPU)."""
    device = torch.device(device)
    if device.type == "cpu":
        return [device] * world
    if device.type != "cuda":
        raise ValueError(f"multi-GPU sampling runs on CUDA GPUs (or the CPU); the compute device is {device}")
    base = device.index if device.index is not None else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if base + world > count:
        raise ValueError(f"gpus={world} needs {world} CUDA devices from cuda:{base}, but {count} are visible "
                         f"(CUDA_VISIBLE_DEVICES / ComfyUI's --cuda-device limit them); lower gpus to {count - base}")
    return [torch.device("cuda", base + r) for r in range(world)]
