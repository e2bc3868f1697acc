"""Load the umT5 text encoder from the files users have and encode prompts.

Layouts recognised from the keys: the official `models_t5_umt5-xxl-enc-bf16.pth` (official names), ComfyUI's
`umt5_xxl_fp16.safetensors` / `umt5_xxl_fp8_e4m3fn_scaled.safetensors` (Hugging Face T5 names, scaled fp8,
embedded `spiece_model`) and a Hugging Face `UMT5EncoderModel` folder. Weights are read tensor by tensor from
the memory-mapped file straight to the target device and dtype into a model built on the meta device.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import COMPUTE_DTYPES, ENCODER_STORAGE
from ..io.checkpoint import Checkpoint, CheckpointError, file_identity, open_checkpoint, require_float
from ..io.safe import shown
from ..io.quant import FP8_DTYPES, describe_fp8, quantize_fp8, swap_in_fp8_linears
from .t5 import T5Config, T5Encoder
from .tokenizer import SPIECE_KEY, Tokenizer, _spm_from_tensor, find_tokenizer_near, load_tokenizer

log = logging.getLogger(__name__)

MAX_BLOCKS = 256  # encoder blocks a file may declare (umT5-XXL: 24); more is a corrupt or hostile header
_PREFIXES = ("text_encoders.umt5xxl.transformer.", "umt5xxl.transformer.", "text_encoder.", "t5xxl.transformer.",
             "model.", "module.")

# Hugging Face T5 names <-> official names (the 10-rule table of the reference): one table, read both ways.
# `{N}` is a block index, `{P}` one of the q/k/v/o projections.
_KEY_TABLE: tuple[tuple[str, str], ...] = (
    ("shared.", "token_embedding."),
    ("encoder.block.{N}.layer.0.SelfAttention.{P}.", "blocks.{N}.attn.{P}."),
    ("encoder.block.{N}.layer.0.SelfAttention.relative_attention_bias.", "blocks.{N}.pos_embedding.embedding."),
    ("encoder.block.{N}.layer.0.layer_norm.", "blocks.{N}.norm1."),
    ("encoder.block.{N}.layer.1.DenseReluDense.wi_0.", "blocks.{N}.ffn.gate.0."),
    ("encoder.block.{N}.layer.1.DenseReluDense.wi_1.", "blocks.{N}.ffn.fc1."),
    ("encoder.block.{N}.layer.1.DenseReluDense.wo.", "blocks.{N}.ffn.fc2."),
    ("encoder.block.{N}.layer.1.layer_norm.", "blocks.{N}.norm2."),
    ("encoder.final_layer_norm.", "norm."),
)
_EXTRA_HF = (("encoder.embed_tokens.", "token_embedding."),)  # the tied copy of `shared` some files keep


def _rules(pairs: Sequence[tuple[str, str]], source: int) -> tuple[tuple[re.Pattern[str], str], ...]:
    """Prefix rewrite rules from template pairs, reading templates[source] -> templates[1 - source]."""
    def pattern(t: str) -> re.Pattern[str]:
        return re.compile("^" + re.escape(t).replace(r"\{N\}", r"(?P<N>\d+)").replace(r"\{P\}", r"(?P<P>[qkvo])"))

    def replacement(t: str) -> str:
        return t.replace("{N}", r"\g<N>").replace("{P}", r"\g<P>")

    return tuple((pattern(pair[source]), replacement(pair[1 - source])) for pair in pairs)


_HF_TO_OFFICIAL = _rules(_KEY_TABLE + _EXTRA_HF, 0)
_OFFICIAL_TO_HF = _rules(_KEY_TABLE, 1)


def _rewrite(key: str, rules: tuple[tuple[re.Pattern[str], str], ...]) -> str | None:
    for pattern, repl in rules:
        new, n = pattern.subn(repl, key, count=1)
        if n:
            return new
    return None


def hf_to_official(key: str) -> str | None:
    """Official name of a Hugging Face T5 encoder key (suffixes such as `.scale_weight` kept); None drops it."""
    return _rewrite(key, _HF_TO_OFFICIAL)  # None: decoder, lm_head, spiece_model and other non-encoder keys


def official_to_hf(key: str) -> str:
    """Hugging Face T5 name of an official key (inverse of `hf_to_official`, `shared.weight` for the embedding)."""
    new = _rewrite(key, _OFFICIAL_TO_HF)
    if new is None:
        raise KeyError(f"not an official umT5 key: {key}")
    return new


def _sample(keys: Sequence[str], n: int = 4) -> str:
    return ", ".join(sorted(keys)[:n]) + (", ..." if len(keys) > n else "")


def _wrong_file(ckpt: Checkpoint) -> str | None:
    """Name what a non-umT5 file is (DiT, VAE, CLIP, another T5 family), or None when it looks like umT5."""
    keys = list(ckpt.keys())
    has = lambda *subs: any(any(s in k for s in subs) for k in keys)  # noqa: E731
    if has("self_attn.q.weight", "patch_embedding.weight", "attn1.to_q.weight", "condition_embedder.", "time_projection."):
        return "a Wan diffusion model (DiT): it belongs in models/diffusion_models/ and is loaded by the model loader"
    if has("decoder.middle.0.residual", "encoder.downsamples.", "decoder.upsamples.", "decoder.up_blocks.", "quant_conv."):
        return "a VAE: it belongs in models/vae/ and is loaded by the VAE loader"
    if has("text_model.", "resblocks.", "text_projection", "positional_embedding"):
        return "a CLIP text encoder, not Wan's umT5-XXL"
    return None


def detect_layout(ckpt: Checkpoint) -> tuple[str, Checkpoint]:
    """('official' | 'hf', view of the checkpoint in official key names); CheckpointError for other files."""
    ckpt = ckpt.strip_prefix(_PREFIXES)
    what = _wrong_file(ckpt)
    expected = ("Expected Wan's umT5-XXL text encoder: umt5_xxl_fp16.safetensors or umt5_xxl_fp8_e4m3fn_scaled.safetensors "
                "(models/text_encoders/), or the official models_t5_umt5-xxl-enc-bf16.pth.")
    if what:
        raise CheckpointError(f"{ckpt.path}: this file is {what}. {expected}")
    if "blocks.0.attn.q.weight" in ckpt and "token_embedding.weight" in ckpt:
        layout, view = "official", ckpt
        if "pos_embedding.embedding.weight" in ckpt:  # one shared table: the official T5 (not umT5) variant
            raise CheckpointError(f"{ckpt.path}: this T5 shares one relative-position table across layers "
                                  f"(plain T5, not umT5). {expected}")
    elif "encoder.block.0.layer.0.SelfAttention.q.weight" in ckpt:
        layout, view = "hf", ckpt.rename(hf_to_official)
        blocks = {int(m.group(1)) for k in view.keys() if (m := re.match(r"blocks\.(\d+)\.", k))}
        per_layer = [b for b in blocks if f"blocks.{b}.pos_embedding.embedding.weight" in view]
        vocab = view.infos["token_embedding.weight"].shape[0] if "token_embedding.weight" in view else "?"
        if len(blocks) > 1 and per_layer == [0]:
            raise CheckpointError(
                f"{ckpt.path}: this is a T5 encoder of another family (relative-position bias only in block 0, vocabulary "
                f"{vocab}; e.g. T5 v1.1 / t5xxl_fp16.safetensors used by Flux and SD3), not umT5. {expected}")
        if "blocks.0.ffn.gate.0.weight" not in view:
            raise CheckpointError(f"{ckpt.path}: this T5 has a non-gated FFN (original T5, vocabulary {vocab}), not "
                                  f"umT5's gated-GELU FFN. {expected}")
    else:
        raise CheckpointError(f"{ckpt.path}: not a text encoder this pack knows; its keys look like {_sample(ckpt.keys())}. "
                              f"{expected}")
    required = {"token_embedding.weight", "norm.weight", "blocks.0.pos_embedding.embedding.weight", "blocks.0.ffn.fc1.weight"}
    missing = sorted(required - set(view.keys()))
    if missing:
        raise CheckpointError(f"{ckpt.path}: a umT5 encoder ({layout} layout) but {', '.join(missing)} missing; "
                              "the file is incomplete. Download it again.")
    return layout, view


class Fp8Embedding(nn.Module):
    """Token embedding stored in fp8 with a per-tensor scale; looked-up rows are upcast."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, compute_dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.register_buffer("weight_scale", scale.reshape(()).to(device=weight.device, dtype=torch.float32))
        self.compute_dtype = compute_dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.weight.view(torch.uint8)).view(self.weight.dtype)
        return (rows.float() * self.weight_scale).to(self.compute_dtype)


