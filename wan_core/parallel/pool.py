"""Rank 0's worker pool: N-1 worker processes started on first use, kept for the next prompt, torn down on failure.

The ComfyUI process is rank 0. `get_pool(devices)` starts (or reuses) the workers with torch.multiprocessing
(spawn): each says hello once its imports are done, then all ranks join one process group (group.join).
Rank 0 waits for workers only on the reply queue, polling their liveness (and Cancel), never in an unbounded
collective. Any failure (a worker's error, a dead or hung worker, a collective error on rank 0) ends in
`fail()`: the message names the ranks and what happened, the workers are stopped (SIGKILL if they do not
stop), the group is destroyed, and the next `get_pool` starts afresh. `release_pool()` ("Unload models",
process exit) stops the workers; no worker outlives the ComfyUI process (see worker._die_with_parent).
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import re
import runpy
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.multiprocessing as mp

from ..dit.model import WanDiT
from ..memory.pace import unwatched
from . import spawn_entry
from .call import BlockSync, CallMeta, RunTexts, rank0_inputs, run_call
from .group import join, leave, make_store
from .plan import plan_layout
from .sharding import forget as forget_shards

log = logging.getLogger("wan_core.parallel.pool")
TIMEOUT_ENV, STARTUP_ENV = "WANMOE_PARALLEL_TIMEOUT", "WANMOE_PARALLEL_STARTUP_TIMEOUT"
DEFAULT_TIMEOUT_S, DEFAULT_STARTUP_S = 120.0, 300.0
POLL_S = 0.1
_GLOO_PREFIX = re.compile(r"\[[^\]]*third_party/gloo/[^\]]*\] ")  # gloo's source location in its messages
STOP_GRACE_S = 5.0


class WorkerFailed(RuntimeError):
    """The multi-GPU worker group failed; the message says which rank, what happened and what happens next."""


def _seconds(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    try:
        return float(value) if value else default
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number of seconds") from None


@contextmanager
def _main_not_reimported() -> Iterator[None]:
    """Hide __main__'s file and spec while a worker starts: spawn would run ComfyUI's main.py again in it."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    if main is not None:
        main.__dict__.pop("__file__", None)
        main.__spec__ = None
    try:
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "alive"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class WorkerPool:
    """Ranks 1..N-1 as processes on `devices[1:]`, rank 0 in this process on `devices[0]`."""

    def __init__(self, devices: list[torch.device], *, timeout: float | None = None,
                 startup_timeout: float | None = None) -> None:
        self.devices = [torch.device(d) for d in devices]
        self.world = len(self.devices)
        self.timeout = timeout if timeout is not None else _seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
        self.startup_timeout = startup_timeout if startup_timeout is not None else _seconds(STARTUP_ENV, DEFAULT_STARTUP_S)
        self.processes: list = []
        self.commands: list = []
        self.replies = None
        self.groups = None
        self.errors: dict[int, dict] = {}
        self.closed = False
        self._seq = 0
        self.last_layout = None  # the layout of the latest call
        self.last_call: CallMeta | None = None  # ... and what was sent for it
        self.last_stop: dict[int, int] = {}  # rank -> block before which the latest cancelled call stopped
        self.texts = RunTexts()  # rank 0's text contexts of the current run

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers (rank 1 first)."""
        return [p.pid for p in self.processes]

    def start(self) -> "WorkerPool":
        """Spawn the workers, wait for their hello, join the group with them."""
        context = mp.get_context("spawn")
        self.replies = context.Queue()
        started = time.monotonic()
        for rank in range(1, self.world):
            commands = context.Queue()
            config = {"rank": rank, "world": self.world, "device": str(self.devices[rank]), "timeout": self.timeout,
                      "commands": commands, "replies": self.replies, "parent_pid": os.getpid()}
            process = context.Process(target=runpy.run_path, args=(str(Path(spawn_entry.__file__)),),
                                      kwargs={"init_globals": {"WANMOE_WORKER": config},
                                              "run_name": spawn_entry.RUN_NAME},
                                      name=f"wanmoe-rank{rank}", daemon=True)
            with _main_not_reimported():
                process.start()
            self.commands.append(commands)
            self.processes.append(process)
        self.wait("hello", -1, deadline=started + self.startup_timeout)
        store = make_store(self.world, self.timeout)
        self.send({"kind": "join", "port": store.port})
        self.groups = join(0, self.world, self.devices[0], timeout=self.timeout, store=store)
        self.wait("joined", -1, deadline=time.monotonic() + self.timeout)
        log.info("WanMoE multi-GPU: %d ranks on %s (%s); worker pids %s, started in %.1f s", self.world,
                 ", ".join(map(str, self.devices)), torch.distributed.get_backend(), " ".join(map(str, self.pids)),
                 time.monotonic() - started)
        return self

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def send(self, message: dict) -> None:
        """Put one command on every worker's queue."""
        for commands in self.commands:
            commands.put(message)

    def wait(self, kind: str, seq: int, *, deadline: float | None = None,
             check_cancel: Callable[[], None] | None = None) -> dict[int, dict]:
        """Every worker's reply `kind` to command `seq`; fails on a worker error, a dead worker or the deadline."""
        pending, got = set(range(1, self.world)), {}
        while pending:
            try:
                message = self.replies.get(timeout=POLL_S)
            except queue.Empty:
                dead = [r for r in pending if self.processes[r - 1].exitcode is not None]
                if dead:
                    raise self.fail(f"waiting for '{kind}'")
                if deadline is not None and time.monotonic() > deadline:
                    raise self.fail(f"waiting for '{kind}': no answer from rank(s) {sorted(pending)} in time")
                if check_cancel is not None:
                    check_cancel()
                continue
            if message["kind"] == "error":
                self.errors[message["rank"]] = message
                raise self.fail(f"waiting for '{kind}'")
            if message["kind"] == kind and message["seq"] == seq:
                pending.discard(message["rank"])
                got[message["rank"]] = message
        return got

    def forward(self, expert: str, model: WanDiT, x: torch.Tensor, t: torch.Tensor | float,
                context: torch.Tensor | list[torch.Tensor], before_block: Callable[[int], None] | None = None
                ) -> torch.Tensor:
        """One DiT call on all ranks (rank 0's `model` is its copy of `expert`): the velocity, as WanDiT.forward."""
        self.check_open()
        text_id, send_text = self.texts.lookup(context)
        inputs = rank0_inputs(model, x, t, context, send_text)
        layout = plan_layout(self.world, x.shape[0], model.config.num_heads)
        meta = CallMeta(expert, tuple(x.shape), (model.config.text_len, model.config.text_dim), layout.cfg,
                        layout.ulysses, text_id, send_text)
        seq = self.next_seq()
        self.send({"kind": "forward", "seq": seq, "meta": meta.to_message()})
        self.last_layout, self.last_call = layout, meta
        sync = BlockSync(self.groups.device, before_block)
        try:
            with unwatched():  # Cancel is agreed between blocks (BlockSync); a check inside a collective would hang
                return run_call(model, meta, self.groups, sync, self.texts, inputs)
        except BaseException as exc:
            if sync.stopped:  # every rank left at the same block: the group is in step
                self._confirm_stop(seq, sync.block)
                raise
            raise self.fail("a DiT forward", exc) from exc

    def forget_text(self, expert: str) -> None:
        """`expert` is done for this run (the switch, or the run's end): every rank drops its text contexts (sent again
        if the run goes on) and that expert's text embeddings and keys/values."""
        self.texts.clear()
        if not self.closed:
            self.send({"kind": "forget_text", "seq": self.next_seq(), "expert": expert})

    def _confirm_stop(self, seq: int, block: int) -> None:
        """After a coordinated Cancel: each worker's report of the block it stopped before (`last_stop`)."""
        try:
            got = self.wait("cancelled", seq, deadline=time.monotonic() + self.timeout)
        except WorkerFailed as failure:  # the user's Cancel stays the error they see
            log.error("%s", failure)
            return
        self.last_stop = {0: block, **{rank: m["block"] for rank, m in got.items()}}
        log.info("WanMoE multi-GPU: cancelled; every rank stopped before block %s",
                 " / ".join(f"rank {r}: {b}" for r, b in sorted(self.last_stop.items())))

    def check_open(self) -> None:
        if self.closed:
            raise WorkerFailed("the multi-GPU worker group was shut down; queue the prompt again to restart it")
        dead = [p for p in self.processes if p.exitcode is not None]
        if dead:
            raise self.fail("starting a command")

    def fail(self, during: str, exc: BaseException | None = None) -> WorkerFailed:
        """Tear the group down after a failure and return the error to raise (which rank, what, what next)."""
        self._collect_errors(grace=2.0 if exc is not None else 0.5)
        timed_out = exc is not None and "timed out" in str(exc).lower()
        ranks = [self._rank_state(rank, process, timed_out) for rank, process in enumerate(self.processes, start=1)]
        found = [text for text, known in ranks if known]
        if exc is not None:
            log.error("WanMoE multi-GPU: rank 0 during %s: %s: %s", during, type(exc).__name__, exc)
        if not found and exc is not None:  # no worker to blame: rank 0's own error is the news
            found = [f"rank 0: {type(exc).__name__}: {_GLOO_PREFIX.sub('', (str(exc).splitlines() or [''])[0])[:300]}"]
        self.close(broken=True)
        return WorkerFailed(f"WanMoE multi-GPU: the group of {self.world} processes failed during {during}: "
                            f"{'; '.join(found or [text for text, _ in ranks])}. The workers were stopped; the next "
                            f"prompt starts new ones (or runs on one GPU if they cannot start). If this repeats, "
                            f"see the worker's log lines ([WanMoE rank N]) or set gpus to 1.")

    def _rank_state(self, rank: int, process: object, timed_out: bool) -> tuple[str, bool]:
        """'rank N (pid P) <what happened>' and whether that is a finding (not just 'alive')."""
        error = self.errors.get(rank)
        if error:
            state = f"failed: {_GLOO_PREFIX.sub('', error['error'])[:300]}"
        elif process.exitcode is not None:
            state = _exit_text(process.exitcode)
        elif timed_out:
            state = f"alive but not answering for {self.timeout:g} s (hung)"
        else:
            return f"rank {rank} (pid {process.pid}) alive", False
        return f"rank {rank} (pid {process.pid}) {state}", True

    def _collect_errors(self, grace: float) -> None:
        """Gather the error reports workers send as they fail (they may arrive just after rank 0's own error)."""
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                message = self.replies.get(timeout=POLL_S)
            except (queue.Empty, OSError, ValueError):
                if all(p.exitcode is not None for p in self.processes):
                    break
                continue
            if message.get("kind") == "error":
                self.errors[message["rank"]] = message
                log.error("WanMoE multi-GPU rank %d:\n%s", message["rank"], message.get("traceback", ""))

    def stats(self) -> dict[int, int]:
        """Peak memory bytes per rank (CUDA allocator peak, or peak RSS on the CPU), rank 0 included."""
        from .worker import peak_bytes

        return {0: peak_bytes(self.devices[0]), **{r: m["peak_bytes"] for r, m in self._worker_stats().items()}}

    def worker_texts(self) -> dict[int, tuple[int, dict[str, int]]]:
        """Per worker rank: (text contexts it holds for the run, {expert: text inputs it keeps embedded})."""
        return {r: (m["texts"], m["kept_texts"]) for r, m in self._worker_stats().items()}

    def _worker_stats(self) -> dict[int, dict]:
        seq = self.next_seq()
        self.send({"kind": "stats", "seq": seq})
        return self.wait("stats", seq, deadline=time.monotonic() + self.timeout)

    def close(self, broken: bool = False) -> None:
        """Stop the workers (a stop command, then SIGTERM/SIGKILL), leave the group; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        if not broken:
            for commands in self.commands:
                _quietly(commands.put, {"kind": "stop"})
        deadline = time.monotonic() + (0 if broken else STOP_GRACE_S)
        for process in self.processes:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            if process.exitcode is None:
                process.kill()
                process.join(timeout=STOP_GRACE_S)
        forget_shards()
        leave()
        for q in [*self.commands, self.replies]:
            if q is not None:
                q.cancel_join_thread()
                q.close()
        log.info("WanMoE multi-GPU: %d worker(s) stopped", len(self.processes))


def _quietly(fn: Callable, *args: object) -> None:
    try:
        fn(*args)
    except (OSError, ValueError):
        pass


_lock = threading.Lock()
_pool: WorkerPool | None = None


def get_pool(devices: list[torch.device]) -> WorkerPool:
    """The running pool on exactly `devices` (rank 0 first), started now if there is none or it has other devices."""
    global _pool
    devices = [torch.device(d) for d in devices]
    with _lock:
        if _pool is not None and not _pool.closed and _pool.devices == devices:
            dead = [(r, p) for r, p in enumerate(_pool.processes, start=1) if p.exitcode is not None]
            if not dead:
                return _pool
            log.warning("WanMoE multi-GPU: %s while idle; starting new workers", "; ".join(
                f"rank {r} (pid {p.pid}) {_exit_text(p.exitcode)}" for r, p in dead))
            _pool.close(broken=True)
        elif _pool is not None:
            _pool.close()
        pool = WorkerPool(devices)
        try:
            pool.start()
        except BaseException:
            pool.close(broken=True)
            raise
        _pool = pool
        return pool


def current_pool() -> WorkerPool | None:
    """The pool if one is running."""
    return _pool if _pool is not None and not _pool.closed else None


def release_pool() -> bool:
    """Stop the workers ("Unload models", process exit); True when a pool was running."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is None or pool.closed:
        return False
    pool.close()
    return True


atexit.register(release_pool)
