"""LoRA files that cannot apply fail whole, before any weight changes, naming the file and the first bad key."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from conftest import CONFIG, forward
from wan_core.dit.loader import load_dit
from wan_core.io.checkpoint import CheckpointError
from wan_core.lora import apply_stack, lora_state, read_lora
from wan_core.testing.tiny import lora as tiny_lora


def fails(path, expert_file, *fragments):
    """apply_stack raises a CheckpointError naming the file and every fragment, and the expert is unchanged."""
    model = load_dit(expert_file)
    before = forward(model)
    with pytest.raises(CheckpointError) as caught:
        apply_stack(model, [(str(path), 1.0)], base_path=expert_file)
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    assert lora_state(model) is None and torch.equal(forward(model), before)
    return message


def test_a_truncated_lora_names_the_file(tmp_path, expert_file, lora_files):
    data = lora_files["diffusion_model"].read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[: len(data) - 1000])
    fails(path, expert_file, "truncated", "download it again")


def test_a_rank_that_does_not_fit_names_the_first_bad_key(tmp_path, expert_file, content):
    sd = tiny_lora.lora_state_dict(content, "diffusion_model")
    sd["diffusion_model.blocks.1.self_attn.k.lora_up.weight"] = torch.zeros(CONFIG.dim, 5)  # down has rank 4
    path = tmp_path / "bad_rank.safetensors"
    save_file(sd, str(path))
    fails(path, expert_file, "'diffusion_model.blocks.1.self_attn.k.lora_down.weight'", "[4, 256]", "up [256, 5]",
          "does not fit blocks.1.self_attn.k.weight")


def test_an_up_without_its_down_names_the_key(tmp_path, expert_file, content):
    sd = tiny_lora.lora_state_dict(content, "kohya")
    del sd["lora_unet_blocks_0_ffn_2.lora_down.weight"]
    path = tmp_path / "incomplete.safetensors"
    save_file(sd, str(path))
    fails(path, expert_file, "'lora_unet_blocks_0_ffn_2.lora_up.weight'", "no matching down")


def test_a_full_model_is_not_a_lora(expert_file):
    fails(expert_file, expert_file, "this is not a LoRA", "full Wan diffusion model")


def test_a_lora_for_the_5b_model_says_so(tmp_path, expert_file):
    wide = replace(CONFIG, dim=3072, num_heads=24, ffn_dim=512)
    path = tiny_lora.write_lora(tmp_path / "wan22_5b_lora.safetensors", tiny_lora.random_lora(wide, diffs=False))
    fails(path, expert_file, "no tensor of this LoRA fits", "Wan2.2-TI2V-5B (width 3072)")


def test_a_lora_for_another_family_says_which(tmp_path, expert_file):
    path = tmp_path / "flux_lora.safetensors"
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(8, 2),
               "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(2, 8)}, str(path))
    fails(path, expert_file, "no key of this LoRA names a layer", "Flux or HunyuanVideo")


def test_a_wan21_image_to_video_lora_is_refused(tmp_path, expert_file, content):
    extra = {"diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight": torch.zeros(CONFIG.dim, 4),
             "diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight": torch.zeros(4, CONFIG.dim)}
    path = tiny_lora.write_lora(tmp_path / "wan21_i2v_lora.safetensors", content, extra=extra)
    fails(path, expert_file, "image-to-video", "k_img")


def test_an_unsupported_adapter_format_is_named(tmp_path, expert_file, content):
    extra = {"diffusion_model.blocks.0.self_attn.q.dora_scale": torch.ones(CONFIG.dim, 1)}
    path = tiny_lora.write_lora(tmp_path / "dora.safetensors", content, extra=extra)
    fails(path, expert_file, "DoRA (dora_scale)", "diffusion_model.blocks.0.self_attn.q.dora_scale")


def test_a_missing_lora_file_names_itself(tmp_path, expert_file):
    with pytest.raises(CheckpointError, match="no such file"):
        read_lora(tmp_path / "absent.safetensors", CONFIG)


def test_a_failed_change_leaves_the_applied_stack_in_place(tmp_path, expert_file, lora_files, content):
    model = load_dit(expert_file)
    apply_stack(model, [(str(lora_files["official"]), 1.0)], base_path=expert_file)
    before = forward(model)
    sd = tiny_lora.lora_state_dict(content, "official")
    sd["blocks.0.ffn.0.lora_up.weight"] = torch.zeros(3, 4)
    bad = tmp_path / "bad.safetensors"
    save_file(sd, str(bad))
    with pytest.raises(CheckpointError):
        apply_stack(model, [(str(lora_files["official"]), 0.5), (str(bad), 1.0)], base_path=expert_file)
    assert torch.equal(forward(model), before)
