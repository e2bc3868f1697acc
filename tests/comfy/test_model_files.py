"""The files users have, in the real ComfyUI: GGUF experts, a diffusers pipeline folder and a sharded Hugging Face
text-encoder folder appear once each in the right dropdown (nothing else from them anywhere), and workflows run."""

from __future__ import annotations

import pytest

from harness.client import output_files
from nodes_testing import node_id_of, t2v_prompt, write_tiny_set
from wan_core.testing.tiny import dit, gguf as tiny_gguf, t5
from wan_core.testing.tiny.pipeline import write_pipeline

pytestmark = pytest.mark.comfy

PIPE = "wanmoe_files_pipe/Wan2.2-T2V-A14B-Diffusers"
INDEX = "diffusion_pytorch_model.safetensors.index.json"


@pytest.fixture(scope="module")
def files(comfy_server) -> dict[str, str]:
    models = comfy_server.models_dir
    if not (models / "diffusion_models" / PIPE).exists():
        write_pipeline(models / "diffusion_models" / PIPE, seed=5)
    names = {}
    for role in ("high", "low"):
        names[role] = f"wanmoe_files_{role}_noise_Q4_K_M.gguf"
        path = models / "diffusion_models" / names[role]
        if not path.exists():
            sd = dit.random_state_dict(dit.TINY_DIT_CONFIG, seed={"high": 31, "low": 37}[role])
            tiny_gguf.write_gguf(path, sd, "Q4_K_M")
    hf = models / "text_encoders" / "wanmoe_files_umt5"
    if not hf.exists():
        t5.write_hf_folder(hf, t5.TINY_T5, seed=2, max_shard_size="8MB")
    return names


def options(comfy_client, node: str, field: str) -> list[str]:
    return comfy_client.object_info(node)["input"]["required"][field][1]["options"]


def test_each_folder_model_is_one_entry_in_the_right_dropdown(files, comfy_client):
    experts = options(comfy_client, "WanMoEModelLoader", "high_noise_model")
    encoders = options(comfy_client, "WanMoETextEncoderLoader", "text_encoder")
    vaes = options(comfy_client, "WanMoEVAELoader", "vae")
    assert [o for o in experts if o.startswith("wanmoe_files_pipe/")] == [f"{PIPE}/transformer/{INDEX}",
                                                                          f"{PIPE}/transformer_2/{INDEX}"]
    assert [o for o in encoders if o.startswith("wanmoe_files_")] == [f"{PIPE}/text_encoder", "wanmoe_files_umt5"]
    assert [o for o in vaes if o.startswith("wanmoe_files_")] == [f"{PIPE}/vae"]
    assert {files["high"], files["low"]} <= set(experts)
    assert not any(o.startswith("wanmoe_files_") for o in options(comfy_client, "WanMoEUpscaleModelLoader", "model_name"))


def run(comfy_client, prompt: dict) -> list[dict]:
    outputs = comfy_client.run(prompt, timeout=600)
    videos = [f for f in output_files(outputs) if f["filename"].endswith(".mp4")]
    assert len(videos) == 1
    return videos


def test_a_workflow_runs_from_the_pipeline_folder_alone(files, comfy_client):
    prompt = t2v_prompt(prefix="wanmoe_files_pipeline", steps=2)
    prompt[node_id_of(prompt, "WanMoEModelLoader")]["inputs"].update(
        high_noise_model=f"{PIPE}/transformer/{INDEX}", low_noise_model=f"{PIPE}/transformer_2/{INDEX}")
    prompt[node_id_of(prompt, "WanMoETextEncoderLoader")]["inputs"]["text_encoder"] = f"{PIPE}/text_encoder"
    prompt[node_id_of(prompt, "WanMoEVAELoader")]["inputs"]["vae"] = f"{PIPE}/vae"
    run(comfy_client, prompt)


def test_a_gguf_workflow_runs_with_a_sharded_hf_text_encoder_folder(files, comfy_server, comfy_client):
    names = write_tiny_set(comfy_server, "files")
    prompt = t2v_prompt({"high": files["high"], "low": files["low"], "t5": "wanmoe_files_umt5", "vae": names["vae"]},
                        prefix="wanmoe_files_gguf", steps=2)
    run(comfy_client, prompt)
