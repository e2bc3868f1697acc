"""A worker process of the pool (ranks 1..N-1): joins the group, loads its experts, serves DiT calls until told to stop.

Messages are plain dicts (rank 0 may know wan_core under a module name this process cannot import):
commands arrive on the worker's own queue, replies go to the pool's shared queue. A worker waits for
commands on its queue, never in a collective, so it can idle between prompts for any time. Any error
other than a coordinated Cancel is reported with its traceback and ends the process: its sockets close,
the other ranks' collectives fail at once, and rank 0 tears the group down (the next prompt starts a new one).
The worker also ends when its parent (the ComfyUI process) is gone.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import queue
import resource
import signal
import sys
import threading
import time
import traceback

import torch

from .call import BlockSync, CallCancelled, CallMeta, RunTexts, run_call
from .group import Groups, join, leave

log = logging.getLogger("wan_core.parallel.worker")
PARENT_POLL_S = 1.0


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when the parent dies (Linux), and a watchdog thread for everything else."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_S)
            if os.getppid() != parent_pid:
                os._exit(3)

    threading.Thread(target=watch, name="wanmoe-parent-watch", daemon=True).start()


def _setup(config: dict) -> torch.device:
    """Logging to the parent's stderr, CPU threads shared out, the rank's device selected."""
    rank = config["rank"]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"[WanMoE rank {rank}] %(levelname)s %(name)s: %(message)s")
    device = torch.device(config["device"])
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // config["world"]))
    else:
        torch.cuda.set_device(device)
    return device


def _next(commands: "queue.Queue", parent_pid: int) -> dict:
    """The next command, checking between waits that the parent still exists."""
    while True:
        try:
            return commands.get(timeout=PARENT_POLL_S)
        except queue.Empty:
            if os.getppid() != parent_pid:
                raise SystemExit(3) from None


def _factory(spec: str):
    """'package.module:function' -> the function (imported here under this process's module names)."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def peak_bytes(device: torch.device) -> int:
    """Peak memory of this rank so far: CUDA allocator peak on a GPU, the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class Worker:
    """The command loop of one worker rank."""

    def __init__(self, groups: Groups, commands: "queue.Queue", replies: "queue.Queue", parent_pid: int) -> None:
        self.groups, self.commands, self.replies, self.parent_pid = groups, commands, replies, parent_pid
        self.source = None
        self.texts = RunTexts()  # this rank's text contexts of the current run
        self.used: dict[str, object] = {}  # expert name -> the expert, for those that ran in the current run

    def reply(self, kind: str, seq: int, **payload: object) -> None:
        self.replies.put({"kind": kind, "rank": self.groups.rank, "seq": seq, **payload})

    def serve(self) -> None:
        """Run commands until 'stop' (or an error, which propagates to `main`)."""
        while True:
            message = _next(self.commands, self.parent_pid)
            kind, seq = message["kind"], message.get("seq", -1)
            if kind == "stop":
                return
            if kind == "job":
                self._release()
                self.source = _factory(message["factory"])(device=self.groups.device, **message["kwargs"])
            elif kind == "activate":
                self.source.expert(message["expert"])
                self.reply("ready", seq)
            elif kind == "forward":
                self._forward(CallMeta.from_message(message["meta"]), seq)
            elif kind == "forget_text":
                self._forget_text(message.get("expert"))
            elif kind == "release":
                self._release()
            elif kind == "stats":
                self.reply("stats", seq, peak_bytes=peak_bytes(self.groups.device), texts=len(self.texts.parts),
                           kept_texts={name: m.kept_texts for name, m in self.used.items()})
            elif kind == "reset_stats" and self.groups.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.groups.device)

    def _forward(self, meta: CallMeta, seq: int) -> None:
        model = self.source.expert(meta.expert)
        self.used[meta.expert] = model
        try:
            with torch.no_grad():
                run_call(model, meta, self.groups, BlockSync(self.groups.device), self.texts)
        except CallCancelled as stop:
            log.info("call cancelled by rank 0 before block %d", stop.block)
            self.reply("cancelled", seq, block=stop.block)

    def _forget_text(self, expert: str | None = None) -> None:
        """Drop the run's contexts and `expert`'s text embeddings and K/V (None: every expert's, the run ended)."""
        self.texts.clear()
        for name in [expert] if expert is not None else list(self.used):
            model = self.used.pop(name, None)
            if model is not None:
                model.forget_text()

    def _release(self) -> None:
        self._forget_text()
        if self.source is not None:
            source, self.source = self.source, None
            source.release()


def main(config: dict) -> None:
    """Entry of a worker process (see spawn_entry): hello, join the group, serve, report any error, leave."""
    commands, replies, rank = config["commands"], config["replies"], config["rank"]
    _die_with_parent(config["parent_pid"])
    device = _setup(config)
    replies.put({"kind": "hello", "rank": rank, "seq": -1, "pid": os.getpid()})
    code = 0
    try:
        message = _next(commands, config["parent_pid"])
        if message["kind"] != "join":
            return
        groups = join(rank, config["world"], device, timeout=config["timeout"], port=message["port"])
        replies.put({"kind": "joined", "rank": rank, "seq": -1})
        Worker(groups, commands, replies, config["parent_pid"]).serve()
    except SystemExit:
        code = 3
    except BaseException as exc:
        log.error("stopping after an error: %s", exc)
        replies.put({"kind": "error", "rank": rank, "seq": -1, "error": f"{type(exc).__name__}: {exc}",
                     "traceback": traceback.format_exc()})
        code = 1
    finally:
        _exit(replies, code)


def _exit(replies: "queue.Queue", code: int) -> None:
    """Flush the replies, leave the group (an error exit skips it: a broken group may block in teardown), exit."""
    replies.close()
    replies.join_thread()
    if code == 0:
        leave()
    os._exit(code)
