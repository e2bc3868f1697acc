"""Every umT5 file layout loads from tiny random weights and gives identical outputs; fp8; wrong files; embedded tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from wan_core.io.checkpoint import CheckpointError
from wan_core.io.quant import FP8_DTYPES
from wan_core.text.t5 import T5Config, T5Encoder
from wan_core.text.encoder import Fp8Embedding, detect_layout, load_text_encoder
from wan_core.io.checkpoint import open_checkpoint
from wan_core.testing.tiny import t5 as tiny
from wan_core.text.tokenizer import Tokenizer

SMALL = T5Config(vocab=tiny.SPM_VOCAB, dim=64, dim_attn=32, dim_ffn=48, num_heads=4, num_layers=2)
PROMPTS = ["A cat walks slowly across a sunny garden, the camera follows at ground level.",
           "一只猫在阳光明媚的花园里慢慢走过", "猫が晴れた庭を歩く", "고양이가 햇살 좋은 정원을"]
SEED = 5


def _reference() -> list[torch.Tensor]:
    model = T5Encoder(SMALL).eval()
    model.load_state_dict(tiny.random_official_state(SMALL, SEED), strict=True)
    tok = Tokenizer(spm_bytes=tiny.tiny_spm_bytes())
    return model.encode_ids([tok.encode(p).ids for p in PROMPTS])


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.fixture(scope="module")
def ref() -> list[torch.Tensor]:
    return _reference()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("t5files")
    return {
        "official": tiny.write_official_pth(d / "ckpt" / "models_t5_umt5-xxl-enc-bf16.pth", SMALL, SEED, dtype=torch.float32),
        "comfy": tiny.write_comfy(d / "umt5_xxl_fp16.safetensors", SMALL, SEED, dtype=torch.float32),
        "hf": tiny.write_hf_folder(d / "umt5_hf", SMALL, SEED),
        "fp8": tiny.write_comfy(d / "umt5_xxl_fp8_e4m3fn_scaled.safetensors", SMALL, SEED, fp8=True),
    }


@pytest.mark.parametrize("layout, expected", [("official", "official"), ("comfy", "hf"), ("hf", "hf")])
def test_each_layout_gives_identical_outputs(files, ref, layout, expected):
    enc = load_text_encoder(files[layout], dtype="fp32")
    assert enc.layout == expected and enc.dtype == "fp32"
    tensors = list(enc.model.parameters()) + list(enc.model.buffers())
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)  # nothing left on meta
    res = enc.encode(PROMPTS)
    assert all(e.dtype == torch.float32 and e.device.type == "cpu" for e in res.embeddings)
    assert _max_diff(res.embeddings, ref) == 0.0
    assert res.dropped == [0] * len(PROMPTS)


def test_hf_folder_written_by_transformers_matches_transformers(files, ref):
    import transformers
    model = transformers.UMT5EncoderModel.from_pretrained(str(files["hf"])).eval()
    tok = Tokenizer(spm_bytes=tiny.tiny_spm_bytes())
    ids = torch.tensor([tok.encode(PROMPTS[0]).ids])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
    assert (out - ref[0]).abs().max().item() <= 1e-5


def test_official_bf16_auto_dtype_and_meta_free(tmp_path, ref):
    path = tiny.write_official_pth(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth", SMALL, SEED, dtype=torch.bfloat16)
    enc = load_text_encoder(path)  # tokenizer from google/umt5-xxl/ beside it
    assert enc.dtype == "bf16" and enc.compute_dtype == torch.bfloat16
    assert all(p.device.type == "cpu" and p.dtype == torch.bfloat16 for p in enc.model.parameters())
    out = enc.encode(PROMPTS).embeddings
    assert out[0].dtype == torch.float32
    assert _max_diff(out, ref) < 0.25  # bf16 weights and activations (relative 2^-8 per rounding) vs fp32
    assert load_text_encoder(path, dtype="fp16").model.norm.weight.dtype == torch.float16


def test_embedded_tokenizer_round_trips(files):
    sd = load_file(str(files["comfy"]))
    assert sd["spiece_model"].dtype == torch.uint8 and sd["spiece_model"].dim() == 1
    assert sd["spiece_model"].numpy().tobytes() == tiny.tiny_spm_bytes()
    enc = load_text_encoder(files["comfy"])
    assert enc.tokenizer.serialized() == tiny.tiny_spm_bytes()
    again = torch.frombuffer(bytearray(enc.tokenizer.serialized()), dtype=torch.uint8)
    assert torch.equal(again, sd["spiece_model"])


def _dequantized_twin(fp8_path: Path, out: Path) -> Path:
    sd = load_file(str(fp8_path))
    twin = {}
    for k, v in sd.items():
        if k == "scaled_fp8" or k.endswith(".scale_weight"):
            continue
        if v.dtype in FP8_DTYPES:
            scale = sd.get(k[: -len(".weight")] + ".scale_weight")
            v = v.float() * (scale if scale is not None else 1.0)
        twin[k] = v
    save_file(twin, str(out))
    return out


def test_fp8_scaled_matches_dequantized_twin(files, ref, tmp_path):
    twin = _dequantized_twin(files["fp8"], tmp_path / "twin.safetensors")
    enc8 = load_text_encoder(files["fp8"])  # auto: fp8 storage, bf16 compute, one layer upcast at a time
    assert enc8.dtype == "fp8" and enc8.model.blocks[0].attn.q.weight.dtype == torch.float8_e4m3fn
    out8 = enc8.encode(PROMPTS).embeddings
    # Fp8Linear forms w8*scale in fp32 and casts once, exactly what the twin's fp32 weights cast to bf16 give.
    assert _max_diff(out8, load_text_encoder(twin, dtype="bf16").encode(PROMPTS).embeddings) == 0.0
    twin32 = load_text_encoder(twin, dtype="fp32").encode(PROMPTS).embeddings
    assert _max_diff(load_text_encoder(files["fp8"], dtype="fp32").encode(PROMPTS).embeddings, twin32) == 0.0
    # fp8 vs the unquantized weights: e4m3 keeps 3 mantissa bits, so each weight carries a relative rounding
    # error uniform in +-2^-4 (std 2^-4/sqrt(3) = 3.6 %); independent errors add in quadrature inside each dot
    # product, so every linear output is off by ~3.6 % relative and the normed output by a few %: require a
    # relative L2 error below 2^-4 but above bf16 rounding (2^-9), i.e. the weights really were quantized.
    a, b = torch.cat(twin32), torch.cat(ref)
    rel = ((a - b).norm() / b.norm()).item()
    assert 2**-9 < rel < 2**-4


def test_fp8_embedding_and_quantize_on_load(tmp_path, ref):
    path = tmp_path / "all_fp8.safetensors"
    save_file(tiny.comfy_state(SMALL, SEED, fp8=True, embedding_fp8=True), str(path))
    enc = load_text_encoder(path)
    assert isinstance(enc.model.token_embedding, Fp8Embedding)
    twin = _dequantized_twin(path, tmp_path / "twin.safetensors")
    assert _max_diff(enc.encode(PROMPTS).embeddings, load_text_encoder(twin, dtype="bf16").encode(PROMPTS).embeddings) == 0.0
    q = load_text_encoder(tiny.write_comfy(tmp_path / "f32.safetensors", SMALL, SEED, dtype=torch.float32), dtype="fp8")
    assert q.model.blocks[1].ffn.fc2.weight.dtype == torch.float8_e4m3fn
    rel = (torch.cat(q.encode(PROMPTS).embeddings) - torch.cat(ref)).norm() / torch.cat(ref).norm()
    assert rel.item() < 2**-4


def test_demo_writer_full_width(tmp_path):
    for fp8 in (False, True):
        path = tiny.write_comfy_file(tmp_path / f"t5_{fp8}.safetensors", role="t5", fp8=fp8, seed=0)
        enc = load_text_encoder(path)
        assert enc.model.config == tiny.TINY_T5 and enc.dtype == ("fp8" if fp8 else "fp16")
        out = enc.encode(["a cat"]).embeddings[0]
        assert out.shape[1] == 4096 and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="role"):
        tiny.write_comfy_file(tmp_path / "x.safetensors", role="vae", fp8=False, seed=0)


def _write(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    save_file({k: torch.zeros(s) for k, s in shapes.items()}, str(path))
    return path


def _t5_v11_keys(layers: int = 2, vocab: int = 32128) -> dict[str, tuple[int, ...]]:
    keys = {"shared.weight": (vocab, 8), "encoder.final_layer_norm.weight": (8,),
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (32, 2)}
    for i in range(layers):
        p = f"encoder.block.{i}.layer."
        keys.update({p + f"0.SelfAttention.{n}.weight": (8, 8) for n in "qkvo"})
        keys.update({p + "0.layer_norm.weight": (8,), p + "1.layer_norm.weight": (8,), p + "1.DenseReluDense.wi_0.weight": (4, 8),
                     p + "1.DenseReluDense.wi_1.weight": (4, 8), p + "1.DenseReluDense.wo.weight": (8, 4)})
    return keys


@pytest.mark.parametrize("name, shapes, message", [
    ("wan_dit.safetensors", {"model.diffusion_model.patch_embedding.weight": (8, 16, 1, 2, 2),
                             "model.diffusion_model.blocks.0.self_attn.q.weight": (8, 8)}, "diffusion model"),
    ("wan_dit_diffusers.safetensors", {"blocks.0.attn1.to_q.weight": (8, 8), "condition_embedder.text_embedder.linear_1.weight": (8, 8)},
     "diffusion model"),
    ("wan_2.1_vae.safetensors", {"decoder.middle.0.residual.0.gamma": (8, 1, 1, 1), "encoder.conv1.weight": (8, 3, 3, 3, 3)}, "VAE"),
    ("t5xxl_fp16.safetensors", _t5_v11_keys(), "another family"),
    ("clip_l.safetensors", {"text_model.embeddings.token_embedding.weight": (10, 8),
                            "text_model.encoder.layers.0.self_attn.q_proj.weight": (8, 8)}, "CLIP"),
    ("open_clip.safetensors", {"token_embedding.weight": (10, 8), "positional_embedding": (77, 8),
                               "transformer.resblocks.0.attn.in_proj_weight": (24, 8)}, "CLIP"),
    ("random.safetensors", {"foo.weight": (2, 2)}, "not a text encoder"),
])
def test_wrong_files_raise_clear_error(tmp_path, name, shapes, message):
    path = _write(tmp_path / name, shapes)
    with pytest.raises(CheckpointError, match=message) as info:
        load_text_encoder(path)
    text = str(info.value)
    assert str(path) in text and "umt5_xxl" in text  # what was found, what is expected


def test_non_gated_t5_and_missing_tokenizer(tmp_path, files):
    keys = {k.replace("wi_0", "wi"): v for k, v in _t5_v11_keys(1).items() if "wi_1" not in k}
    with pytest.raises(CheckpointError, match="non-gated"):
        load_text_encoder(_write(tmp_path / "t5_base.safetensors", keys))
    sd = load_file(str(files["comfy"]))
    del sd["spiece_model"]
    save_file(sd, str(tmp_path / "no_tok.safetensors"))
    with pytest.raises(CheckpointError, match="no umT5 tokenizer|found no umT5 tokenizer"):
        load_text_encoder(tmp_path / "no_tok.safetensors")
    enc = load_text_encoder(tmp_path / "no_tok.safetensors", tokenizer_path=files["official"].parent / "google" / "umt5-xxl")
    assert enc.tokenizer.vocab_size == tiny.SPM_VOCAB


def test_detect_layout_names_official_keys(files):
    layout, view = detect_layout(open_checkpoint(files["comfy"]))
    assert layout == "hf" and set(view.keys()) >= set(SMALL.official_shapes())


def test_full_size_comfy_header_is_recognised_as_umt5_xxl(tmp_path):
    from wan_core.io.checkpoint import Checkpoint, TensorInfo
    from wan_core.text.t5 import UMT5_XXL
    from wan_core.text.encoder import official_to_hf

    infos = {official_to_hf(k): TensorInfo(s, torch.float16) for k, s in UMT5_XXL.official_shapes().items()}
    infos["spiece_model"] = TensorInfo((4548313,), torch.uint8)
    assert "encoder.block.23.layer.1.DenseReluDense.wi_1.weight" in infos  # what ComfyUI's CLIPLoader keys on
    readers = {k: (lambda: torch.zeros(0)) for k in infos}  # header only: nothing is read
    layout, view = detect_layout(Checkpoint(tmp_path / "umt5_xxl_fp16.safetensors", infos, readers))
    assert layout == "hf" and T5Config.from_shapes({k: i.shape for k, i in view.infos.items()}) == UMT5_XXL
