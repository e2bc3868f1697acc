"""WanMoELoraLoader in the real ComfyUI: the Lightning workflow's steps, strength changes that read no base tensor,
exact removal, and bad LoRA files failing at their node with the server serving the next prompt.

Reads of an expert's file are counted from the server log: the DiT loader logs every read ("dit loader: read N
tensors of FILE", full loads and restores alike) and the cache logs loads and in-place reuses. The bad-file prompts
run in a ComfyUI of their own: ComfyUI prints a traceback for every node error, and the shared server's log is kept
free of the pack's tracebacks (tests/comfy/test_pack_loads.py).
"""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.client import PromptFailed, output_files
from harness.comfy_server import ComfyServer
from nodes_testing import WORKFLOWS, demo, ensure_tiny_models, log_mark, log_since, loads_in, node_id_of, \
    t2v_prompt, workflow_model_files, write_tiny_set
from wan_core.testing.tiny import lora as tiny_lora

pytestmark = pytest.mark.comfy
READS = re.compile(r"dit loader: read (\d+) tensors of (\S+)")
REUSED = re.compile(r"model cache: reused dit (\S+)")


def with_lora(prompt: dict, high: str | None, strength_high: float, low: str | None, strength_low: float) -> dict:
    """`prompt` with a WanMoELoraLoader between the model loader and the sampler."""
    prompt = copy.deepcopy(prompt)
    loader, sampler = node_id_of(prompt, "WanMoEModelLoader"), node_id_of(prompt, "WanMoESampler")
    prompt["20"] = {"class_type": "WanMoELoraLoader",
                    "inputs": {"model": [loader, 0], "lora_high": high or "None", "strength_high": strength_high,
                               "lora_low": low or "None", "strength_low": strength_low}}
    prompt[sampler]["inputs"]["model"] = ["20", 0]
    return prompt


def latent(comfy_server, outputs: dict) -> torch.Tensor:
    (entry,) = [f for f in output_files(outputs) if f["filename"].endswith(".latent")]
    return load_file(str(comfy_server.output_path(entry)))["latent_tensor"]


def tiny_files(server) -> tuple[dict[str, str], dict[str, str]]:
    """Tiny experts, encoder, VAE and a LoRA per expert in a server's folders: (role -> name, role -> LoRA name)."""
    names = write_tiny_set(server, "lora")
    loras = {}
    for role in ("high", "low"):
        name = f"wanmoe_lora_server_{role}.safetensors"
        path = server.models_dir / "loras" / name
        if not path.exists():
            tiny_lora.write_lightning_file(path, role)
        loras[role] = name
    return names, loras


@pytest.fixture(scope="module")
def setup(comfy_server):
    return tiny_files(comfy_server)


@pytest.fixture(scope="module")
def errors_server():
    """A ComfyUI of this module's own, for the prompts that fail on purpose."""
    server = ComfyServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def test_lightning_workflow_reports_2_high_and_2_low_steps(comfy_server, comfy_client):
    stem = "wan22_t2v_a14b_lightning_4step"
    api = json.loads((WORKFLOWS / "api" / f"{stem}.json").read_text())
    ensure_tiny_models(comfy_server, workflow_model_files(stem))
    sampler = node_id_of(api, "WanMoESampler")
    assert {k: api[sampler]["inputs"][k] for k in ("steps", "sampler", "shift", "cfg_high", "cfg_low")} == \
        {"steps": 4, "sampler": "euler", "shift": 5.0, "cfg_high": 1.0, "cfg_low": 1.0}
    mark = log_mark(comfy_server)
    outputs = comfy_client.run(demo.patch_to_tiny_size(api), timeout=300)
    (text,) = outputs[sampler]["text"]
    assert text.startswith("2 steps high-noise (t 1000-937, cfg 1), 2 steps low-noise (t 833-625, cfg 1)"), text
    log = log_since(comfy_server, mark)
    for name in ("wan2.2_t2v_lightx2v_4steps_lora_v1.1_high_noise.safetensors",
                 "wan2.2_t2v_lightx2v_4steps_lora_v1.1_low_noise.safetensors"):
        assert name in log  # the LoRA on each expert is named where it is applied


