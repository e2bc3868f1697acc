"""Cancel at sizes where one call takes tens of seconds on the CPU, in the real ComfyUI: the prompt ends within 2 s of
/interrupt (measured from the request to ComfyUI's execution_interrupted timestamp), and the next run is
bit-identical to an undisturbed run. The same for the sampler, the VAE decode and the upscaler.

Sizes (tiny models, CPU):
  sampler 768x768x49: 29952 tokens; one self-attention of cond+uncond is 4 x 2 x 29952^2 x 256 = 1.8 TFLOP, about
    12 s at 150 GFLOP/s, checked every 64-query chunk;
  decode 1024x1024: the first latent frame's step takes about 30 s, checked at every conv band and attention chunk;
  upscale 1024x1024 x4 with a model: about 40 s a frame, checked at every tile and stage.
Each test interrupts a few seconds into the long call, so none of them waits for it to finish.
"""

from __future__ import annotations

import re
import time

import pytest
from safetensors.torch import load_file

from harness.client import PromptInterrupted, output_files
from nodes_testing import log_mark, node_id_of, status_messages, t2v_prompt, wait_for_log, write_tiny_set

pytestmark = pytest.mark.comfy

BOUND = 2.0  # s, from /interrupt to the prompt's end (the bound)
INTO_THE_CALL = 3.0  # s after the node logged its start: well inside the long call


@pytest.fixture(scope="module")
def names(comfy_server) -> dict[str, str]:
    from wan_core.testing.tiny import upscaler

    names = write_tiny_set(comfy_server, "bigcancel")
    upscaler.write_comfy_file(comfy_server.models_dir / "upscale_models" / "wanmoe_bigcancel_x4.pth")
    return {**names, "upscaler": "wanmoe_bigcancel_x4.pth"}


def interrupt_during(server, client, prompt: dict, started: re.Pattern) -> tuple[float, dict]:
    """Queue `prompt`, interrupt INTO_THE_CALL s after `started` appears in the log; (latency, interrupted event)."""
    mark = log_mark(server)
    prompt_id = client.queue(prompt)
    wait_for_log(server, mark, started, timeout=300)
    time.sleep(INTO_THE_CALL)
    asked = time.time()
    client.interrupt(prompt_id)
    with pytest.raises(PromptInterrupted):
        client.wait(prompt_id, timeout=300)
    stopped = status_messages(client.history(prompt_id))["execution_interrupted"]
    return stopped["timestamp"] / 1000.0 - asked, stopped


def files_of(server, outputs: dict, suffix: str) -> list[bytes]:
    """The contents of the outputs ending in `suffix`: file bytes, or a PNG's pixels (its metadata holds the prompt)."""
    import numpy as np
    from PIL import Image

    paths = [server.output_path(f) for f in output_files(outputs) if f["filename"].endswith(suffix)]
    if suffix == ".png":
        return [np.asarray(Image.open(p)).tobytes() for p in paths]
    return [p.read_bytes() for p in paths]


def rerun(client, prompt: dict, node_type: str) -> dict:
    """Run `prompt` from scratch (ComfyUI's output cache cleared), checking that `node_type` executed."""
    client.free(unload_models=False, free_memory=True)
    prompt_id = client.queue(prompt)
    outputs = client.wait(prompt_id, timeout=300)
    assert node_id_of(prompt, node_type) not in status_messages(client.history(prompt_id))["execution_cached"]["nodes"]
    return outputs


def decode_prompt(names: dict[str, str], size: tuple[int, int], prefix: str) -> dict:
    prompt = t2v_prompt(names, width=size[0], height=size[1], length=5, steps=2, prefix=prefix)
    for kind in ("CreateVideo", "SaveVideo"):
        del prompt[node_id_of(prompt, kind)]
    prompt["90"] = {"class_type": "SaveImage",
                    "inputs": {"images": [node_id_of(prompt, "WanMoEVAEDecode"), 0], "filename_prefix": prefix}}
    return prompt


