"""Every DiT checkpoint layout loads to the same model; fp8 formats, weight dtypes, the real 14B shapes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from wan_core.io.checkpoint import Checkpoint, TensorInfo
from wan_core.dit.model import DiTConfig, WanDiT
from wan_core.dit.keys import diffusers_to_official
from wan_core.dit.loader import config_from_tensors, inspect_dit, load_dit
from wan_core.io.quant import Fp8Linear, quantize_fp8
from wan_core.testing.tiny import dit as tiny
from wan_core.testing.tiny.dit import TINY_DIT_CONFIG, random_state_dict

CONFIG = TINY_DIT_CONFIG
BLOCK_LINEAR = re.compile(r"^blocks\.\d+\.(self_attn\.[qkvo]|cross_attn\.[qkvo]|ffn\.[02])\.weight$")
# fp8 round-to-nearest keeps 3 (e4m3fn) / 2 (e5m2) mantissa bits: each weight's relative error is at most
# 2^-4 / 2^-3 (uniform, so about 2^-4/sqrt(3) rms). A Linear's output error has the same relative rms (independent
# errors add in quadrature across fan-in) and the residual stream does not amplify it, so the whole model's
# relative rms error stays below the per-weight worst case (measured: 1.0% e4m3fn, 2.2% e5m2). A wrong or missing
# scale gives errors of order 1.
FP8_REL_BOUND = {torch.float8_e4m3fn: 2.0**-4, torch.float8_e5m2: 2.0**-3}


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return random_state_dict(CONFIG, seed=11)


@pytest.fixture(scope="module")
def probe():
    gen = torch.Generator().manual_seed(5)
    return torch.randn(2, 16, 2, 6, 4, generator=gen), torch.tensor([999.0, 250.0]), \
        [torch.randn(9, CONFIG.text_dim, generator=gen), torch.randn(3, CONFIG.text_dim, generator=gen)]


def run(model: WanDiT, probe) -> torch.Tensor:
    with torch.no_grad():
        return model(*probe)


@pytest.fixture(scope="module")
def reference(weights, probe) -> torch.Tensor:
    model = WanDiT(CONFIG)
    model.load_state_dict(weights, strict=True)
    return run(model.eval(), probe)


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def write(layout: str, directory: Path, sd: dict[str, torch.Tensor]) -> Path:
    if layout == "official_folder_2_shards":
        return tiny.write_official_folder(directory / "high_noise_model", sd, CONFIG, shards=2)
    if layout == "official_folder_3_shards":
        return tiny.write_official_folder(directory / "low_noise_model", sd, CONFIG, shards=3)
    if layout == "index_json":
        return tiny.write_official_folder(directory / "m", sd, CONFIG) / "diffusion_pytorch_model.safetensors.index.json"
    if layout == "single":
        return tiny.write_single_file(directory / "w.safetensors", sd)
    if layout == "single_model_diffusion_model":
        return tiny.write_single_file(directory / "w.safetensors", sd, prefix="model.diffusion_model.")
    if layout == "single_model":
        return tiny.write_single_file(directory / "w.safetensors", sd, prefix="model.")
    if layout == "diffusers":
        return tiny.write_diffusers_file(directory / "diffusion_pytorch_model.safetensors", sd)
    if layout == "pth":
        torch.save(sd, directory / "w.pth")
        return directory / "w.pth"
    raise AssertionError(layout)


LAYOUTS = ["official_folder_2_shards", "official_folder_3_shards", "index_json", "single",
           "single_model_diffusion_model", "single_model", "diffusers", "pth"]
EXPECTED_LAYOUT = {"diffusers": "diffusers", "official_folder_2_shards": "official_folder",
                   "official_folder_3_shards": "official_folder", "index_json": "official_folder"}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_to_identical_outputs(layout, tmp_path, weights, probe, reference):
    path = write(layout, tmp_path, weights)
    info = inspect_dit(path)
    assert info.config == CONFIG
    assert info.layout == EXPECTED_LAYOUT.get(layout, "single_file")
    assert info.fp8 is None and info.stored_dtype == torch.float32
    assert info.weight_bytes == sum(v.numel() * 4 for v in weights.values())
    model = load_dit(path)
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    assert torch.equal(run(model, probe), reference)


def test_official_folder_shards_and_config_as_released(tmp_path, weights):
    folder = tiny.write_official_folder(tmp_path / "high_noise_model", weights, CONFIG, shards=2)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["config.json", "diffusion_pytorch_model-00001-of-00002.safetensors",
                     "diffusion_pytorch_model-00002-of-00002.safetensors",
                     "diffusion_pytorch_model.safetensors.index.json"]
    config = json.loads((folder / "config.json").read_text())
    assert set(config) == {"_class_name", "_diffusers_version", "dim", "eps", "ffn_dim", "freq_dim", "in_dim",
                           "model_type", "num_heads", "num_layers", "out_dim", "text_len"}
    index = json.loads((folder / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(weights) and len(set(index["weight_map"].values())) == 2


def test_head_count_comes_from_config_json_when_present(tmp_path):
    # Same shapes read 2 heads (dim // 128) from a bare file but 4 from an official config.json.
    config = DiTConfig(dim=256, ffn_dim=512, num_heads=4, num_layers=2)
    sd = random_state_dict(config, seed=2)
    assert inspect_dit(tiny.write_official_folder(tmp_path / "f", sd, config)).config == config
    assert inspect_dit(tiny.write_single_file(tmp_path / "s.safetensors", sd)).config.num_heads == 2


def dequantized_twin(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The fp32 weights an e4m3fn per-tensor quantization of the block Linears represents exactly."""
    twin = dict(sd)
    for key, value in sd.items():
        if BLOCK_LINEAR.match(key):
            w8, scale = quantize_fp8(value, torch.float8_e4m3fn)
            twin[key] = w8.to(torch.float32) * scale
    return twin