def test_strength_changes_read_no_base_tensor_and_removal_restores_the_base_exactly(comfy_server, comfy_client, setup):
    names, loras = setup
    base_prompt = t2v_prompt(names, latent_only=True, prefix="lora_server/base")
    base = latent(comfy_server, comfy_client.run(base_prompt, timeout=300))

    full = with_lora(base_prompt, loras["high"], 1.0, loras["low"], 1.0)
    mark = log_mark(comfy_server)
    at_one = latent(comfy_server, comfy_client.run(full, timeout=300))
    first = log_since(comfy_server, mark)
    assert loads_in(first) == [] and READS.findall(first) == []  # applied onto the cached experts, nothing re-read
    assert sorted(REUSED.findall(first)) == sorted([names["high"], names["low"]])

    half = with_lora(base_prompt, loras["high"], 0.5, loras["low"], -0.5)
    mark = log_mark(comfy_server)
    at_half = latent(comfy_server, comfy_client.run(half, timeout=300))
    changed = log_since(comfy_server, mark)
    assert loads_in(changed) == [] and READS.findall(changed) == []
    assert len(REUSED.findall(changed)) == 2
    assert not torch.equal(at_half, at_one) and not torch.equal(at_half, base)

    mark = log_mark(comfy_server)
    removed = latent(comfy_server, comfy_client.run(base_prompt | {"90": {**base_prompt["90"], "inputs": {
        **base_prompt["90"]["inputs"], "filename_prefix": "lora_server/removed"}}}, timeout=300))
    restore = log_since(comfy_server, mark)
    assert torch.equal(removed, base)
    assert loads_in(restore) == []
    # only the Linear weights the LoRA touched are re-read: 2 blocks x 10 Linears per expert
    assert sorted(READS.findall(restore)) == sorted([("20", names["high"]), ("20", names["low"])])


def bad_files(comfy_server, good_name: str) -> dict[str, tuple[str, str]]:
    """name -> (file in loras/, text its error must contain): truncated, wrong rank, a full model, another model."""
    folder = comfy_server.models_dir / "loras"
    good = (folder / good_name).read_bytes()
    out = {}
    (folder / "wanmoe_lora_bad_truncated.safetensors").write_bytes(good[: len(good) - 500])
    out["truncated"] = ("wanmoe_lora_bad_truncated.safetensors", "truncated")
    sd = load_file(str(folder / good_name))
    sd["blocks.1.cross_attn.v.lora_up.weight"] = torch.zeros(256, 3)
    save_file(sd, str(folder / "wanmoe_lora_bad_rank.safetensors"))
    out["rank"] = ("wanmoe_lora_bad_rank.safetensors", "blocks.1.cross_attn.v.lora_down.weight")
    out["full_model"] = ("wanmoe_lora_bad_full_model.safetensors", "this is not a LoRA")
    (folder / out["full_model"][0]).write_bytes((comfy_server.models_dir / "diffusion_models" /
                                                 "wanmoe_lora_high.safetensors").read_bytes())
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(8, 2),
               "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(2, 8)},
              str(folder / "wanmoe_lora_bad_flux.safetensors"))
    out["flux"] = ("wanmoe_lora_bad_flux.safetensors", "Flux or HunyuanVideo")
    return out


def test_bad_lora_files_fail_at_their_node_and_the_next_prompt_runs(errors_server):
    names, loras = tiny_files(errors_server)
    comfy_client = errors_server.client
    base_prompt = t2v_prompt(names, latent_only=True, prefix="lora_server/bad")
    for case, (name, fragment) in bad_files(errors_server, loras["high"]).items():
        with pytest.raises(PromptFailed) as caught:
            comfy_client.run(with_lora(base_prompt, name, 1.0, None, 1.0), timeout=300)
        details = caught.value.details
        assert details["node_type"] == "WanMoELoraLoader", case
        assert name in details["exception_message"] and fragment in details["exception_message"], \
            (case, details["exception_message"])
    # the failures stopped at the LoRA node: no expert was loaded (the text encoder may have run before it)
    assert [name for kind, name in loads_in(errors_server.log_text()) if kind == "dit"] == []
    good = with_lora(base_prompt, loras["high"], 0.75, None, 1.0)
    assert torch.isfinite(latent(errors_server, comfy_client.run(good, timeout=300))).all()
    assert ("dit", names["high"]) in loads_in(errors_server.log_text())
