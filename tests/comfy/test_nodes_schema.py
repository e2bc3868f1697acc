"""What the real ComfyUI's /object_info serves for each node of the pack: inputs, defaults, options, types (issue 8)."""

from __future__ import annotations

import json

import pytest

from harness.comfy_server import PACK_NAME

pytestmark = pytest.mark.comfy

# node id -> [(input name, type, {option: exact value})] in the order the node declares them.
EXPECTED_INPUTS = {
    "WanMoEModelLoader": [
        ("high_noise_model", "COMBO", {"default": "wan2.2_t2v_high_noise_14B_fp16.safetensors"}),
        ("low_noise_model", "COMBO", {"default": "wan2.2_t2v_low_noise_14B_fp16.safetensors"}),
        ("weight_dtype", "COMBO", {"default": "auto", "options": ["auto", "bf16", "fp16", "fp8_e4m3fn", "fp8_e5m2"]}),
        ("placement", "COMBO", {"default": "auto", "options": ["auto", "resident", "swap", "stream", "shard"]}),
        ("attention", "COMBO", {"default": "sdpa"}),
        ("boundary", "FLOAT", {"default": 0.875, "min": 0.0, "max": 1.0}),
    ],
    "WanMoEModelFromComfy": [
        ("high_noise_model", "MODEL", {}),
        ("low_noise_model", "MODEL", {}),
        ("boundary", "FLOAT", {"default": 0.875, "min": 0.0, "max": 1.0}),
    ],
    "WanMoELoraLoader": [
        ("model", "WANMOE_MODEL", {}),
        ("lora_high", "COMBO", {"default": "None"}),
        ("strength_high", "FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0}),
        ("lora_low", "COMBO", {"default": "None"}),
        ("strength_low", "FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0}),
    ],
    "WanMoETextEncoderLoader": [
        ("text_encoder", "COMBO", {"default": "umt5_xxl_fp16.safetensors"}),
        ("device", "COMBO", {"default": "gpu", "options": ["gpu", "cpu"]}),
        ("dtype", "COMBO", {"default": "auto", "options": ["auto", "bf16", "fp16", "fp32", "fp8_e4m3fn"]}),
    ],
    "WanMoETextEncode": [
        ("text_encoder", "WANMOE_TEXT_ENCODER", {}),
        ("positive", "STRING", {"default": "", "multiline": True}),
        ("negative", "STRING", {"multiline": True}),  # default: the official negative prompt (checked below)
    ],
    "WanMoEEmptyLatent": [
        ("width", "INT", {"default": 1280, "min": 16, "step": 16}),
        ("height", "INT", {"default": 720, "min": 16, "step": 16}),
        ("length", "INT", {"default": 81, "min": 1, "step": 4}),
        ("batch_size", "INT", {"default": 1, "min": 1}),
    ],
    "WanMoESampler": [
        ("model", "WANMOE_MODEL", {}),
        ("positive", "CONDITIONING", {}),
        ("negative", "CONDITIONING", {}),
        ("latent", "LATENT", {}),
        ("seed", "INT", {"default": 0, "min": 0, "control_after_generate": True}),
        ("steps", "INT", {"default": 40, "min": 1}),
        ("cfg_high", "FLOAT", {"default": 4.0, "min": 1.0}),
        ("cfg_low", "FLOAT", {"default": 3.0, "min": 1.0}),
        ("shift", "FLOAT", {"default": 12.0}),
        ("sampler", "COMBO", {"default": "unipc", "options": ["unipc", "dpm++", "euler"]}),
        ("denoise", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0}),
    ],
    "WanMoESchedule": [
        ("steps", "INT", {"default": 40, "min": 1}),
        ("shift", "FLOAT", {"default": 12.0}),
        ("sampler", "COMBO", {"default": "unipc", "options": ["unipc", "dpm++", "euler"]}),
        ("schedule", "COMBO", {"default": "official", "options": ["official", "unipc_grid", "dpm_grid", "simple", "beta"]}),
    ],
    "WanMoEContextWindows": [
        ("window_frames", "INT", {"default": 81, "min": 5, "step": 4}),
        ("overlap_frames", "INT", {"default": 16, "min": 0, "step": 4}),
        ("fuse", "COMBO", {"default": "pyramid", "options": ["pyramid", "linear"]}),
    ],
    "WanMoEPromptTravel": [
        ("text_encoder", "WANMOE_TEXT_ENCODER", {}),
        ("prompts", "STRING", {"default": "", "multiline": True}),
        ("negative", "STRING", {"multiline": True}),
    ],
    "WanMoEExtendLatent": [
        ("vae", "WANMOE_VAE", {}),
        ("images", "IMAGE", {}),
        ("overlap_frames", "INT", {"default": 17, "min": 1, "step": 4}),
        ("length", "INT", {"default": 81, "min": 5, "step": 4}),
    ],
    "WanMoEExtendJoin": [
        ("previous", "IMAGE", {}),
        ("new", "IMAGE", {}),
        ("overlap_frames", "INT", {"default": 17, "min": 0}),
        ("color_match", "BOOLEAN", {"default": True}),
    ],
    "WanMoEVAELoader": [
        ("vae", "COMBO", {"default": "wan_2.1_vae.safetensors"}),
        ("dtype", "COMBO", {"default": "bf16", "options": ["bf16", "fp16", "fp32"]}),
    ],
    "WanMoEVAEDecode": [
        ("vae", "WANMOE_VAE", {}),
        ("samples", "LATENT", {}),
        ("tiling", "COMBO", {"default": "auto", "options": ["auto", "on", "off"]}),
        ("tile_size", "INT", {"default": 0, "min": 0}),
        ("tile_overlap", "INT", {"default": 0, "min": 0}),
    ],
    "WanMoEVAEEncode": [
        ("vae", "WANMOE_VAE", {}),
        ("image", "IMAGE", {}),
        ("tiling", "COMBO", {"default": "auto", "options": ["auto", "on", "off"]}),
        ("tile_size", "INT", {"default": 0, "min": 0}),
        ("tile_overlap", "INT", {"default": 0, "min": 0}),
    ],
    "WanMoEVaceControl": [
        ("positive", "CONDITIONING", {}),
        ("negative", "CONDITIONING", {}),
        ("vae", "WANMOE_VAE", {}),
        ("width", "INT", {"default": 832, "min": 16, "step": 16}),
        ("height", "INT", {"default": 480, "min": 16, "step": 16}),
        ("length", "INT", {"default": 81, "min": 1, "step": 4}),
        ("batch_size", "INT", {"default": 1, "min": 1}),
        ("strength", "FLOAT", {"default": 1.0, "min": 0.0}),
        ("start_percent_high", "FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0}),
        ("end_percent_high", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0}),
        ("start_percent_low", "FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0}),
        ("end_percent_low", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0}),
    ],
    "WanMoEControlPreprocess": [
        ("images", "IMAGE", {}),
        ("mode", "COMBO", {"default": "canny", "options": ["canny", "soft edges", "tile", "grayscale", "none"]}),
        ("low_threshold", "FLOAT", {"default": 100.0}),
        ("high_threshold", "FLOAT", {"default": 200.0}),
        ("blur", "FLOAT", {"default": 2.0, "min": 0.0}),
        ("width", "INT", {"default": 832, "min": 0, "step": 16}),
        ("height", "INT", {"default": 480, "min": 0, "step": 16}),
        ("length", "INT", {"default": 81, "min": 0, "step": 4}),
        ("pad", "COMBO", {"default": "grey", "options": ["grey", "repeat last frame"]}),
    ],
}
# node id -> {optional input name: (type, {option: exact value})}
EXPECTED_OUTPUTS = {  # node id -> (output types, output names)
    "WanMoEModelLoader": (["WANMOE_MODEL"], ["model"]),
    "WanMoEModelFromComfy": (["WANMOE_MODEL"], ["model"]),
    "WanMoELoraLoader": (["WANMOE_MODEL"], ["model"]),
    "WanMoETextEncoderLoader": (["WANMOE_TEXT_ENCODER"], ["text_encoder"]),
    "WanMoETextEncode": (["CONDITIONING", "CONDITIONING"], ["positive", "negative"]),
    "WanMoEEmptyLatent": (["LATENT"], ["LATENT"]),
    "WanMoESampler": (["LATENT"], ["LATENT"]),
    "WanMoESchedule": (["SIGMAS"], ["SIGMAS"]),
    "WanMoEContextWindows": (["WANMOE_WINDOWS"], ["windows"]),
    "WanMoEPromptTravel": (["CONDITIONING", "CONDITIONING"], ["positive", "negative"]),
    "WanMoEExtendLatent": (["LATENT"], ["LATENT"]),
    "WanMoEExtendJoin": (["IMAGE"], ["IMAGE"]),
    "WanMoEVAELoader": (["WANMOE_VAE"], ["vae"]),
    "WanMoEVAEDecode": (["IMAGE"], ["IMAGE"]),
    "WanMoEVAEEncode": (["LATENT"], ["LATENT"]),
    "WanMoEVaceControl": (["CONDITIONING", "CONDITIONING", "LATENT", "INT"],
                          ["positive", "negative", "latent", "trim_latent"]),
    "WanMoEControlPreprocess": (["IMAGE"], ["images"]),
}


# Optional inputs (older API prompts without them still run, with the default).
EXPECTED_OPTIONAL = {
    "WanMoESampler": {
        "step_cache": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0}),
        "schedule": ("COMBO", {"default": "official", "options": ["official", "unipc_grid", "dpm_grid", "simple", "beta"]}),
        "switch": ("COMBO", {"default": "boundary", "options": ["boundary", "step"]}),
        "switch_step": ("INT", {"default": 20, "min": 0, "max": 200}),
        "sigmas": ("SIGMAS", {}),
        "windows": ("WANMOE_WINDOWS", {}),
    },
    "WanMoEModelLoader": {"compute_dtype": ("COMBO", {"default": "auto", "options": ["auto", "fp32", "bf16", "fp16"]}),
                          "compile": ("BOOLEAN", {"default": False}), "fp8_matmul": ("BOOLEAN", {"default": False}),
                          "gpus": ("INT", {"default": 1, "min": 1, "max": 8}),  # WANMOE_GPUS unset
                          "vace_module_high": ("COMBO", {"default": "none"}),
                          "vace_module_low": ("COMBO", {"default": "none"})},
    "WanMoEVaceControl": {"control_video": ("IMAGE", {}), "control_masks": ("MASK", {}),
                          "reference_image": ("IMAGE", {})},
}


