"""No worker outlives rank 0: a normal exit stops them (atexit), and so does rank 0 being SIGKILLed (no atexit)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from parallel_testing import REPO_ROOT, alive

# Rank 0 in a fresh interpreter: start a 2-rank CPU pool, print the worker pids, then exit or wait to be killed.
_RANK0 = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
from wan_core.parallel.pool import get_pool
pool = get_pool([torch.device("cpu")] * 2)
print(json.dumps(pool.pids), flush=True)
if sys.argv[2] == "wait":
    time.sleep(600)
"""


def start_rank0(mode: str) -> tuple[subprocess.Popen, list[int]]:
    process = subprocess.Popen([sys.executable, "-c", _RANK0, str(REPO_ROOT), mode], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    assert line, "rank 0 printed no worker pids"
    return process, json.loads(line)


def gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(alive(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.timeout(120)
def test_workers_stop_when_rank0_exits_normally():
    process, pids = start_rank0("exit")
    assert process.wait(timeout=60) == 0
    assert gone_within(pids, 10.0)


@pytest.mark.timeout(120)
def test_workers_stop_when_rank0_is_killed():
    process, pids = start_rank0("wait")
    try:
        assert all(alive(pid) for pid in pids)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        assert gone_within(pids, 10.0)  # PR_SET_PDEATHSIG, or the parent watchdog within a second
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
