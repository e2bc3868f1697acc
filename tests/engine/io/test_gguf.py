"""GGUF experts: GGML blocks dequantised in torch exactly as the gguf package's reference does, loaded as Wan DiTs."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from wan_core.dit.loader import inspect_dit, load_dit
from wan_core.dit.model import WanDiT
from wan_core.io.checkpoint import CheckpointError, open_checkpoint
from wan_core.io.quant import Fp8Linear
from wan_core.io.quant.ggml import BLOCK_BYTES, BLOCK_SIZE, GGML_TYPES, GGMLLinear, dequantize
from wan_core.memory.budget import bytes_by_tier
from wan_core.testing.tiny import gguf as tiny_gguf
from wan_core.testing.tiny.dit import TINY_DIT_CONFIG as CONFIG, random_state_dict

# Byte offsets of each type's fp16 fields (d, dmin, m): set to small finite halves so random blocks stay finite.
FP16_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "Q2_K": (80, 82),
               "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def random_blocks(type_name: str, n: int, seed: int) -> np.ndarray:
    """n blocks of random bytes (every quant and scale bit pattern occurs) with finite fp16 scale fields."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(n, BLOCK_BYTES[type_name]), dtype=np.uint8)
    for offset in FP16_FIELDS[type_name]:
        halves = (rng.standard_normal(n) * 0.01).astype(np.float16)
        blocks[:, offset:offset + 2] = halves.view(np.uint8).reshape(n, 2)
    return blocks


def reference(blocks: np.ndarray, type_name: str) -> torch.Tensor:
    return torch.from_numpy(gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[type_name]).astype(np.float32))


@pytest.mark.parametrize("type_name", GGML_TYPES)
def test_every_ggml_type_dequantises_bit_for_bit_like_the_gguf_package(type_name):
    assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]] == (BLOCK_SIZE[type_name], BLOCK_BYTES[type_name])
    blocks = random_blocks(type_name, 64, seed=len(type_name))
    expected = reference(blocks, type_name)
    ours = dequantize(torch.from_numpy(blocks), type_name, tuple(expected.shape), torch.float32)
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("dtype,ulp", [(torch.bfloat16, 2.0**-8), (torch.float16, 2.0**-11)])
@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_0", "Q4_1", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_half_precision_dequantisation_is_within_that_dtype_rounding(type_name, dtype, ulp):
    # In bf16/fp16 the block scale, the product and (affine types) the offset subtraction each round once: at
    # most three roundings of half an ulp of the magnitudes involved. Offsets are up to 64x the step, so the
    # bound is relative to the largest magnitude in the block, not to each (possibly cancelled) value.
    blocks = random_blocks(type_name, 64, seed=3)
    expected = reference(blocks, type_name)
    ours = dequantize(torch.from_numpy(blocks), type_name, tuple(expected.shape), dtype)
    assert ours.dtype == dtype
    magnitude = expected.abs().amax(dim=-1, keepdim=True) + dequantize(
        torch.from_numpy(blocks), type_name, tuple(expected.shape), torch.float32).abs().amax(dim=-1, keepdim=True)
    assert ((ours.float() - expected).abs() <= 3 * ulp * magnitude).all()
    assert not torch.equal(ours.float(), expected)  # it did round: the check above is not vacuous


