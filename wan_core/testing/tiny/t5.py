"""Tiny random umT5 encoders and a tiny SentencePiece model, written in every layout users have.

`TINY_T5` keeps d_model 4096 (the tiny DiT's text_dim, so the demo's conditioning fits) with 2 layers, 4 heads
of 64 and a 256-wide FFN. The SentencePiece unigram model is trained in-process on a small multilingual corpus
(English, Chinese, Japanese, Korean) and cached on disk by a hash of its inputs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import torch

from ...io.quant import quantize_fp8
from ...text.t5 import T5Config

CORPUS = [
    "A cat walks slowly across a sunny garden, the camera follows at ground level.",
    "A red sports car drives along a coastal road at sunset, waves crash on the rocks.",
    "Close-up of a woman smiling, soft light, shallow depth of field, cinematic.",
    "An astronaut floats inside a space station and looks at the blue planet below.",
    "Two dogs play in the snow; one jumps high to catch a yellow ball.",
    "Time-lapse of clouds moving over mountains, golden hour, wide shot.",
    "A chef chops vegetables in a busy kitchen, steam rises from the pots.",
    "Rain falls on a neon-lit street at night; people with umbrellas hurry past.",
    "The old man reads a newspaper on a wooden bench in the park.",
    "Aerial view of a river winding through a green forest in spring.",
    "bright colors, overexposed, static, blurry details, subtitles, worst quality, low quality",
    "一只猫在阳光明媚的花园里慢慢走过，镜头低角度跟随。",
    "一辆红色跑车在日落时沿着海岸公路行驶，海浪拍打着岩石。",
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量。",
    "一位老人坐在公园的木椅上看报纸，秋天的树叶缓缓飘落。",
    "夜晚的城市街道下着雨，霓虹灯倒映在积水中，行人撑着伞匆匆走过。",
    "宇航员在空间站里漂浮，望着下面蓝色的地球。",
    "两只小狗在雪地里玩耍，其中一只跳起来接住黄色的球。",
    "猫が晴れた庭をゆっくり歩いていて、カメラが地面の高さで追いかける。",
    "夕焼けの海岸道路を赤いスポーツカーが走り、波が岩に打ち寄せる。",
    "雨の夜、ネオンが光る通りを傘をさした人々が急いで通り過ぎる。",
    "宇宙飛行士が宇宙ステーションの中に浮かび、青い地球を見下ろしている。",
    "桜の花びらが風に舞い、川沿いの道を子供たちが走っている。",
    "고양이가 햇살 좋은 정원을 천천히 걸어가고 카메라가 낮은 높이에서 따라간다.",
    "해질녘 해안 도로를 빨간 스포츠카가 달리고 파도가 바위에 부딪힌다.",
    "비 오는 밤 네온사인이 빛나는 거리를 우산을 쓴 사람들이 서둘러 지나간다.",
    "우주 비행사가 우주 정거장 안에서 떠다니며 아래의 푸른 지구를 바라본다.",
    "두 마리의 강아지가 눈 속에서 놀고 한 마리가 높이 뛰어 노란 공을 잡는다.",
    "A panda eats bamboo 熊猫吃竹子 パンダが竹を食べる 판다가 대나무를 먹는다.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 2025, punctuation: (a) [b] {c} \"d\" 'e' - _ / ? !",
]
SPM_VOCAB = 384
SPM_OPTIONS = dict(model_type="unigram", vocab_size=SPM_VOCAB, character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2,
                   bos_id=-1, num_threads=1, shuffle_input_sentence=False, seed_sentencepiece_size=100000,
                   hard_vocab_limit=True, split_digits=False, normalization_rule_name="nmt_nfkc")


def _cache_dir() -> Path:
    root = os.environ.get("WANMOE_TINY_CACHE") or os.path.join(tempfile.gettempdir(), "wanmoe-tiny-cache")
    return Path(root)


def tiny_spm_bytes() -> bytes:
    """The tiny SentencePiece model proto (trained once, deterministic, cached on disk)."""
    import sentencepiece

    digest = hashlib.sha256(json.dumps([CORPUS, SPM_OPTIONS, sentencepiece.__version__], sort_keys=True).encode()).hexdigest()[:16]
    cached = _cache_dir() / f"tiny_umt5_spm_{digest}.model"
    if cached.is_file():
        return cached.read_bytes()
    buf = io.BytesIO()
    # Repeat the corpus so every piece has enough counts for a few hundred pieces.
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 4), model_writer=buf,
                                             minloglevel=2, **SPM_OPTIONS)
    data = buf.getvalue()
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, cached)
    return data


def tiny_t5_config(dim: int = 4096, dim_attn: int = 256, dim_ffn: int = 256, num_heads: int = 4, num_layers: int = 2) -> T5Config:
    """A tiny umT5 config whose vocabulary is the tiny SentencePiece model's (SPM_VOCAB pieces, a hard limit)."""
    return T5Config(vocab=SPM_VOCAB, dim=dim, dim_attn=dim_attn, dim_ffn=dim_ffn, num_heads=num_heads, num_layers=num_layers)