@pytest.fixture(scope="module")
def info(comfy_server, comfy_client) -> dict:
    # The public file names are the defaults when those files are present; other tests' files in the shared
    # folders must not change that, so the public tiny files are made present here (not left to test order).
    from nodes_testing import ensure_tiny_models, workflow_model_files

    ensure_tiny_models(comfy_server, workflow_model_files("wan22_t2v_a14b_720p"))
    return comfy_client.object_info()


@pytest.mark.parametrize("node_id", list(EXPECTED_INPUTS))
def test_node_inputs_types_and_defaults(info, node_id):
    node = info[node_id]
    required = node["input"]["required"]
    assert node["input_order"]["required"] == [name for name, _, _ in EXPECTED_INPUTS[node_id]]
    for name, kind, options in EXPECTED_INPUTS[node_id]:
        spec_kind, spec = required[name][0], required[name][1]
        assert spec_kind == kind, f"{node_id}.{name}: type {spec_kind}, expected {kind}"
        for option, value in options.items():
            assert spec.get(option) == value, f"{node_id}.{name}: {option} = {spec.get(option)!r}, expected {value!r}"
    optional = node["input"].get("optional", {})
    assert node["input_order"].get("optional", []) == list(EXPECTED_OPTIONAL.get(node_id, {}))
    for name, (kind, options) in EXPECTED_OPTIONAL.get(node_id, {}).items():
        assert optional[name][0] == kind
        for option, value in options.items():
            assert optional[name][1].get(option) == value, f"{node_id}.{name}: {option}, expected {value!r}"


