"""VACE weights in both forms: merged experts and module-only files attached to a plain expert; the refusals."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from wan_core.dit.loader import inspect_dit, load_dit
from wan_core.dit.model import DiTConfig
from wan_core.dit.vace import VaceInput
from wan_core.io.checkpoint import CheckpointError
from wan_core.io.quant import Fp8Linear
from wan_core.testing.tiny import dit as tiny
from wan_core.testing.tiny.dit import TINY_VACE_CONFIG, random_state_dict, split_vace

CONFIG = TINY_VACE_CONFIG


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """One set of fp16 VACE weights as a merged file, and as a plain expert + a module-only file."""
    folder = tmp_path_factory.mktemp("vace_files")
    sd = {k: v.half() for k, v in random_state_dict(CONFIG, seed=31).items()}
    base, _ = split_vace(sd)
    return {
        "sd": sd,
        "merged": tiny.write_single_file(folder / "wan2.2_fun_vace_high_noise_14B_fp16.safetensors", sd),
        "base": tiny.write_single_file(folder / "wan2.2_t2v_high_noise_14B_fp16.safetensors", base),
        "module": tiny.write_vace_module_file(folder / "Wan2_2_Fun_VACE_module_A14B_HIGH_fp16.safetensors", sd,
                                              dtype=torch.float16),
    }


def probe(batch: int = 1):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(batch, 16, 2, 6, 8, generator=gen)
    vace = VaceInput((torch.randn(batch, 96, 2, 6, 8, generator=gen),), (torch.full((batch,), 0.9),))
    return x, torch.full((batch,), 700.0), [torch.randn(5, CONFIG.text_dim, generator=gen)] * batch, vace


def test_the_vace_branch_is_read_from_the_tensors(files):
    info = inspect_dit(files["merged"])
    assert (info.config.vace_layers, info.config.vace_in_dim, info.config.num_layers) == (2, 96, 4)
    assert inspect_dit(files["base"]).config.vace_layers == 0
    attached = inspect_dit(files["base"], vace_module=files["module"])
    assert attached.config == info.config
    assert attached.weight_bytes == info.weight_bytes  # expert + module = the merged file's tensors


@torch.no_grad()
def test_module_attachment_equals_the_merged_file_bit_for_bit(files):
    merged = load_dit(files["merged"])
    attached = load_dit(files["base"], vace_module=files["module"])
    assert merged.state_dict().keys() == attached.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(merged.state_dict().values(), attached.state_dict().values()))
    x, t, context, vace = probe()
    assert torch.equal(attached(x, t, context, control=vace), merged(x, t, context, control=vace))


@torch.no_grad()
def test_diffusers_layout_vace_file_loads_as_the_official_one(files, tmp_path):
    path = tiny.write_diffusers_file(tmp_path / "diffusion_pytorch_model.safetensors", files["sd"])
    x, t, context, vace = probe()
    assert torch.equal(load_dit(path)(x, t, context, control=vace), load_dit(files["merged"])(x, t, context, control=vace))


def test_fp8_scaled_merged_file_keeps_vace_linears_in_fp8(tmp_path):
    path = tiny.write_comfy_file(tmp_path / "wan2.2_fun_vace_low_noise_14B_fp8_scaled.safetensors", "vace_low", True)
    model = load_dit(path)
    assert model.config.vace_layers == 2
    assert isinstance(model.vace_blocks[1].self_attn.q, Fp8Linear) and isinstance(model.blocks[3].ffn[0], Fp8Linear)
    assert not isinstance(model.vace_blocks[0].before_proj, Fp8Linear)  # as Comfy-Org's files: projections stay 16-bit


def test_weight_dtype_fp8_quantizes_vace_block_linears_too(files):
    model = load_dit(files["base"], vace_module=files["module"], weight_dtype="fp8_e4m3fn")
    assert isinstance(model.vace_blocks[0].cross_attn.k, Fp8Linear)


def error(path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as caught:
        load_dit(path, **kwargs)
    with pytest.raises(CheckpointError):
        inspect_dit(path, **kwargs)
    return str(caught.value)


def test_module_for_another_model_size_is_refused(files, tmp_path):
    other = replace(CONFIG, dim=384, num_heads=3, ffn_dim=512)
    module = tiny.write_vace_module_file(tmp_path / "Wan2_1_VACE_module_1_3B.safetensors",
                                         random_state_dict(other, seed=1), dtype=torch.float16)
    message = error(files["base"], vace_module=module)
    assert str(module) in message and "width 384" in message and "has width 256" in message
    assert "another model size" in message


def test_module_of_another_precision_family_is_refused(tmp_path):
    sd = random_state_dict(CONFIG, seed=2)
    base = tiny.write_scaled_fp8_file(tmp_path / "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", split_vace(sd)[0])
    module = tiny.write_vace_module_file(tmp_path / "Wan2_2_Fun_VACE_module_A14B_HIGH_bf16.safetensors", sd)
    message = error(base, vace_module=module)
    assert "stores bfloat16 weights but the expert" in message and "float8_e4m3fn" in message
    assert "precision family (fp8)" in message


def test_a_whole_expert_given_as_the_module_is_refused(files):
    message = error(files["base"], vace_module=files["merged"])
    assert "whole expert" in message and "not a VACE module" in message


def test_a_module_on_an_expert_with_vace_merged_in_is_refused(files):
    message = error(files["merged"], vace_module=files["module"])
    assert "already has 2 VACE blocks merged in" in message


def test_a_module_file_given_as_the_expert_says_what_it_is(files):
    message = error(files["module"])
    assert "a VACE module file" in message and "plain T2V expert as the model" in message


def test_a_vace_block_count_that_does_not_divide_the_blocks_is_refused(tmp_path):
    odd = DiTConfig(dim=256, ffn_dim=256, num_heads=2, num_layers=4, text_dim=32)
    sd = random_state_dict(replace(odd, vace_layers=1), seed=4)
    sd.update({k.replace("vace_blocks.0.", "vace_blocks.2."): v.clone() for k, v in sd.items()
               if k.startswith("vace_blocks.0.") and "before_proj" not in k})
    sd.update({k.replace("vace_blocks.0.", "vace_blocks.1."): v.clone() for k, v in sd.items()
               if k.startswith("vace_blocks.0.") and "before_proj" not in k})
    path = tiny.write_single_file(tmp_path / "three_vace_blocks.safetensors", sd)
    assert "3 VACE blocks do not divide 4 main blocks" in error(path)