# d_model 4096 = the tiny DiT's text_dim; 4 heads of 64, FFN 256, 2 layers.
TINY_T5 = tiny_t5_config()


def random_official_state(cfg: T5Config | None = None, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random weights in official key names, scaled so activations stay O(1)."""
    cfg = cfg or TINY_T5
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in cfg.official_shapes().items():
        if "norm" in key:
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif "pos_embedding" in key:
            t = 0.5 * torch.randn(shape, generator=g)
        elif key == "token_embedding.weight":
            t = torch.randn(shape, generator=g)
        else:
            t = torch.randn(shape, generator=g) * shape[1] ** -0.5
            if ".attn.q." in key:  # no 1/sqrt(d) in attention: keep logits moderate
                t = t * cfg.head_dim ** -0.5
        sd[key] = t.to(dtype)
    return sd


def _save_safetensors(sd: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata)


def write_official_pth(path: str | os.PathLike, cfg: T5Config | None = None, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                       tokenizer_folder: bool = True) -> Path:
    """Official `models_t5_umt5-xxl-enc-bf16.pth` layout (+ `google/umt5-xxl/spiece.model` beside it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_official_state(cfg, seed, dtype), path)
    if tokenizer_folder:
        folder = path.parent / "google" / "umt5-xxl"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "spiece.model").write_bytes(tiny_spm_bytes())
    return path


def comfy_state(cfg: T5Config | None = None, seed: int = 0, dtype: torch.dtype = torch.float16, fp8: bool = False,
                embedding_fp8: bool = False) -> dict[str, torch.Tensor]:
    """ComfyUI umT5 state dict: HF T5 names, embedded `spiece_model`; scaled fp8 linears when `fp8`."""
    from ...text.encoder import official_to_hf

    sd: dict[str, torch.Tensor] = {}
    for key, t in random_official_state(cfg, seed).items():
        hf = official_to_hf(key)
        is_linear = t.dim() == 2 and "embedding" not in key
        if fp8 and (is_linear or (embedding_fp8 and key == "token_embedding.weight")):
            q, s = quantize_fp8(t)
            sd[hf] = q
            sd[hf[: -len(".weight")] + ".scale_weight"] = s.to(torch.float32)
        else:
            sd[hf] = t.to(dtype)
    if fp8:
        sd["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    sd["spiece_model"] = torch.frombuffer(bytearray(tiny_spm_bytes()), dtype=torch.uint8)
    return sd


def write_comfy(path: str | os.PathLike, cfg: T5Config | None = None, seed: int = 0, fp8: bool = False,
                dtype: torch.dtype = torch.float16) -> Path:
    """`umt5_xxl_fp16.safetensors` / `umt5_xxl_fp8_e4m3fn_scaled.safetensors` layout."""
    path = Path(path)
    _save_safetensors(comfy_state(cfg, seed, dtype, fp8), path)
    return path


def write_hf_folder(folder: str | os.PathLike, cfg: T5Config | None = None, seed: int = 0,
                    dtype: torch.dtype = torch.float32, max_shard_size: str | None = None,
                    tokenizer: bool = True) -> Path:
    """A Hugging Face `UMT5EncoderModel` folder (config.json + model.safetensors + spiece.model), via transformers.

    max_shard_size: shard the weights as transformers does for big models (model-0000N-of-0000M.safetensors +
    model.safetensors.index.json); tokenizer=False leaves spiece.model out (a diffusers pipeline keeps it in a
    sibling tokenizer/ folder)."""
    from transformers import UMT5Config, UMT5EncoderModel

    from ...text.encoder import official_to_hf

    cfg = cfg or TINY_T5
    folder = Path(folder)
    hf_cfg = UMT5Config(vocab_size=cfg.vocab, d_model=cfg.dim, d_kv=cfg.head_dim, d_ff=cfg.dim_ffn, num_layers=cfg.num_layers,
                        num_heads=cfg.num_heads, relative_attention_num_buckets=cfg.num_buckets,
                        relative_attention_max_distance=cfg.max_distance, feed_forward_proj="gated-gelu",
                        dropout_rate=0.0, layer_norm_epsilon=cfg.eps, is_encoder_decoder=False, use_cache=False)
    model = UMT5EncoderModel(hf_cfg)
    sd = {official_to_hf(k): v for k, v in random_official_state(cfg, seed).items()}
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
    model.load_state_dict(sd, strict=False)
    model.to(dtype).save_pretrained(str(folder), **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    if tokenizer:
        (folder / "spiece.model").write_bytes(tiny_spm_bytes())
    return folder


def write_comfy_file(path: str | os.PathLike, role: str = "t5", fp8: bool = False, seed: int = 0) -> Path:
    """Write a tiny umT5 in ComfyUI's layout under `path` (used by scripts/demo.py); role must be 't5'."""
    if role != "t5":
        raise ValueError(f"wan_core.testing.tiny.t5 writes the text encoder only (role 't5'), got role {role!r}")
    return write_comfy(path, TINY_T5, seed=seed, fp8=fp8)