@pytest.mark.parametrize("fmt", ["scaled_fp8", "quant_metadata"])
@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_fp8_scaled_files_match_dequantized_twin(fmt, prefix, tmp_path, weights, probe, reference):
    writer = tiny.write_scaled_fp8_file if fmt == "scaled_fp8" else tiny.write_quant_metadata_file
    path = writer(tmp_path / "fp8.safetensors", weights, prefix, other_dtype=torch.float32)
    info = inspect_dit(path)
    assert info.fp8 == fmt and info.config == CONFIG and info.stored_dtype == torch.float32
    model = load_dit(path)
    fp8_layers = {n for n, m in model.named_modules() if isinstance(m, Fp8Linear)}
    assert fp8_layers == {k[: -len(".weight")] for k in weights if BLOCK_LINEAR.match(k)}
    assert all(m.weight.dtype == torch.float8_e4m3fn for n, m in model.named_modules() if n in fp8_layers)
    assert model.text_embedding[0].weight.dtype == torch.float32  # layers the file leaves unquantized stay as stored

    twin = WanDiT(CONFIG)
    twin.load_state_dict(dequantized_twin(weights), strict=True)
    out = run(model, probe)
    # Same fp32 weights (w8 * scale formed in fp32) and fp32 compute: only bit-level noise is allowed.
    assert (out - run(twin.eval(), probe)).abs().max().item() <= 1e-6
    assert rel_rms(out, reference) <= FP8_REL_BOUND[torch.float8_e4m3fn]


def test_fp8_file_loaded_as_fp32_is_the_dequantized_twin(tmp_path, weights, probe):
    path = tiny.write_scaled_fp8_file(tmp_path / "fp8.safetensors", weights, other_dtype=torch.float32)
    model = load_dit(path, weight_dtype="fp32")
    assert not any(isinstance(m, Fp8Linear) for m in model.modules())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    twin = WanDiT(CONFIG)
    twin.load_state_dict(dequantized_twin(weights), strict=True)
    assert (run(model, probe) - run(twin.eval(), probe)).abs().max().item() <= 1e-6


@pytest.mark.parametrize("weight_dtype,storage", [("fp8_e4m3fn", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)])
def test_explicit_fp8_quantizes_block_linears_of_a_full_precision_file(weight_dtype, storage, tmp_path, weights, probe,
                                                                       reference):
    path = tiny.write_single_file(tmp_path / "w.safetensors", {k: v.to(torch.float16) for k, v in weights.items()})
    model = load_dit(path, weight_dtype=weight_dtype)
    fp8 = {n: m for n, m in model.named_modules() if isinstance(m, Fp8Linear)}
    assert set(fp8) == {k[: -len(".weight")] for k in weights if BLOCK_LINEAR.match(k)}
    assert all(m.weight.dtype == storage and m.bias.dtype == torch.float16 for m in fp8.values())
    assert model.head.modulation.dtype == torch.float16  # not quantized: stored precision
    # The loader streams the quantization chunk by chunk; it must be quant.quantize_fp8 bit for bit.
    w8, scale = quantize_fp8(weights["blocks.1.ffn.0.weight"].half(), storage)
    assert torch.equal(model.blocks[1].ffn[0].weight.view(torch.uint8), w8.view(torch.uint8))
    assert torch.equal(model.blocks[1].ffn[0].weight_scale, scale)
    assert rel_rms(run(model, probe), reference) <= FP8_REL_BOUND[storage]


def test_scaled_fp8_file_reencoded_to_e5m2(tmp_path, weights, probe, reference):
    path = tiny.write_scaled_fp8_file(tmp_path / "fp8.safetensors", weights, other_dtype=torch.float32)
    model = load_dit(path, weight_dtype="fp8_e5m2")
    layer = model.blocks[0].cross_attn.v
    w8, scale = quantize_fp8(dequantized_twin(weights)["blocks.0.cross_attn.v.weight"], torch.float8_e5m2)
    assert layer.weight.dtype == torch.float8_e5m2
    assert torch.equal(layer.weight.view(torch.uint8), w8.view(torch.uint8)) and torch.equal(layer.weight_scale, scale)
    # Two roundings (e4m3fn in the file, then e5m2): bounded by the sum of both per-weight bounds.
    assert rel_rms(run(model, probe), reference) <= FP8_REL_BOUND[torch.float8_e4m3fn] + FP8_REL_BOUND[torch.float8_e5m2]


