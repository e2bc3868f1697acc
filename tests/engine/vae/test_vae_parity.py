"""Wan2.1 VAE: parity with diffusers AutoencoderKLWan, every file layout, and clear errors for wrong files."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from wan_core.io.checkpoint import CheckpointError
from wan_core.vae.latent_format import denormalize, normalize
from wan_core.testing.tiny import vae as tiny
from wan_core.vae.model import WanVAE
from wan_core.vae.loader import load_vae, official_to_diffusers_key


@pytest.fixture(scope="module")
def pair() -> tuple[WanVAE, torch.nn.Module]:
    """Our VAE and diffusers' AutoencoderKLWan with the same tiny random weights (only base_dim shrunk)."""
    from diffusers import AutoencoderKLWan

    state = tiny.random_state_dict(tiny.TINY_VAE_DIM, seed=3)
    ours = WanVAE(dim=tiny.TINY_VAE_DIM)
    ours.load_state_dict(state, strict=True)
    ref = AutoencoderKLWan(base_dim=tiny.TINY_VAE_DIM, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                           attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0)
    ref.load_state_dict(tiny.to_diffusers(state), strict=True)  # strict both ways: the rename is 1:1
    return ours.eval(), ref.eval()


def test_official_layout_has_194_tensors_at_full_width():
    with torch.device("meta"):
        model = WanVAE(dim=96)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == 194
    assert sum(v.numel() for v in model.state_dict().values()) == 126_892_531
    assert shapes["decoder.upsamples.3.time_conv.weight"] == (768, 384, 3, 1, 1)
    assert shapes["decoder.upsamples.4.shortcut.weight"] == (384, 192, 1, 1, 1)
    assert shapes["decoder.upsamples.11.resample.1.weight"] == (96, 192, 3, 3)
    assert shapes["encoder.head.2.weight"] == (32, 384, 3, 3, 3)
    assert official_to_diffusers_key("decoder.upsamples.7.time_conv.bias") == "decoder.up_blocks.1.upsamplers.0.time_conv.bias"
    assert official_to_diffusers_key("decoder.upsamples.12.residual.6.weight") == "decoder.up_blocks.3.resnets.0.conv2.weight"


@pytest.mark.parametrize("batch", [1, 2])  # 2: a clip's frames are then strided views (the channels-last slices)
def test_encode_and_decode_match_diffusers(pair, batch):
    ours, ref = pair
    x = torch.rand(batch, 3, 9, 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ref_mu = ref.encode(x).latent_dist.mean  # diffusers returns the un-normalised distribution
    latent = ours.encode(x, tiling="off")
    assert latent.shape == (batch, 16, 3, 4, 6)
    assert (latent - normalize(ref_mu)).abs().max().item() <= 1e-5
    with torch.no_grad():
        ref_video = ref.decode(denormalize(latent)).sample
    video = ours.decode(latent, tiling="off")
    assert video.shape == (batch, 3, 9, 32, 48) and video.dtype == torch.float32
    assert (video - ref_video).abs().max().item() <= 1e-5
    assert (video.abs() < 1).float().mean() > 0.5  # most pixels unclamped: the comparison means something


def test_every_layout_loads_and_decodes_identically(tmp_path):
    files = [
        tiny.write_official_pth(tmp_path / "Wan2.1_VAE.pth", seed=5),
        tiny.write_comfy_safetensors(tmp_path / "wan_2.1_vae.safetensors", seed=5),
        tiny.write_diffusers(tmp_path / "vae", seed=5),
        tiny.write_comfy_file(tmp_path / "demo" / "wan_2.1_vae.safetensors", "vae", False, 5),
    ]
    latent = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    videos = [load_vae(f).decode(latent) for f in files]
    for v in videos[1:]:
        assert torch.equal(v, videos[0])
    half = load_vae(files[1], dtype="bf16")
    assert half.dtype == torch.bfloat16
    assert (half.decode(latent) - videos[0]).abs().max().item() < 0.1


def _write(path, tensors: dict[str, tuple[int, ...]]):
    save_file({k: torch.zeros(s) for k, s in tensors.items()}, str(path))
    return path


@pytest.mark.parametrize(
    "tensors, message",
    [
        ({"decoder.upsamples.0.upsamples.0.residual.2.weight": (4, 4, 3, 3, 3), "conv2.weight": (48, 48, 1, 1, 1),
          "decoder.middle.0.residual.0.gamma": (4, 1, 1, 1)}, "Wan2.2 VAE (48 latent channels"),
        ({"post_quant_conv.weight": (48, 48, 1, 1, 1), "decoder.mid_block.resnets.0.norm1.gamma": (4, 1, 1, 1)},
         "Wan2.2 VAE"),
        ({"model.diffusion_model.patch_embedding.weight": (4, 16, 1, 2, 2),
          "model.diffusion_model.blocks.0.self_attn.q.weight": (4, 4)}, "diffusion model (DiT)"),
        ({"blocks.0.attn1.to_q.weight": (4, 4), "patch_embedding.weight": (4, 16, 1, 2, 2)}, "diffusion model (DiT)"),
        ({"token_embedding.weight": (8, 4), "blocks.0.attn.q.weight": (4, 4)}, "text encoder"),
        ({"shared.weight": (8, 4), "encoder.block.0.layer.0.SelfAttention.q.weight": (4, 4)}, "text encoder"),
        ({"encoder.down.0.block.0.conv1.weight": (4, 4, 3, 3), "decoder.mid.block_1.conv1.weight": (4, 4, 3, 3)},
         "another model family"),
        ({"foo.weight": (2,)}, "matches no known Wan component"),
    ],
)
def test_wrong_files_get_a_clear_error(tmp_path, tensors, message):
    path = _write(tmp_path / "wrong.safetensors", tensors)
    with pytest.raises(CheckpointError) as info:
        load_vae(path)
    text = str(info.value)
    assert message in text and str(path) in text
    assert "wan_2.1_vae.safetensors" in text  # says what to use instead


def test_truncated_vae_is_named(tmp_path):
    state = tiny.random_state_dict(seed=0)
    del state["decoder.upsamples.3.time_conv.weight"]
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="1 missing"):
        load_vae(path)


def test_bad_dtype_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_vae(tiny.write_official_pth(tmp_path / "v.pth"), dtype="int8")