@pytest.mark.parametrize("node_id", list(EXPECTED_OUTPUTS))
def test_node_outputs_category_and_origin(info, node_id):
    node = info[node_id]
    assert (node["output"], node["output_name"]) == EXPECTED_OUTPUTS[node_id]
    assert node["category"] == "WanMoE"
    assert node["python_module"] == f"custom_nodes.{PACK_NAME}"
    assert node["display_name"] and node["display_name"] != node_id


def test_every_input_of_every_pack_node_has_a_tooltip(info):
    ours = {name: node for name, node in info.items() if node.get("python_module") == f"custom_nodes.{PACK_NAME}"}
    assert set(EXPECTED_INPUTS) <= set(ours)
    missing = [f"{name}.{inp}" for name, node in ours.items() for section in ("required", "optional")
               for inp, spec in node["input"].get(section, {}).items()
               if not (len(spec) > 1 and isinstance(spec[1].get("tooltip"), str) and len(spec[1]["tooltip"]) >= 10)]
    assert missing == []


def test_text_encode_negative_defaults_to_the_official_negative_prompt(info):
    from wan_core.config import NEGATIVE_PROMPT

    assert info["WanMoETextEncode"]["input"]["required"]["negative"][1]["default"] == NEGATIVE_PROMPT
    assert NEGATIVE_PROMPT.startswith("色调艳丽，过曝，静态")