@pytest.mark.parametrize("weight_dtype,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_explicit_float_weight_dtype(weight_dtype, dtype, tmp_path, weights, probe, reference):
    model = load_dit(tiny.write_single_file(tmp_path / "w.safetensors", weights), weight_dtype=weight_dtype)
    assert all(p.dtype == dtype for p in model.parameters())
    # fp16 / bf16 keep 10 / 7 mantissa bits: per-weight relative error at most 2^-11 / 2^-8 (measured 3.4e-4 / 2.8e-3).
    bound = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 0.0}[dtype]
    assert rel_rms(run(model, probe), reference) <= bound


def test_auto_keeps_stored_precision_of_comfy_files(tmp_path):
    fp16 = load_dit(tiny.write_comfy_file(tmp_path / "wan2.2_t2v_low_noise_14B_fp16.safetensors", "low", False, 0))
    assert all(p.dtype == torch.float16 for p in fp16.parameters())
    fp8 = load_dit(tiny.write_comfy_file(tmp_path / "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "high", True, 0))
    assert fp8.blocks[1].ffn[2].weight.dtype == torch.float8_e4m3fn and fp8.blocks[1].ffn[2].bias.dtype == torch.float16
    assert fp8.patch_embedding.weight.dtype == torch.float16
    assert fp8.compute_dtype == torch.float32 and fp8.blocks[0].ffn[0].compute_dtype == torch.float32


def test_comfy_files_of_the_two_roles_differ(tmp_path):
    high = load_dit(tiny.write_comfy_file(tmp_path / "h.safetensors", "high", False, 0))
    low = load_dit(tiny.write_comfy_file(tmp_path / "l.safetensors", "low", False, 0))
    assert not torch.equal(high.blocks[0].self_attn.q.weight, low.blocks[0].self_attn.q.weight)


def test_bf16_compute_on_cpu_is_close(tmp_path, weights, probe, reference):
    model = load_dit(tiny.write_single_file(tmp_path / "w.safetensors", weights), compute_dtype=torch.bfloat16)
    assert model.compute_dtype == torch.bfloat16 and model.head.head.compute_dtype == torch.float32
    assert rel_rms(run(model, probe), reference) <= 2.0**-5  # bf16 matmul inputs: 2^-8 rounding, a few layers deep


def test_real_a14b_on_meta_has_official_params_and_keys():
    with torch.device("meta"):
        model = WanDiT(DiTConfig.a14b())
        from diffusers import WanTransformer3DModel

        reference = WanTransformer3DModel()  # its defaults are the A14B expert (convert_wan_to_diffusers.py)
    assert sum(p.numel() for p in model.parameters()) == 14_288_491_584
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = {diffusers_to_official(k): tuple(v.shape) for k, v in reference.state_dict().items()}
    assert len(ours) == 1095
    assert ours == official


def test_config_of_the_real_a14b_is_read_from_shapes():
    # The same inference code as the tiny files, on header information only (meta shapes, bf16 as released).
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in WanDiT(DiTConfig.a14b()).state_dict().items()}
    ckpt = Checkpoint(Path("wan2.2_t2v_high_noise_14B_fp16.safetensors"),
                      {k: TensorInfo(s, torch.bfloat16) for k, s in shapes.items()}, {})
    assert config_from_tensors(ckpt) == DiTConfig.a14b()


def test_plain_fp8_file_and_scale_input_keys(tmp_path, weights, probe):
    # Plain fp8 (weights cast, no scales: scale 1) plus `.scale_input` entries some scaled files carry (unused
    # by weight-only upcasting, so they must be accepted and ignored).
    plain = {k: v.to(torch.float8_e4m3fn) if BLOCK_LINEAR.match(k) else v for k, v in weights.items()}
    extra = {k.replace(".weight", ".scale_input"): torch.tensor(1.0) for k in weights if BLOCK_LINEAR.match(k)}
    path = tiny.write_single_file(tmp_path / "plain_fp8.safetensors", {**plain, **extra})
    assert inspect_dit(path).fp8 == "plain"
    model = load_dit(path)
    assert model.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn
    assert model.blocks[0].self_attn.q.weight_scale.item() == 1.0
    twin = WanDiT(CONFIG)
    twin.load_state_dict({k: v.to(torch.float32) for k, v in plain.items()}, strict=True)
    assert (run(model, probe) - run(twin.eval(), probe)).abs().max().item() <= 1e-6


def test_diffusers_folder_with_its_config(tmp_path, weights, probe, reference):
    folder = tmp_path / "transformer"
    tiny.write_diffusers_file(folder / "diffusion_pytorch_model.safetensors", weights)
    (folder / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel", "num_attention_heads": 2,
                                                     "attention_head_dim": 128, "in_channels": 16}))
    info = inspect_dit(folder)
    assert info.layout == "diffusers" and info.config == CONFIG
    assert torch.equal(run(load_dit(folder), probe), reference)