def upscale_prompt(names: dict[str, str], size: int, prefix: str, tile: int = 0) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 2, "color": 0x3366CC}},
        "2": {"class_type": "WanMoEUpscaleModelLoader", "inputs": {"model_name": names["upscaler"]}},
        "3": {"class_type": "WanMoEUpscale", "inputs": {
            "images": ["1", 0], "upscale_model": ["2", 0], "mode": "scale", "scale": 4.0, "width": 64, "height": 64,
            "fit": "crop", "resample": "lanczos", "sharpen": 0.0, "stabilize": 0.5, "color_fix": True,
            "tile_size": tile, "frame_batch": 0}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": prefix}},
    }


def test_cancel_inside_one_long_transformer_block(comfy_server, comfy_client, names):
    small = lambda prefix: t2v_prompt(names, steps=2, seed=5, prefix=f"bigcancel/{prefix}", latent_only=True)  # noqa: E731
    reference = files_of(comfy_server, comfy_client.run(small("reference"), timeout=300), ".latent")
    big = t2v_prompt(names, width=768, height=768, length=49, steps=1, seed=6, prefix="bigcancel/big",
                     latent_only=True)
    latency, stopped = interrupt_during(comfy_server, comfy_client, big, re.compile(r"WanMoESampler: "))
    print(f"\nsampler 768x768x49: interrupt -> prompt ended in {latency * 1000:.0f} ms")
    assert stopped["node_type"] == "WanMoESampler"
    assert latency < BOUND
    after = files_of(comfy_server, rerun(comfy_client, small("after"), "WanMoESampler"), ".latent")
    assert len(after) == 1 and load_file_bytes(after[0]) == load_file_bytes(reference[0])


def load_file_bytes(data: bytes):
    """The latent tensor of a .latent file's bytes, as a comparable list of values."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".latent") as f:
        f.write(data)
        f.flush()
        return load_file(f.name)["latent_tensor"].flatten().tolist()


def test_cancel_inside_one_long_decode_step(comfy_server, comfy_client, names):
    reference = files_of(comfy_server, comfy_client.run(decode_prompt(names, (64, 48), "bigcancel/dec_ref"),
                                                        timeout=300), ".png")
    big = decode_prompt(names, (1024, 1024), "bigcancel/dec_big")
    big[node_id_of(big, "WanMoESampler")]["inputs"]["denoise"] = 0.0  # the empty latent straight to the decoder
    latency, stopped = interrupt_during(comfy_server, comfy_client, big, re.compile(r"decoding a latent of \(1, 16"))
    print(f"\ndecode 1024x1024: interrupt -> prompt ended in {latency * 1000:.0f} ms")
    assert stopped["node_type"] == "WanMoEVAEDecode"
    assert latency < BOUND
    after = files_of(comfy_server, rerun(comfy_client, decode_prompt(names, (64, 48), "bigcancel/dec_after"),
                                         "WanMoEVAEDecode"), ".png")
    assert len(after) == 5 and after == reference


def test_cancel_inside_one_long_upscale(comfy_server, comfy_client, names):
    reference = files_of(comfy_server, comfy_client.run(upscale_prompt(names, 32, "bigcancel/up_ref"), timeout=300),
                         ".png")
    latency, stopped = interrupt_during(comfy_server, comfy_client, upscale_prompt(names, 1024, "bigcancel/up_big"),
                                        re.compile(r"upscaling 2 frame\(s\) 1024x1024"))
    print(f"\nupscale 1024x1024 x4: interrupt -> prompt ended in {latency * 1000:.0f} ms")
    assert stopped["node_type"] == "WanMoEUpscale"
    assert latency < BOUND
    after = files_of(comfy_server, rerun(comfy_client, upscale_prompt(names, 32, "bigcancel/up_after"), "WanMoEUpscale"),
                     ".png")
    assert len(after) == 2 and after == reference