@dataclass
class EncodeResult:
    """Per-prompt embeddings (float32, CPU, real tokens only [L_i, dim]) and truncation counts."""

    embeddings: list[torch.Tensor]
    dropped: list[int]
    cleaned: list[str] = field(default_factory=list)

    def warnings(self) -> list[str]:
        """User-facing truncation messages (one per truncated prompt)."""
        return [f"prompt {i + 1}: {n} token(s) beyond the 512-token limit were dropped; shorten the prompt."
                for i, n in enumerate(self.dropped) if n]


def encoder_identity(path: str | os.PathLike, dtype: str = "auto", tokenizer_path: str | os.PathLike | None = None) -> tuple:
    """Cache-key identity of an encoder (file identity, requested dtype, tokenizer file), known without loading it."""
    tok = file_identity(tokenizer_path) if tokenizer_path is not None else None
    return (file_identity(path), dtype, tok)


class TextEncoder:
    """A loaded umT5 encoder plus its tokenizer; `identity` equals `encoder_identity` of its load arguments."""

    def __init__(self, model: T5Encoder, tokenizer: Tokenizer, *, path: Path, layout: str, dtype: str,
                 compute_dtype: torch.dtype, identity: tuple) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.path, self.layout, self.dtype, self.compute_dtype = path, layout, dtype, compute_dtype
        self.identity = identity

    @property
    def device(self) -> torch.device:
        return self.model.device

    def to(self, device: torch.device | str) -> "TextEncoder":
        """Move the weights to `device` (e.g. 'cpu' to offload); returns self."""
        self.model.to(device)
        return self

    def offload(self) -> "TextEncoder":
        """Move the weights to CPU."""
        return self.to("cpu")

    def encode_ids(self, ids: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Encode token-id lists; float32 CPU [L_i, dim] each."""
        return [t.float().cpu() for t in self.model.encode_ids(ids, pad_id=self.tokenizer.pad_id)]

    def encode(self, prompts: Sequence[str]) -> EncodeResult:
        """Tokenize (cleaned, truncated to 512) and encode prompts as one padded batch."""
        toks = [self.tokenizer.encode(p) for p in prompts]
        embs = self.encode_ids([t.ids for t in toks]) if toks else []
        return EncodeResult(embs, [t.dropped for t in toks], [t.cleaned for t in toks])


def _resolve_dtype(view: Checkpoint, dtype: str, fp8_present: bool) -> tuple[str, torch.dtype]:
    """(storage mode 'fp32'|'bf16'|'fp16'|'fp8', compute dtype)."""
    if dtype not in ENCODER_STORAGE:
        raise ValueError(f"dtype must be one of {ENCODER_STORAGE}, got {dtype!r}")
    if dtype == "auto":
        if fp8_present:
            dtype = "fp8"
        else:
            stored = view.infos["blocks.0.attn.q.weight"].dtype
            dtype = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(stored, "fp32")
    if dtype == "fp8":
        return "fp8", torch.bfloat16
    return dtype, COMPUTE_DTYPES[dtype]


def _set_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    if leaf in parent._buffers:
        parent._buffers[leaf] = value
    else:
        setattr(parent, leaf, nn.Parameter(value, requires_grad=False))


def _find_tokenizer(ckpt: Checkpoint, path: Path, tokenizer_path: str | os.PathLike | None) -> Tokenizer:
    if tokenizer_path is not None:
        return load_tokenizer(tokenizer_path)
    if SPIECE_KEY in ckpt.infos:
        return _spm_from_tensor(ckpt.get(SPIECE_KEY), f"{path} ({SPIECE_KEY})")
    near = find_tokenizer_near(path)
    if near is not None:
        return load_tokenizer(near)
    raise CheckpointError(
        f"{path}: found no umT5 tokenizer: the file has no embedded '{SPIECE_KEY}' and there is no spiece.model or "
        "tokenizer.json next to it (nor in google/umt5-xxl/, nor in a diffusers pipeline's tokenizer/ beside it). "
        "Put the tokenizer folder of the official checkpoint (google/umt5-xxl/) next to the weights, or give its path.")


def load_text_encoder(path: str | os.PathLike, *, device: torch.device | str = "cpu", dtype: str = "auto",
                      tokenizer_path: str | os.PathLike | None = None) -> TextEncoder:
    """Load a umT5 encoder (official .pth, ComfyUI safetensors incl. scaled fp8, HF folder) and its tokenizer."""
    path = Path(path)
    raw = open_checkpoint(path)
    layout, view = detect_layout(raw)
    tokenizer = _find_tokenizer(raw.strip_prefix(_PREFIXES), path, tokenizer_path)
    shapes = {k: i.shape for k, i in view.infos.items()}
    blocks = {k.split(".")[1] for k in shapes if k.startswith("blocks.")}
    if len(blocks) > MAX_BLOCKS or not all(b.isdigit() and int(b) < MAX_BLOCKS for b in blocks):
        raise CheckpointError(f"{path}: the encoder's blocks are not numbered 0..N-1 with N <= {MAX_BLOCKS} (umT5-XXL "
                              "has 24); the file is corrupt. Download it again.")
    try:
        cfg = T5Config.from_shapes(shapes)
    except (KeyError, ValueError):
        raise CheckpointError(f"{path}: umT5 keys are incomplete or have the wrong number of dimensions; download the "
                              "file again.") from None
    expected = cfg.official_shapes()
    bad = {k: (shapes.get(k), s) for k, s in expected.items() if k in shapes and tuple(shapes[k]) != s}
    missing = sorted(set(expected) - set(shapes))
    if bad or missing:
        detail = "; ".join([f"{k}: found {tuple(a)} expected {b}" for k, (a, b) in list(bad.items())[:3]] + [f"missing {_sample(missing)}"] * bool(missing))
        raise CheckpointError(f"{path}: inconsistent umT5 weights ({detail}). The file is damaged or mixed; download it again.")
    require_float(view, list(expected), "umT5 text encoder")
    if tokenizer.vocab_size > cfg.vocab:
        raise CheckpointError(f"{path}: the tokenizer has {tokenizer.vocab_size} pieces but the embedding only {cfg.vocab} rows; "
                              "the tokenizer is not the one of this encoder.")

    dev = torch.device(device)
    fp8 = describe_fp8(view)
    mode, compute = _resolve_dtype(view, dtype, fp8 is not None)
    scales = fp8.layers if fp8 else {}
    try:
        with torch.device("meta"):
            model = T5Encoder(cfg)
    except (ValueError, ZeroDivisionError, RuntimeError):
        raise CheckpointError(f"{path}: the encoder's tensor shapes ({cfg}) do not form a umT5 encoder; the file is "
                              "corrupt. Download it again.") from None
    linear_names = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if mode == "fp8":
        swap_in_fp8_linears(model, linear_names, storage_dtype=torch.float8_e4m3fn, compute_dtype=compute)

    for key in expected:
        t = view.get(key)
        layer = key[: -len(".weight")]
        scale = view.get(scales[layer]).float() if scales.get(layer) else None
        if scale is not None and scale.numel() != 1:
            raise CheckpointError(f"{path}: fp8 scale {shown(scales[layer])} has shape {list(scale.shape)}; only "
                                  "per-tensor scales (one value) are supported. The file is corrupt or of another "
                                  "format.")
        if t.dtype in FP8_DTYPES:
            if mode == "fp8" and (layer in linear_names or key == "token_embedding.weight"):
                s = scale if scale is not None else torch.ones(())
                if key == "token_embedding.weight":
                    model.token_embedding = Fp8Embedding(t.to(dev), s.to(dev), compute)
                else:
                    _set_tensor(model, key, t.to(dev))
                    _set_tensor(model, layer + ".weight_scale", s.reshape(()).to(dev))
                continue
            t = t.float() * (scale if scale is not None else 1.0)  # dequantize in fp32, cast once below
        if mode == "fp8" and layer in linear_names:
            q, s = quantize_fp8(t.to(dev))
            _set_tensor(model, key, q)
            _set_tensor(model, layer + ".weight_scale", s)
        else:
            _set_tensor(model, key, t.to(device=dev, dtype=compute))
        del t
    model.eval().requires_grad_(False)
    log.info("umT5 encoder %s: %s layout, %d layers, dim %d, %s on %s", path.name, layout, cfg.num_layers, cfg.dim, mode, dev)
    return TextEncoder(model, tokenizer, path=path, layout=layout, dtype=mode, compute_dtype=compute,
                       identity=encoder_identity(path, dtype, tokenizer_path))
