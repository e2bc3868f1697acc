"""Wrong files given as a DiT: one clear CheckpointError each, naming the file and what was found."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from wan_core.io.checkpoint import CheckpointError
from wan_core.dit.model import DiTConfig
from wan_core.dit.loader import inspect_dit, load_dit
from wan_core.testing.tiny import dit as tiny
from wan_core.testing.tiny.dit import TINY_DIT_CONFIG, random_state_dict

SMALL = DiTConfig(dim=128, ffn_dim=128, num_heads=1, num_layers=2, text_dim=32)


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return random_state_dict(SMALL, seed=0)


def load_error(path: Path) -> str:
    """The message load_dit raises (inspect_dit must raise the same kind of error)."""
    with pytest.raises(CheckpointError) as caught:
        load_dit(path)
    assert str(path) in str(caught.value) or str(path.parent) in str(caught.value)
    return str(caught.value)


def test_vae_file(tmp_path):
    path = tmp_path / "wan_2.1_vae.safetensors"
    save_file({"encoder.conv1.weight": torch.zeros(8, 3, 3, 3, 3), "decoder.middle.0.residual.0.gamma": torch.ones(8, 1, 1, 1),
               "conv1.weight": torch.zeros(32, 32, 1, 1, 1)}, str(path))
    message = load_error(path)
    assert "a VAE" in message and "not a Wan diffusion model" in message and "patch_embedding.weight" in message
    with pytest.raises(CheckpointError, match="VAE"):
        inspect_dit(path)


def test_text_encoder_file(tmp_path):
    path = tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    save_file({"shared.weight": torch.zeros(10, 4), "spiece_model": torch.zeros(5, dtype=torch.uint8),
               "encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(4, 4)}, str(path))
    message = load_error(path)
    assert "text encoder" in message and "not a Wan diffusion model" in message


def test_wan22_5b_model(tmp_path):
    five_b = DiTConfig(dim=128, ffn_dim=128, num_heads=1, num_layers=2, in_dim=48, out_dim=48, text_dim=32)
    path = tiny.write_single_file(tmp_path / "wan2.2_ti2v_5B_fp16.safetensors", random_state_dict(five_b))
    message = load_error(path)
    assert "Wan2.2-TI2V-5B" in message and "48-channel" in message


def test_image_to_video_model(tmp_path):
    i2v = DiTConfig(dim=128, ffn_dim=128, num_heads=1, num_layers=2, in_dim=36, text_dim=32)
    path = tiny.write_official_folder(tmp_path / "high_noise_model", random_state_dict(i2v), i2v)
    message = load_error(path)
    assert "image-to-video" in message and "36 channels" in message


def test_wan21_image_to_video_model_with_image_embedding(tmp_path, weights):
    sd = dict(weights, **{"img_emb.proj.1.weight": torch.zeros(128, 32)})
    message = load_error(tiny.write_single_file(tmp_path / "i2v.safetensors", sd, prefix="model.diffusion_model."))
    assert "image-to-video" in message and "img_emb.proj.1.weight" in message


def test_truncated_safetensors(tmp_path, weights):
    path = tiny.write_single_file(tmp_path / "wan2.2_t2v_high_noise_14B_fp16.safetensors", weights)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 1000)
    message = load_error(path)
    assert "truncated" in message and f"{size - 1000:,}" in message and "download it again" in message


def test_corrupt_safetensors_header(tmp_path, weights):
    path = tiny.write_single_file(tmp_path / "w.safetensors", weights)
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(b"\x00garbage\xff")
    message = load_error(path)
    assert "corrupt" in message


def test_missing_shard(tmp_path, weights):
    folder = tiny.write_official_folder(tmp_path / "low_noise_model", weights, SMALL, shards=3)
    (folder / "diffusion_pytorch_model-00002-of-00003.safetensors").unlink()
    message = load_error(folder)
    assert "1 of 3 shards are missing" in message and "diffusion_pytorch_model-00002-of-00003.safetensors" in message


def test_tensor_with_wrong_shape(tmp_path, weights):
    sd = dict(weights, **{"blocks.1.cross_attn.k.weight": torch.zeros(128, 64)})
    message = load_error(tiny.write_single_file(tmp_path / "w.safetensors", sd))
    assert "'blocks.1.cross_attn.k.weight' has shape [128, 64]" in message and "needs [128, 128]" in message


def test_missing_tensor(tmp_path, weights):
    sd = {k: v for k, v in weights.items() if k != "blocks.1.norm3.bias"}
    message = load_error(tiny.write_single_file(tmp_path / "w.safetensors", sd))
    assert "1 tensors" in message and "missing" in message and "blocks.1.norm3.bias" in message


def test_unexpected_tensor(tmp_path, weights):
    sd = dict(weights, **{"blocks.0.extra_adapter.weight": torch.zeros(4)})
    message = load_error(tiny.write_single_file(tmp_path / "w.safetensors", sd))
    assert "not part of a Wan2.2 T2V DiT" in message and "blocks.0.extra_adapter.weight" in message


def test_missing_block_layer(tmp_path):
    # blocks.0 and blocks.2 present, blocks.1 absent: layers counted from blocks.N, the gap reported.
    three = DiTConfig(dim=128, ffn_dim=128, num_heads=1, num_layers=3, text_dim=32)
    sd = {k: v for k, v in random_state_dict(three).items() if not k.startswith("blocks.1.")}
    message = load_error(tiny.write_single_file(tmp_path / "w.safetensors", sd))
    assert "missing" in message and "blocks.1." in message


def test_unknown_weight_dtype_is_a_value_error(tmp_path):
    path = tiny.write_single_file(tmp_path / "w.safetensors", random_state_dict(TINY_DIT_CONFIG))
    with pytest.raises(ValueError, match="weight_dtype 'int8' is not one of auto, fp32"):
        load_dit(path, weight_dtype="int8")