@pytest.mark.parametrize("type_name", ["Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_k_quant_blocks_built_by_definition_read_back_as_the_weights(type_name):
    # The K-quants the gguf package cannot write are packed by the test writer; the package's dequantiser must read
    # them back as the weights. Uniform rounding of b-bit quants over a sub-block's range leaves a relative rms
    # error near 2^-b (absmax scales, clipped top code; measured 0.18/0.08/0.04/0.02 for 3/4/5/6 bits); a bound of
    # 2^(1-b) catches any misplaced bit, which gives errors of order 1.
    w = torch.randn(8, 512, generator=torch.Generator().manual_seed(1))
    back = reference(tiny_gguf.quantize(w.numpy(), type_name).reshape(-1, BLOCK_BYTES[type_name]), type_name)
    bits = {"Q3_K": 3, "Q4_K": 4, "Q5_K": 5, "Q6_K": 6}[type_name]
    assert ((back.reshape(w.shape) - w).norm() / w.norm()).item() < 2.0 ** (1 - bits)


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return random_state_dict(CONFIG, seed=21)


@pytest.fixture(scope="module")
def probe():
    gen = torch.Generator().manual_seed(4)
    return (torch.randn(1, 16, 2, 6, 4, generator=gen), torch.tensor([930.0]),
            [torch.randn(7, CONFIG.text_dim, generator=gen)])


def forward(model: WanDiT, probe) -> torch.Tensor:
    with torch.no_grad():
        return model(*probe)


@pytest.mark.parametrize("preset", list(tiny_gguf.PRESETS))
def test_gguf_expert_matches_the_same_weights_dequantised_to_fp32(preset, tmp_path, weights, probe):
    path = tmp_path / f"wan2.2_t2v_high_noise_14B_{preset}.gguf"
    types = tiny_gguf.write_gguf(path, weights, preset)
    ref_weights = tiny_gguf.reference_weights(path)
    model = load_dit(path)
    packed = {n: m for n, m in model.named_modules() if isinstance(m, GGMLLinear)}
    assert {n + ".weight" for n in packed} == {k for k, t in types.items() if t in GGML_TYPES}
    for name, module in packed.items():
        assert module.weight.dtype == torch.uint8 and module.ggml_type == types[name + ".weight"]
        assert torch.equal(module.dequantized_weight(torch.float32), ref_weights[name + ".weight"])
    twin = WanDiT(CONFIG)
    twin.load_state_dict(ref_weights, strict=True)
    # Same float32 values through the same float32 ops: measured identical; 1e-5 leaves room for kernel order.
    assert (forward(model, probe) - forward(twin.eval(), probe)).abs().max().item() <= 1e-5


def test_gguf_memory_is_the_stored_blocks_and_q4_k_m_is_about_a_third_of_f16(tmp_path, weights):
    sizes = {}
    for preset in ("F16", "Q4_K_M"):
        path = tmp_path / f"{preset}.gguf"
        tiny_gguf.write_gguf(path, weights, preset)
        info = inspect_dit(path)
        model = load_dit(path)
        assert bytes_by_tier(model) == {"cpu": info.weight_bytes}  # the cache's size accounting is exact
        sizes[preset] = info.weight_bytes
    assert inspect_dit(tmp_path / "Q4_K_M.gguf").quant == "GGUF Q4_K+Q6_K"
    # Q4_K is 4.5 bits a weight, Q6_K 6.56; the F32 norms/biases/modulation are the same bytes in both files.
    assert 0.28 < sizes["Q4_K_M"] / sizes["F16"] < 0.34


def test_prefixed_and_reshaped_tensors_read_at_their_original_shapes(tmp_path, weights, probe):
    path = tmp_path / "prefixed.gguf"
    writer = gguf.GGUFWriter(str(path), arch="wan")
    for key, value in weights.items():
        data = value.numpy()
        if key == "text_embedding.0.weight":  # the converter's reshape for rows not a multiple of 256, with metadata
            writer.add_array(f"comfy.gguf.orig_shape.model.diffusion_model.{key}", list(data.shape))
            data = data.reshape(-1, 256)
        writer.add_tensor("model.diffusion_model." + key, data)
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    assert open_checkpoint(path).infos["model.diffusion_model.text_embedding.0.weight"].shape == (256, 4096)
    twin = WanDiT(CONFIG)
    twin.load_state_dict(weights)
    assert torch.equal(forward(load_dit(path), probe), forward(twin.eval(), probe))


def test_other_weight_dtypes_dequantise_the_blocks_at_load(tmp_path, weights):
    path = tmp_path / "q8.gguf"
    tiny_gguf.write_gguf(path, weights, "Q8_0")
    ref = tiny_gguf.reference_weights(path)
    bf16 = load_dit(path, weight_dtype="bf16")
    assert not any(isinstance(m, GGMLLinear) for m in bf16.modules())
    assert torch.equal(bf16.blocks[0].ffn[0].weight, ref["blocks.0.ffn.0.weight"].to(torch.bfloat16))
    fp8 = load_dit(path, weight_dtype="fp8_e4m3fn")
    layer = fp8.blocks[1].self_attn.q
    assert isinstance(layer, Fp8Linear) and layer.weight.dtype == torch.float8_e4m3fn
    expected = ref["blocks.1.self_attn.q.weight"]
    assert ((layer.dequantized_weight(torch.float32) - expected).abs() <= expected.abs().amax() * 2.0**-4).all()


def test_a_quantisation_type_we_cannot_read_is_named(tmp_path, weights):
    path = tmp_path / "iq.gguf"
    writer = gguf.GGUFWriter(str(path), arch="wan")
    for key, value in weights.items():
        if key == "blocks.0.ffn.0.weight":  # IQ4_NL: 32 weights in 18 bytes
            raw = np.zeros((value.shape[0], value.shape[1] // 32 * 18), dtype=np.uint8)
            writer.add_tensor(key, raw, raw_dtype=gguf.GGMLQuantizationType.IQ4_NL)
        else:
            writer.add_tensor(key, value.numpy())
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(CheckpointError, match=r"iq\.gguf: tensor 'blocks\.0\.ffn\.0\.weight' is stored as GGUF IQ4_NL.*"
                                              r"Q8_0, Q6_K, Q5_K_M/S, Q4_K_M/S"):
        load_dit(path)


def test_a_truncated_gguf_says_so(tmp_path, weights):
    path = tmp_path / "t.gguf"
    tiny_gguf.write_gguf(path, weights, "Q4_K_S")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 5000])
    with pytest.raises(CheckpointError, match=r"t\.gguf: not a readable GGUF file .*truncated or corrupt; download it"):
        inspect_dit(path)
