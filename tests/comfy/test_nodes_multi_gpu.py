"""gpus=2 on the model loader in the real ComfyUI (--cpu: two gloo ranks): end to end twice on the same workers, the
result equals gpus=1, Cancel stops both ranks before the same block, a killed worker gives a clear error in the
history and the next prompt runs, and "Unload models" stops the workers (issue 19)."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from safetensors.torch import load_file

from harness.client import PromptFailed, output_files
from harness.comfy_server import ComfyServer
from nodes_testing import (interrupt_midway, log_mark, log_since, node_id_of, run_seconds, t2v_prompt, wait_for_log,
                           write_tiny_set)

from parallel_testing import alive

pytestmark = pytest.mark.comfy

LAYERS = 8  # blocks per expert, so that a kill or a Cancel lands inside a step
RUN = {"width": 256, "height": 256, "length": 13, "steps": 3}  # 1024 tokens per latent
STARTED = re.compile(r"WanMoE multi-GPU: 2 ranks on cpu, cpu \(gloo\); worker pids (\d+)")
STOPPED = re.compile(r"WanMoE multi-GPU: cancelled; every rank stopped before block rank 0: (\d+) / rank 1: (\d+)")
ACTIVE = re.compile(r"WanMoE multi-GPU: expert high ready on 2 ranks")  # the first call follows at once
RELEASED_WORKERS = re.compile(r"WanMoE multi-GPU: (\d+) worker\(s\) stopped")
REQUEST_SLACK = 0.1  # s: the /interrupt request and ComfyUI writing the interrupted status, on a busy machine


@pytest.fixture(scope="module")
def names(comfy_server) -> dict[str, str]:
    return write_tiny_set(comfy_server, "multigpu", dit_layers=LAYERS)


@pytest.fixture(scope="module")
def own_server():
    server = ComfyServer()
    try:
        yield server.start()
    finally:
        server.cleanup()


def prompt_for(names, *, gpus: int, seed: int, prefix: str, latent_only: bool = True, cfg_low: float = 1.0) -> dict:
    """The 720p workflow at RUN size on `gpus`; cfg_low 1 gives the low-noise steps to Ulysses over both ranks."""
    prompt = t2v_prompt(names, **RUN, seed=seed, prefix=f"multigpu/{prefix}", latent_only=latent_only)
    prompt[node_id_of(prompt, "WanMoEModelLoader")]["inputs"]["gpus"] = gpus
    prompt[node_id_of(prompt, "WanMoESampler")]["inputs"]["cfg_low"] = cfg_low
    return prompt


def latent_of(comfy_server, outputs: dict):
    (entry,) = [f for f in output_files(outputs) if f["filename"].endswith(".latent")]
    return load_file(str(comfy_server.output_path(entry)))["latent_tensor"]


def worker_pid(comfy_server, mark: int) -> int:
    return int(wait_for_log(comfy_server, mark, STARTED, timeout=120).group(1))


def test_gpus_2_runs_end_to_end_twice_on_the_same_workers_and_equals_gpus_1(names, comfy_server, comfy_client):
    comfy_client.free(unload_models=True, free_memory=False)  # no workers yet: the first prompt starts them
    mark = log_mark(comfy_server)
    first = comfy_client.run(prompt_for(names, gpus=2, seed=1, prefix="video_1", latent_only=False), timeout=300)
    pid = worker_pid(comfy_server, mark)
    again = log_mark(comfy_server)
    second = comfy_client.run(prompt_for(names, gpus=2, seed=2, prefix="video_2", latent_only=False), timeout=300)
    for outputs in (first, second):
        assert [f["filename"] for f in output_files(outputs) if f["filename"].endswith(".mp4")]
    assert not STARTED.search(log_since(comfy_server, again)) and alive(pid)  # no new workers for the second prompt

    one = latent_of(comfy_server, comfy_client.run(prompt_for(names, gpus=1, seed=3, prefix="one"), timeout=300))
    two = latent_of(comfy_server, comfy_client.run(prompt_for(names, gpus=2, seed=3, prefix="two"), timeout=300))
    assert one.shape == two.shape == (1, 16, 4, 32, 32)
    # 1e-4 in raw latent units: the engine's 1e-5 (normalised) times the Wan latent std (up to about 3).
    assert float((one - two).abs().max()) < 1e-4 and float(one.abs().max()) > 0.1


def test_cancel_stops_both_ranks_within_one_block_and_the_next_prompt_runs(names, comfy_server, comfy_client):
    reference = latent_of(comfy_server, comfy_client.run(prompt_for(names, gpus=2, seed=5, prefix="reference"),
                                                         timeout=300))
    timed_id = comfy_client.queue(prompt_for(names, gpus=2, seed=6, prefix="timed"))
    comfy_client.wait(timed_id, timeout=300)
    run_s = run_seconds(comfy_client.history(timed_id))
    block_seconds = run_s / (RUN["steps"] * LAYERS)  # an upper bound: embedding, head and solver included

    mark = log_mark(comfy_server)
    # From the moment the high-noise expert is active on both ranks, 3 blocks into its first call.
    stopped, latency = interrupt_midway(comfy_client, prompt_for(names, gpus=2, seed=7, prefix="cancelled"),
                                        3 * block_seconds, started=lambda: wait_for_log(comfy_server, mark, ACTIVE))
    assert stopped["node_type"] == "WanMoESampler"
    assert latency < 2 * block_seconds + REQUEST_SLACK, f"{latency:.3f} s to stop; a block takes {block_seconds:.3f} s"
    blocks = wait_for_log(comfy_server, mark, STOPPED, timeout=30)
    assert blocks.group(1) == blocks.group(2)  # the worker left the call before the same block as rank 0

    after = latent_of(comfy_server, comfy_client.run(prompt_for(names, gpus=2, seed=5, prefix="after"), timeout=300))
    assert bool((after == reference).all())


def test_a_killed_worker_fails_the_prompt_clearly_and_the_next_prompt_runs(own_server):
    # A server of its own: the failure's traceback in ComfyUI's log must not reach the session server's log checks.
    comfy_server, comfy_client = own_server, own_server.client
    names = write_tiny_set(comfy_server, "multigpu_kill", dit_layers=LAYERS)
    mark = log_mark(comfy_server)
    comfy_client.run(prompt_for(names, gpus=2, seed=8, prefix="warm"), timeout=300)  # starts and loads
    pid = worker_pid(comfy_server, mark)
    timed_id = comfy_client.queue(prompt_for(names, gpus=2, seed=9, prefix="timed_kill"))
    comfy_client.wait(timed_id, timeout=300)
    block_seconds = run_seconds(comfy_client.history(timed_id)) / (RUN["steps"] * LAYERS)

    mark = log_mark(comfy_server)
    doomed = comfy_client.queue(prompt_for(names, gpus=2, seed=10, prefix="killed"))
    wait_for_log(comfy_server, mark, ACTIVE, timeout=60)
    time.sleep(3 * block_seconds)  # inside the first call's blocks
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(PromptFailed) as failed:
        comfy_client.wait(doomed, timeout=120)
    details = failed.value.details
    assert details["node_type"] == "WanMoESampler" and details["exception_type"].endswith("WorkerFailed")
    assert re.search(rf"group of 2 processes failed during .*rank 1 \(pid {pid}\) killed by SIGKILL.* the next prompt "
                     "starts new ones", details["exception_message"]), details["exception_message"]

    restart = log_mark(comfy_server)
    comfy_client.run(prompt_for(names, gpus=2, seed=11, prefix="after_kill"), timeout=300)
    assert worker_pid(comfy_server, restart) != pid


def test_unload_models_stops_the_workers(names, comfy_server, comfy_client):
    comfy_client.run(prompt_for(names, gpus=2, seed=12, prefix="before_free"), timeout=300)
    pids = [int(p) for p in STARTED.findall(comfy_server.log_text())]
    live = [pid for pid in pids if alive(pid)]
    assert len(live) == 1  # the one worker of the running group; every earlier one is gone
    mark = log_mark(comfy_server)
    comfy_client.free(unload_models=True, free_memory=False)
    assert wait_for_log(comfy_server, mark, RELEASED_WORKERS, timeout=30).group(1) == "1"
    deadline = time.monotonic() + 10
    while alive(live[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(live[0])
