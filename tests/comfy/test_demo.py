"""scripts/demo.py's pure parts: which tiny files a workflow needs, where they go, and shrinking the run."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from harness.comfy_server import REPO_ROOT

if str(REPO_ROOT) not in sys.path:  # wan_core as a top-level package, as the demo imports it
    sys.path.append(str(REPO_ROOT))
_spec = importlib.util.spec_from_file_location("wanmoe_demo", REPO_ROOT / "scripts" / "demo.py")
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)

API_WORKFLOW = {
    "1": {"class_type": "WanMoEModelLoader", "inputs": {"high": "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
                                                       "low": "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"}},
    "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "umt5_xxl_fp16.safetensors", "type": "wan"}},
    "3": {"class_type": "VAELoader", "inputs": {"vae_name": "wan_2.1_vae.safetensors"}},
    "4": {"class_type": "WanMoEEmptyLatent", "inputs": {"width": 1280, "height": 720, "length": 81, "batch_size": 1}},
    "5": {"class_type": "WanMoESampler", "inputs": {"steps": 40, "seed": 7, "latent": ["4", 0]}},
}


def test_referenced_model_files_are_the_public_names_in_inputs():
    assert demo.referenced_model_files(API_WORKFLOW) == [
        "umt5_xxl_fp16.safetensors", "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
        "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", "wan_2.1_vae.safetensors",
    ]


@pytest.mark.parametrize("name, expected", [
    ("wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", ("dit", "high", True)),
    ("wan2.2_t2v_low_noise_14B_fp16.safetensors", ("dit", "low", False)),
    ("umt5_xxl_fp8_e4m3fn_scaled.safetensors", ("t5", "t5", True)),
    ("wan_2.1_vae.safetensors", ("vae", "vae", False)),
])
def test_component_of_public_file(name, expected):
    assert demo.component_of(name) == expected


def test_component_of_rejects_unknown_names():
    with pytest.raises(ValueError, match="not one of the public file names"):
        demo.component_of("my_model.safetensors")


def test_patch_to_tiny_size_sets_only_size_and_steps():
    patched = demo.patch_to_tiny_size(API_WORKFLOW)
    assert patched["4"]["inputs"] == {"width": 64, "height": 48, "length": 5, "batch_size": 1}
    assert patched["5"]["inputs"] == {"steps": 4, "seed": 7, "latent": ["4", 0]}
    assert API_WORKFLOW["4"]["inputs"]["width"] == 1280  # the original is left alone


def test_patch_to_tiny_size_names_what_it_could_not_find():
    without_sampler = {k: v for k, v in API_WORKFLOW.items() if k != "5"}
    with pytest.raises(ValueError, match="found no steps input"):
        demo.patch_to_tiny_size(without_sampler)


@pytest.mark.comfy
def test_demo_path_makes_a_video_in_the_session_comfyui(comfy_server, tmp_path, monkeypatch):
    # The same steps as `make demo`, on the session's ComfyUI (no second boot), writing into tmp_path.
    monkeypatch.setattr(demo, "OUT_DIR", tmp_path)
    workflow = json.loads(demo.API_WORKFLOW.read_text())
    demo.write_tiny_checkpoints(comfy_server.models_dir, demo.referenced_model_files(workflow))
    video = demo.run_workflow(comfy_server, demo.patch_to_tiny_size(workflow), timeout=600)
    assert video.suffix == ".mp4" and video.stat().st_size > 0
    import av

    with av.open(str(video)) as container:
        frames = [f for f in container.decode(video=0)]
    assert len(frames) == demo.TINY["length"]
    assert (frames[0].width, frames[0].height) == (demo.TINY["width"], demo.TINY["height"])


def test_demo_script_starts_on_its_own():
    """`make demo` runs the script in a fresh interpreter: its own imports (harness, wan_core) must resolve there."""
    import subprocess

    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "demo.py"), "--help"], capture_output=True,
                          text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--keep" in done.stdout
