"""The real-ComfyUI harness itself: its client reports rejections and failures in ComfyUI's words, its boot fails fast."""

from __future__ import annotations

import time

import pytest

from harness.client import PromptFailed, PromptRejected, output_files
from harness.comfy_server import ComfyBootError, ComfyServer

pytestmark = pytest.mark.comfy


def decode_prompt(vae_name: str) -> dict:
    """Load a VAE, decode an empty latent with it, save the image."""
    return {
        "1": {"class_type": "VAELoader", "inputs": {"vae_name": vae_name}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "harness"}},
    }


def test_queue_rejection_carries_node_errors(comfy_client):
    prompt = decode_prompt("no_such_vae.safetensors")
    with pytest.raises(PromptRejected) as caught:
        comfy_client.queue(prompt)
    assert "no_such_vae.safetensors" in str(caught.value)
    assert "1" in caught.value.node_errors


def test_execution_error_is_raised_with_the_node_message(comfy_server, comfy_client):
    comfy_server.add_model("vae", b"this is not a safetensors file", "harness_broken_vae.safetensors")
    prompt = decode_prompt("harness_broken_vae.safetensors")
    with pytest.raises(PromptFailed) as caught:
        comfy_client.run(prompt, timeout=120)
    assert caught.value.details["node_type"] == "VAELoader"
    assert "VAELoader" in str(caught.value)


def test_successful_run_returns_outputs_and_files(comfy_server, comfy_client):
    prompt = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "harness/latent"}},
    }
    files = output_files(comfy_client.run(prompt, timeout=120))
    assert len(files) == 1 and files[0]["filename"].endswith(".latent")
    on_disk = comfy_server.output_path(files[0])
    assert on_disk.is_file()
    assert comfy_client.view(files[0]["filename"], files[0]["subfolder"]) == on_disk.read_bytes()


def test_boot_fails_fast_with_the_log_tail_when_comfyui_dies(tmp_path):
    server = ComfyServer(base_dir=tmp_path, extra_args=("--no-such-flag",), boot_timeout=120)
    with pytest.raises(ComfyBootError, match="exited with code 2") as caught:
        server.start()
    assert "--no-such-flag" in str(caught.value)  # argparse's complaint, from the log tail
    assert not server.running


def test_interrupt_reaches_the_server(comfy_server, comfy_client):
    # Nothing runs, so ComfyUI only logs what it was asked: a targeted interrupt for an idle id, then a global one.
    # The global flag is cleared when the next prompt starts (execution.py), so later tests are unaffected.
    comfy_client.interrupt("not-running-prompt")
    comfy_client.interrupt()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        log = comfy_server.log_text()
        if "Prompt not-running-prompt is not currently running" in log and "Global interrupt" in log:
            break
        time.sleep(0.2)
    assert "Prompt not-running-prompt is not currently running, skipping interrupt" in log
    assert "Global interrupt (no prompt_id specified)" in log
