"""What a long-running ComfyUI server must survive, in the real ComfyUI: requests too large for the machine refused
before any large allocation (with the needed and available memory), a model file replaced under the same name,
size and mtime noticed on the next run, and server RSS back at its first-run level after 20 runs with interrupts
and /free calls.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import psutil
import pytest

from harness.client import PromptFailed, PromptInterrupted, output_files
from nodes_testing import (log_mark, log_since, node_id_of, status_messages, t2v_prompt, wait_for_log,
                           write_tiny_set)

pytestmark = pytest.mark.comfy

RSS_TOLERANCE = 0.05  # the bound
LARGE_ALLOCATION = 1 << 30  # the server's peak may not grow by this much while refusing


@pytest.fixture(scope="module")
def names(comfy_server) -> dict[str, str]:
    return write_tiny_set(comfy_server, "limits")


def server_process(server) -> psutil.Process:
    return psutil.Process(server.process.pid)


def reset_peak(server) -> None:
    """Reset the server's peak RSS (VmHWM) to its current RSS (Linux clear_refs 5)."""
    Path(f"/proc/{server.process.pid}/clear_refs").write_text("5")


def peak_rss(server) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def refusal(server, client, prompt: dict) -> tuple[dict, int]:
    """Run a prompt that must fail; (its execution_error, the server's peak RSS growth while it ran)."""
    reset_peak(server)
    before = server_process(server).memory_info().rss
    with pytest.raises(PromptFailed) as caught:
        client.run(prompt, timeout=300)
    return caught.value.details, peak_rss(server) - before


def test_a_4096x4096x1025_frame_sampling_request_is_refused_before_any_large_allocation(comfy_server, comfy_client,
                                                                                     names):
    prompt = t2v_prompt(names, width=4096, height=4096, length=1025, steps=1, prefix="limits/huge", latent_only=True)
    details, growth = refusal(comfy_server, comfy_client, prompt)
    message = details["exception_message"]
    print(f"\n{message}\nserver peak RSS grew by {growth / 2**20:.0f} MiB")
    assert details["node_type"] == "WanMoESampler" and details["exception_type"].endswith("NotEnoughMemoryError")
    assert "(4096x4096 pixels, 1025 frames, batch 1) needs about" in message and "GiB is available" in message
    assert "To fit: lower the width/height, the length or the batch_size" in message
    assert growth < LARGE_ALLOCATION  # the 4.3 GB empty latent is only reserved, the sampler allocated nothing


def test_the_largest_empty_latent_the_node_allows_is_refused_before_allocating(comfy_server, comfy_client, names):
    prompt = t2v_prompt(names, width=4096, height=4096, length=1025, steps=1, prefix="limits/huge64", latent_only=True)
    prompt[node_id_of(prompt, "WanMoEEmptyLatent")]["inputs"]["batch_size"] = 64
    details, growth = refusal(comfy_server, comfy_client, prompt)
    assert details["node_type"] == "WanMoEEmptyLatent"
    latent_gib = 64 * 16 * 257 * 512 * 512 * 4 / 2**30  # batch x channels x latent frames x 512 x 512 float32
    assert f"an empty latent of 4096x4096, 1025 frames, batch 64 takes {latent_gib:.2f} GiB" in details["exception_message"]
    assert growth < LARGE_ALLOCATION


def test_a_16384x16384_upscale_request_is_refused_before_any_large_allocation(comfy_server, comfy_client):
    frames = math.ceil(1.2 * psutil.virtual_memory().total / (16384 * 16384 * 3 * 4))
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": frames, "color": 0}},
        "2": {"class_type": "WanMoEUpscale", "inputs": {
            "images": ["1", 0], "mode": "exact size", "scale": 2.0, "width": 16384, "height": 16384, "fit": "stretch",
            "resample": "lanczos", "sharpen": 0.0, "stabilize": 0.5, "color_fix": True, "tile_size": 0,
            "frame_batch": 0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "limits/huge_up"}},
    }
    details, growth = refusal(comfy_server, comfy_client, prompt)
    message = details["exception_message"]
    print(f"\n{message}\nserver peak RSS grew by {growth / 2**20:.0f} MiB")
    assert details["node_type"] == "WanMoEUpscale"
    assert f"upscaling {frames} frame(s) to 16384x16384 needs about" in message and "GiB is available" in message
    assert growth < LARGE_ALLOCATION


def latent_bytes(server, outputs: dict) -> bytes:
    (entry,) = [f for f in output_files(outputs) if f["filename"].endswith(".latent")]
    return server.output_path(entry).read_bytes()


def test_a_model_file_replaced_with_equal_size_and_mtime_is_noticed_on_the_next_run(comfy_server, comfy_client,
                                                                                  tmp_path):
    from wan_core.testing.tiny import dit

    names = write_tiny_set(comfy_server, "replaced")
    prompt = t2v_prompt(names, steps=2, prefix="limits/replaced", latent_only=True)
    before = latent_bytes(comfy_server, comfy_client.run(prompt, timeout=300))
    path = comfy_server.models_dir / "diffusion_models" / names["high"]
    old = path.stat()
    new = dit.write_comfy_file(tmp_path / names["high"], role="high", fp8=False, seed=1234)
    os.utime(new, ns=(old.st_atime_ns, old.st_mtime_ns))  # what cp -p or rsync -t leave
    assert new.stat().st_size == old.st_size
    os.replace(new, path) if new.stat().st_dev == old.st_dev else path.write_bytes(new.read_bytes())
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    mark = log_mark(comfy_server)
    prompt_id = comfy_client.queue(prompt)  # the very same prompt
    after = latent_bytes(comfy_server, comfy_client.wait(prompt_id, timeout=300))
    cached = status_messages(comfy_client.history(prompt_id))["execution_cached"]["nodes"]
    assert node_id_of(prompt, "WanMoESampler") not in cached
    assert f"loaded dit {names['high']}" in log_since(comfy_server, mark)
    assert after != before


def test_server_rss_after_20_runs_with_interrupts_and_free_returns_to_its_first_run_level(comfy_server, comfy_client,
                                                                                        names):
    def prompt(seed: int, steps: int = 2) -> dict:  # the whole chain: encode, sample, decode, save a video
        return t2v_prompt(names, steps=steps, seed=seed, prefix=f"limits/rss{seed}")

    process = server_process(comfy_server)
    comfy_client.run(prompt(0), timeout=300)
    first = process.memory_info().rss
    interrupted = freed = 0
    for run in range(1, 21):
        if run % 4 == 3:
            comfy_client.free(unload_models=True, free_memory=True)
            freed += 1
        if run % 4 == 1:  # long enough to be inside the sampler when the interrupt arrives, then cut short
            mark = log_mark(comfy_server)
            prompt_id = comfy_client.queue(prompt(run, steps=50))
            wait_for_log(comfy_server, mark, re.compile(r"WanMoESampler: "), timeout=300)
            comfy_client.interrupt(prompt_id)
        else:
            prompt_id = comfy_client.queue(prompt(run))
        try:
            comfy_client.wait(prompt_id, timeout=300)
        except PromptInterrupted:
            interrupted += 1
    last = process.memory_info().rss
    print(f"\nserver RSS after the first run {first / 2**20:.0f} MiB, after 20 more ({interrupted} interrupted, "
          f"{freed} /free) {last / 2**20:.0f} MiB ({(last / first - 1) * 100:+.1f}%)")
    assert interrupted == 5 and freed == 5
    assert last <= first * (1 + RSS_TOLERANCE)