def test_model_loader_lists_single_files_and_official_expert_folders(comfy_server, comfy_client):
    folder = comfy_server.models_dir / "diffusion_models" / "wanmoe_schema_official" / "high_noise_model"
    folder.mkdir(parents=True, exist_ok=True)
    shard = "diffusion_pytorch_model-00001-of-00001.safetensors"
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"patch_embedding.weight": shard}}))
    (folder / shard).write_bytes(b"")  # a shard is listed through its folder's index, never on its own
    comfy_server.add_model("diffusion_models", b"", "wanmoe_schema_single.safetensors")
    options = comfy_client.object_info("WanMoEModelLoader")["input"]["required"]["high_noise_model"][1]["options"]
    assert "wanmoe_schema_official/high_noise_model/diffusion_pytorch_model.safetensors.index.json" in options
    assert "wanmoe_schema_single.safetensors" in options
    assert f"wanmoe_schema_official/high_noise_model/{shard}" not in options


def test_lora_loader_lists_none_first_then_the_loras_folder(comfy_server, comfy_client):
    comfy_server.add_model("loras", b"", "wanmoe_schema_lora.safetensors")
    options = comfy_client.object_info("WanMoELoraLoader")["input"]["required"]["lora_high"][1]["options"]
    assert options[0] == "None" and "wanmoe_schema_lora.safetensors" in options


def test_vace_module_inputs_list_the_vace_folder_and_diffusion_models(comfy_server, comfy_client):
    (comfy_server.models_dir / "vace").mkdir(exist_ok=True)
    (comfy_server.models_dir / "vace" / "wanmoe_schema_Wan2_2_Fun_VACE_module_A14B_HIGH_bf16.safetensors").write_bytes(b"")
    comfy_server.add_model("diffusion_models", b"", "wanmoe_schema_Wan2_2_Fun_VACE_module_A14B_LOW_bf16.safetensors")
    spec = comfy_client.object_info("WanMoEModelLoader")["input"]
    options = spec["optional"]["vace_module_low"][1]["options"]
    assert options[0] == "none"
    assert {"wanmoe_schema_Wan2_2_Fun_VACE_module_A14B_HIGH_bf16.safetensors",
            "wanmoe_schema_Wan2_2_Fun_VACE_module_A14B_LOW_bf16.safetensors"} <= set(options)
    assert "wanmoe_schema_Wan2_2_Fun_VACE_module_A14B_HIGH_bf16.safetensors" not in \
        spec["required"]["high_noise_model"][1]["options"]  # models/vace holds modules, never experts
