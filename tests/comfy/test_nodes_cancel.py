"""Cancel during WanMoESampler in the real ComfyUI: the prompt stops within one transformer block, the history says
it was interrupted, and the next prompt runs normally and gives the uninterrupted run's output (issue 8, issue 7).
Both routes into the sampler: our loader's experts, and ComfyUI's own models (UNETLoader -> WanMoEModelFromComfy,
whose Cancel check runs as a Wan block patch)."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from harness.client import output_files
from nodes_testing import (interrupt_midway, node_id_of, run_seconds, status_messages, t2v_prompt,
                           with_core_model_loaders, write_tiny_set)

pytestmark = pytest.mark.comfy

LAYERS = 8  # transformer blocks per expert: a step-level check would overshoot by up to 8 blocks, a block-level by 1
# 256x256, 13 frames -> 4 x 16 x 16 = 1024 tokens per latent: a block takes ~40-150 ms on a (loaded) 2-core CPU.
RUN = {"width": 256, "height": 256, "length": 13, "steps": 3}
# ComfyUI's own Wan model is several times slower on a CPU (fp16 weights cast per layer, its CPU attention): 8x
# fewer tokens (2 latent frames of 16 x 16) keep that route's run short while a block still takes tens of ms.
RUNS = {"our_loader": RUN, "core_models": {**RUN, "width": 128, "height": 128, "length": 5}}
REQUEST_SLACK = 0.1  # s: the /interrupt request and ComfyUI writing the interrupted status, on a busy machine


@pytest.fixture(scope="module")
def names(comfy_server) -> dict[str, str]:
    return write_tiny_set(comfy_server, "cancel", dit_layers=LAYERS)


def latent_of(comfy_server, outputs: dict):
    (entry,) = [f for f in output_files(outputs) if f["filename"].endswith(".latent")]
    return load_file(str(comfy_server.output_path(entry)))["latent_tensor"]


@pytest.mark.parametrize("route", ["our_loader", "core_models"])
def test_cancel_stops_within_one_block_and_the_next_prompt_matches_an_uninterrupted_run(names, comfy_server,
                                                                                       comfy_client, route):
    def prompt(seed: int, prefix: str, steps: int = RUN["steps"]) -> dict:
        run = {**RUNS[route], "steps": steps}
        built = t2v_prompt(names, **run, seed=seed, prefix=f"cancel/{route}/{prefix}", latent_only=True)
        return with_core_model_loaders(built) if route == "core_models" else built

    sampler = node_id_of(prompt(0, "x"), "WanMoESampler")
    reference = latent_of(comfy_server, comfy_client.run(prompt(5, "reference"), timeout=300))  # loads, encodes

    # The sampler's time per block, from a run where only the sampler (and SaveLatent) execute.
    timed_id = comfy_client.queue(prompt(6, "timed"))
    comfy_client.wait(timed_id, timeout=300)
    timed = comfy_client.history(timed_id)
    assert set(status_messages(timed)["execution_cached"]["nodes"]) >= {"1", "2", "3", "4"}
    run_s = run_seconds(timed)
    block_seconds = run_s / (RUN["steps"] * LAYERS)  # an upper bound: embedding, head and solver included

    # 4x the timed run's steps: the interrupt at 0.4 of the timed run lands inside the sampler even when the machine's
    # load drops by several times between the two runs (at load ~10 a run once finished before its interrupt).
    stopped, latency = interrupt_midway(comfy_client, prompt(7, "cancelled", steps=4 * RUN["steps"]), 0.4 * run_s)
    assert (stopped["node_type"], stopped["node_id"]) == ("WanMoESampler", sampler)
    assert sampler not in stopped["executed"]
    print(f"\nsampler run {run_s:.2f} s = {RUN['steps']} steps x {LAYERS} blocks -> <= {block_seconds * 1000:.0f} ms "
          f"per block; interrupt -> prompt ended: {latency * 1000:.0f} ms ({latency / block_seconds:.2f} blocks)")
    assert latency < 2 * block_seconds + REQUEST_SLACK, (f"interrupt took {latency:.3f} s to stop the prompt; one block takes at most "
                                         f"{block_seconds:.3f} s (a step {block_seconds * LAYERS:.3f} s)")

    after_id = comfy_client.queue(prompt(5, "after"))
    after = latent_of(comfy_server, comfy_client.wait(after_id, timeout=300))
    assert sampler not in status_messages(comfy_client.history(after_id))["execution_cached"]["nodes"]  # it ran again
    run = RUNS[route]
    assert after.shape == reference.shape == (1, 16, (run["length"] - 1) // 4 + 1, run["height"] // 8, run["width"] // 8)
    assert bool((after == reference).all())
