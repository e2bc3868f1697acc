"""The Wan2.2-T2V-A14B diffusion transformer (one expert), in the official module and key layout.

Follows wan/modules/model.py of Wan-Video/Wan2.2: patch embedding, sinusoidal time embedding, text
embedding of the zero-padded context, `num_layers` blocks (modulated self-attention with 3-D RoPE,
cross-attention, modulated FFN), a modulated head and unpatchify. Parameter names equal the official
state-dict keys, so official files load without renaming.

Precision (official policy under autocast): Linear/conv/attention compute in `compute_dtype`; the
residual stream, norms, modulation and the time MLPs and head in float32; sinusoid and RoPE in float64.

One deviation in form, not in result: the official forward pads each context to 512 zero rows and attends to all of
them; here the identical padding rows are embedded once and attended as one key whose logits carry log(count)
(`_padding_bias`), which is the same softmax up to float rounding at a tenth of the text's rows for a 50-token prompt.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..io.quant.linear import dequantized_once
from ..memory.pace import current, map_rows
from .attention import attend_biased, attend_in_chunks, get_attention
from .embeddings import sinusoidal_embedding
from .rope import RotaryEmbedding, apply_rope, apply_rope_

if TYPE_CHECKING:
    from .vace import VaceHints, VaceInput

LINEAR_MULTIPLE = 1024  # rows per block of a chunked Linear: BLAS keeps the same kernel for every block this large
# Sub-modules the official code runs under autocast(float32) whatever the model dtype.
FP32_MODULES = ("time_embedding", "time_projection", "head", "vace_patch_embedding")


@dataclass(frozen=True)
class DiTConfig:
    """Shape of one Wan DiT expert (official WanModel arguments)."""

    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    text_len: int = 512
    eps: float = 1e-6
    patch_size: tuple[int, int, int] = (1, 2, 2)
    vace_layers: int = 0  # VACE blocks (Wan2.2-VACE-Fun A14B: 8); 0 = a plain T2V expert
    vace_in_dim: int = 96  # VACE context channels: 16 inactive + 16 reactive latent + 64 mask

    def __post_init__(self) -> None:
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ValueError(f"dim {self.dim} must split into {self.num_heads} heads of an even width")
        if self.vace_layers and not 0 < self.vace_layers <= self.num_layers:
            raise ValueError(f"{self.vace_layers} VACE blocks cannot attach to {self.num_layers} main blocks")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @classmethod
    def a14b(cls) -> "DiTConfig":
        """The official Wan2.2-T2V-A14B expert (wan/configs/wan_t2v_A14B.py)."""
        return cls(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)


def _text_items(context: torch.Tensor | list[torch.Tensor], batch: int, text_len: int,
                text_dim: int) -> list[torch.Tensor]:
    """The batch's text contexts [tokens <= text_len, text_dim], one per item (ValueError for users otherwise)."""
    items = list(context.unbind(0)) if isinstance(context, torch.Tensor) and context.dim() == 3 else list(context)
    if len(items) != batch:
        raise ValueError(f"got {len(items)} text contexts for a batch of {batch} latents")
    for i, item in enumerate(items):
        if item.dim() != 2 or item.shape[-1] != text_dim or item.shape[0] > text_len:
            raise ValueError(f"text context {i} has shape {tuple(item.shape)}; expected [tokens <= {text_len}, {text_dim}]")
    return items


def pad_text_contexts(context: torch.Tensor | list[torch.Tensor], batch: int, text_len: int, text_dim: int,
                      device: torch.device | str, length: int | None = None) -> torch.Tensor:
    """[batch, length, text_dim] float32: each context zero-padded to `length` tokens (text_len by default), as the
    official forward does before text_embedding (zero rows still pass through its bias, so the padding is part of
    the model)."""
    items = _text_items(context, batch, text_len, text_dim)
    length = text_len if length is None else length
    padded = torch.zeros(batch, length, text_dim, dtype=torch.float32, device=device)
    for i, item in enumerate(items):
        padded[i, : item.shape[0]] = item.to(device=device, dtype=torch.float32)
    return padded


def _text_lengths(items: list[torch.Tensor]) -> list[int]:
    """Each context's tokens before its trailing all-zero rows: those embed exactly as the padding does, so a context
    given already padded (diffusers' [B, 512, 4096], a multi-GPU rank's copy) is kept as compactly as an unpadded one."""
    lengths = []
    for item in items:
        nonzero = item.ne(0).any(dim=-1).nonzero()
        lengths.append(int(nonzero[-1]) + 1 if len(nonzero) else 0)
    return lengths


def _padding_bias(lengths: list[int], keys: int, text_len: int, device: torch.device) -> torch.Tensor | None:
    """Cross-attention's logit bias [B, 1, 1, keys] float32 for contexts of `lengths` tokens kept as `keys` rows.

    The official forward pads every context to text_len zero rows and attends to all of them. Zero rows embed to one
    and the same vector, so their keys and values are identical: n such keys weigh exactly as one key whose logit
    is raised by log(n). Item i keeps its tokens and keys - lengths[i] padding rows (at least one while it has
    padding), each standing for (text_len - lengths[i]) / (keys - lengths[i]) of the official ones. None when
    every row stands for one: the official padded attention itself.
    """
    bias = torch.zeros(len(lengths), 1, 1, keys, dtype=torch.float32)
    for i, n in enumerate(lengths):
        if keys > n:
            bias[i, 0, 0, n:] = math.log((text_len - n) / (keys - n))
    return bias.to(device) if bool(bias.any()) else None


class Linear(nn.Linear):
    """nn.Linear that computes in `compute_dtype` whatever dtype its weights are stored in."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        self.compute_dtype = torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype
        bias = self.bias.to(dtype) if self.bias is not None else None
        weight = self.weight.to(dtype)
        rows = x.reshape(-1, self.in_features).to(dtype)
        # Over many tokens, in whole blocks of rows with the run's cancel check between them (memory.pace); the
        # blocks are contiguous and large, so each row's product is the same as in one call.
        out = map_rows(lambda block: F.linear(block, weight, bias), rows, dim=0,
                       work_per_row=2 * self.in_features * self.out_features, multiple=LINEAR_MULTIPLE)
        return out.view(*x.shape[:-1], self.out_features)


class PatchEmbedding(nn.Conv3d):
    """Conv3d with kernel = stride = patch size, computing in `compute_dtype`."""

    def __init__(self, in_dim: int, dim: int, patch_size: tuple[int, int, int]) -> None:
        super().__init__(in_dim, dim, kernel_size=patch_size, stride=patch_size)
        self.compute_dtype = torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype
        return self._conv_forward(x.to(dtype), self.weight.to(dtype), self.bias.to(dtype))


class RMSNorm(nn.Module):
    """WanRMSNorm: x·rsqrt(mean(x²)+eps)·weight, computed in float32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight.float()


class LayerNorm(nn.Module):
    """WanLayerNorm: LayerNorm in float32, with or without affine parameters."""

    def __init__(self, dim: int, eps: float, affine: bool = False) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), (self.dim,), weight, bias, self.eps)


class Attention(nn.Module):
    """q/k/v/o projections with q/k RMSNorm across the full width (before the head split), as official WanSelfAttention."""

    def __init__(self, dim: int, num_heads: int, eps: float, attention: str) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k, self.v, self.o = Linear(dim, dim), Linear(dim, dim), Linear(dim, dim), Linear(dim, dim)
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)
        self.attend = get_attention(attention)
        self.compute_dtype = torch.float32

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype
        return self.o(attend_in_chunks(self.attend, q.to(dtype), k.to(dtype), v.to(dtype)).flatten(2))


class SelfAttention(Attention):
    """Self-attention over the video tokens with 3-D RoPE on q and k."""

    rope_float64 = False  # True: the official float64 RoPE arithmetic (two float64 copies of q and of k)

    def forward(self, x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
        q = self._normed_rope(self.norm_q, self.q(x), rotations)
        k = self._normed_rope(self.norm_k, self.k(x), rotations)
        return self._attend(q, k, self._heads(self.v(x)))

    def _normed_rope(self, norm: RMSNorm, y: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
        """RoPE(heads(norm(y))) per token, in chunks of tokens with the cancel check between them (elementwise work)."""
        rope = apply_rope if self.rope_float64 else apply_rope_
        pace, tokens = current(), y.shape[1]
        rows = pace.rows(tokens, 1.0, y.device, elements_per_row=y.shape[0] * y.shape[2])
        pace.tick()
        if rows >= tokens:
            return rope(self._heads(norm(y)), rotations)
        out = torch.empty(*y.shape[:2], self.num_heads, self.head_dim, dtype=torch.float32, device=y.device)
        for start in range(0, tokens, rows):
            if start:
                pace.tick()
            end = min(tokens, start + rows)
            out[:, start:end] = rope(self._heads(norm(y[:, start:end])), rotations[start:end])
        return out


class CrossAttention(Attention):
    """Attention from video tokens to the embedded text (no RoPE, no mask)."""

    def project_context(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the embedded text: the same at every step of a run, so they can be kept."""
        return self._heads(self.norm_k(self.k(context))), self._heads(self.v(context))

    def forward(self, x: torch.Tensor, context: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, L, dim] to `context` [B, keys, dim] (its keys/values `kv` when kept); `bias`: the padding's logit
        bias (`_padding_bias`), or None for the plain attention over every row."""
        k, v = kv if kv is not None else self.project_context(context)
        q = self._heads(self.norm_q(self.q(x)))
        if bias is None:
            return self._attend(q, k, v)
        dtype = self.compute_dtype
        return self.o(attend_biased(q.to(dtype), k, v, bias).flatten(2))


# Tokens of the FFN's hidden layer computed at a time: its [B, tokens, ffn_dim] activation is the largest of a block
# (about 75% of the DiT's working set unchunked); 256 MiB of it at a time keeps the matmuls large (A14B bf16: about
# 9,700 tokens) while bounding the peak. Tokens are independent in the FFN: chunks change values only by the
# matmuls' float rounding (1e-6 on a tiny model, tests/engine/dit bound it).
FFN_CHUNK_BYTES = 256 << 20


def _modulate_(normed: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """normed * (1 + scale) + shift, in place on the (fresh) norm output."""
    return normed.mul_(1 + scale).add_(shift)


class WanBlock(nn.Module):
    """One transformer block (official WanAttentionBlock); `norm3` is the affine norm before cross-attention."""

    def __init__(self, config: DiTConfig, attention: str) -> None:
        super().__init__()
        dim, eps = config.dim, config.eps
        self.norm1 = LayerNorm(dim, eps)
        self.self_attn = SelfAttention(dim, config.num_heads, eps, attention)
        self.norm3 = LayerNorm(dim, eps, affine=True)
        self.cross_attn = CrossAttention(dim, config.num_heads, eps, attention)
        self.norm2 = LayerNorm(dim, eps)
        self.ffn = nn.Sequential(Linear(dim, config.ffn_dim), nn.GELU(approximate="tanh"), Linear(config.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e0: torch.Tensor, context: torch.Tensor, rotations: torch.Tensor, *,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None, text_bias: torch.Tensor | None = None,
                inplace: bool = False) -> torch.Tensor:
        """x [B, L, dim] float32, e0 [B, 6, dim] float32, context [B, keys, dim] -> x [B, L, dim] float32.

        `kv`: the cross-attention's precomputed text keys/values; `text_bias`: the text padding's logit bias
        (`_padding_bias`); `inplace`: update x itself (the caller owns it).
        """
        modulation = (self.modulation.float() + e0).unsqueeze(2)  # [B, 6, 1, dim]
        shift_msa, scale_msa, gate_msa, shift_ffn, scale_ffn, gate_ffn = modulation.unbind(1)
        x = x if inplace else x.clone()
        y = self.self_attn(_modulate_(self.norm1(x), shift_msa, scale_msa), rotations)
        x.addcmul_(y.float(), gate_msa)
        del y
        x.add_(self.cross_attn(self.norm3(x), context, kv, text_bias).float())
        self._ffn_(x, shift_ffn, scale_ffn, gate_ffn)
        return x

    def _ffn_(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, gate: torch.Tensor) -> None:
        """x += FFN(norm2(x) * (1 + scale) + shift) * gate, over token chunks (see FFN_CHUNK_BYTES)."""
        b, tokens, _ = x.shape
        itemsize = torch.empty((), dtype=self.ffn[0].compute_dtype).element_size()
        step = max(1, FFN_CHUNK_BYTES // (b * self.ffn[0].out_features * itemsize))
        with dequantized_once(self.ffn[0], self.ffn[2]) if step < tokens else nullcontext():
            for start in range(0, tokens, step):
                part = x[:, start:start + step]
                y = self._ffn_layers(_modulate_(self.norm2(part), shift, scale))
                part.addcmul_(y.float(), gate)

    def _ffn_layers(self, x: torch.Tensor) -> torch.Tensor:
        """self.ffn(x) with its GELU in place on the hidden layer: the same kernel on the same values, so the same
        bits, without a second [B, tokens, ffn_dim] tensor (the block's largest) beside the first."""
        up, act, down = self.ffn
        hidden = up(x)
        if type(act) is nn.GELU and not hidden.requires_grad:  # autograd would need the hidden layer itself
            return down(torch.ops.aten.gelu_(hidden, approximate=act.approximate))
        return down(act(hidden))


class Head(nn.Module):
    """Output head: LayerNorm modulated by the time embedding `e` (not e0), then a Linear to patch pixels."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        dim = config.dim
        self.norm = LayerNorm(dim, config.eps)
        self.head = Linear(dim, config.out_dim * math.prod(config.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation.float() + e.float().unsqueeze(1)).unsqueeze(2).unbind(1)
        return self.head(self.norm(x) * (1 + scale) + shift)


@dataclass
class ForwardState:
    """What one forward's blocks share: the token stream and what every block reads alongside it.

    `embed` makes it, `run_blocks` advances `x`, `finish` turns `x` into the velocity. Keeping the three steps
    apart lets control branches, step caches and sequence parallelism work on the token stream without
    rewriting the forward.
    """

    x: torch.Tensor  # [B, L, dim] float32 residual stream, tokens in f, h, w order
    e: torch.Tensor  # [B, dim] float32 time embedding (modulates the head)
    e0: torch.Tensor  # [B, 6, dim] float32 time projection (modulates every block)
    context: torch.Tensor  # [B, keys, dim] embedded text: the tokens, then its padding rows (see `_padding_bias`)
    rotations: torch.Tensor  # [L, head_dim/2] complex128 RoPE rotations of the tokens
    grid: tuple[int, int, int]  # latent grid after patching (F', H', W')
    kv: list | None = None  # per block: the cross-attention's text keys/values (filled on first use), or None
    text_bias: torch.Tensor | None = None  # [B, 1, 1, keys] logit bias of the padding rows, None: every row is one

    def text_kv(self, slot: int, block: "WanBlock") -> tuple[torch.Tensor, torch.Tensor] | None:
        """The text keys/values of `block` kept in `slot` (projected on its first use), or None without a cache."""
        if self.kv is None:
            return None
        if self.kv[slot] is None:
            self.kv[slot] = block.cross_attn.project_context(self.context)
        return self.kv[slot]


@dataclass
class _TextEntry:
    """One text input's embedding and per-block cross-attention keys/values, kept while the same contexts return."""

    sources: tuple  # the context tensors themselves: holding them keeps their ids unique while cached
    text: torch.Tensor
    kv: list
    bias: torch.Tensor | None


def _version(t: torch.Tensor) -> int:
    """The tensor's in-place-change counter (inference-mode tensors have none: identity alone then decides)."""
    try:
        return t._version
    except RuntimeError:
        return -1


TEXT_CACHE_ENTRIES = 4  # cond, uncond, and both as one batch: what one guided run asks for


class WanDiT(nn.Module):
    """One Wan2.2 T2V expert: (latent x, timestep t, text context) -> flow velocity, float32."""

    def __init__(self, config: DiTConfig, *, attention: str = "sdpa") -> None:
        super().__init__()
        self.config = config
        self.attention = attention
        dim = config.dim
        self.patch_embedding = PatchEmbedding(config.in_dim, dim, config.patch_size)
        self.text_embedding = nn.Sequential(Linear(config.text_dim, dim), nn.GELU(approximate="tanh"), Linear(dim, dim))
        self.time_embedding = nn.Sequential(Linear(config.freq_dim, dim), nn.SiLU(), Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(WanBlock(config, attention) for _ in range(config.num_layers))
        self.head = Head(config)
        self.rope = RotaryEmbedding(config.head_dim)
        if config.vace_layers:
            from .vace import add_vace  # the VACE blocks build on this module's blocks

            add_vace(self, attention)
        self.compute_dtype = torch.float32
        self._text_cache: dict[tuple, _TextEntry] = {}
        self.compiled = False

    @property
    def compute_dtype(self) -> torch.dtype:
        """dtype of the matmuls (Linear, conv, attention); residual stream and norms stay float32."""
        return self._compute_dtype

    @compute_dtype.setter
    def compute_dtype(self, dtype: torch.dtype) -> None:
        self._compute_dtype = dtype
        for name, module in self.named_modules():
            if module is not self and hasattr(module, "compute_dtype"):
                module.compute_dtype = torch.float32 if name.startswith(FP32_MODULES) else dtype

    def compile_blocks(self, enabled: bool = True, **options) -> None:
        """Run each transformer block through `torch.compile` (options such as mode=, backend= go to it), or back
        eagerly. Per-step values (timestep, latent) are tensors, not guards, so steps do not recompile; weights
        changed in place (a merged LoRA) keep the compiled code; run-time LoRA terms added, removed or re-weighted later
        are read in the Linears' forward, so the guards see them and the blocks recompile (tests/engine/lora)."""
        for block in [*self.blocks, *getattr(self, "vace_blocks", ())]:
            eager = block.__dict__.pop("_eager_forward", None)
            if eager is not None:
                block.forward = eager
            if enabled:
                block._eager_forward = block.forward
                block.forward = torch.compile(block.forward, dynamic=False, **options)
        self.compiled = enabled

    def set_attention(self, attention: str) -> None:
        """Switch every attention layer to another registered backend."""
        attend = get_attention(attention)
        self.attention = attention
        for module in self.modules():
            if isinstance(module, Attention):
                module.attend = attend

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor | list[torch.Tensor],
                before_block: Callable[[int], None] | None = None, control: "VaceInput | None" = None) -> torch.Tensor:
        """x [B, in_dim, F, H, W], t [B] on the 0..1000 scale, context [B, L, text_dim] or list of [L_i, text_dim]
        -> velocity [B, out_dim, F, H, W] float32. `before_block(i)` runs before block i (cancellation checks);
        `control`: VACE hints (dit.vace), only for an expert with VACE blocks."""
        state = self.embed(x, t, context)
        state.x = self.run_blocks(state, before_block, control)
        return self.finish(state)

    def embed(self, x: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor | list[torch.Tensor]) -> ForwardState:
        """Patch, time and text embeddings and the RoPE rotations: everything the blocks read."""
        b, _, frames, height, width = x.shape
        grid = self._grid(frames, height, width)
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(b)
        tokens = self.patch_embedding(x).flatten(2).transpose(1, 2).float()  # tokens in f, h, w order
        e = self.time_embedding(sinusoidal_embedding(t, self.config.freq_dim).float()).float()
        e0 = self.time_projection(e).float().unflatten(1, (6, self.config.dim))
        entry = self._embed_text(context, b, x.device)
        return ForwardState(tokens, e, e0, entry.text, self.rope.grid(*grid, device=x.device), grid, entry.kv,
                            entry.bias)

    def _embed_text(self, context: torch.Tensor | list[torch.Tensor], batch: int, device: torch.device) -> _TextEntry:
        """The embedded text, its padding bias and its per-block key/value slots, reused while the same context
        tensors come back (a sampling run passes the same ones at every step; `forget_text` ends it).

        The padding is embedded once per item, not text_len - tokens times (`_padding_bias`): with a 50-token prompt
        the text embedding, the kept keys/values and the cross-attention's work are about a tenth of the official
        512 rows', the result the same up to float rounding."""
        sources = (context,) if isinstance(context, torch.Tensor) else tuple(context)
        key = tuple(id(t) for t in sources) + (str(device),)
        entry = self._text_cache.get(key)
        if entry is None or any(a is not b or _version(a) != v for a, (b, v) in zip(sources, entry.sources)):
            config = self.config
            items = _text_items(context, batch, config.text_len, config.text_dim)
            lengths = _text_lengths(items)
            keys = min(config.text_len, max(lengths) + 1)  # every item keeps at least one padding row while it has one
            tokens = [item[:n] for item, n in zip(items, lengths)]
            text = self.text_embedding(pad_text_contexts(tokens, batch, config.text_len, config.text_dim, device,
                                                         length=keys))
            slots = len(self.blocks) + len(getattr(self, "vace_blocks", ()))  # VACE blocks' slots follow the main ones
            entry = _TextEntry(tuple((t, _version(t)) for t in sources), text, [None] * slots,
                               _padding_bias(lengths, keys, config.text_len, device))
            if len(self._text_cache) >= TEXT_CACHE_ENTRIES:
                self._text_cache.pop(next(iter(self._text_cache)))
            self._text_cache[key] = entry
        return entry

    @property
    def kept_texts(self) -> int:
        """How many text inputs' embeddings (and keys/values) are kept now."""
        return len(self._text_cache)

    def forget_text(self) -> None:
        """Drop the kept text embeddings and cross-attention keys/values (end of a run, or changed weights)."""
        self._text_cache.clear()

    def run_blocks(self, state: ForwardState, before_block: Callable[[int], None] | None = None,
                   control: "VaceInput | None" = None) -> torch.Tensor:
        """The transformer blocks over the token stream: returns the new stream [B, L, dim] float32 (a new tensor;
        `state.x` is left as it was). `control`: VACE hints (dit.vace), added after the blocks they follow."""
        x = state.x.clone()
        hints = self.vace_hints(state, control) if control is not None else None
        for i, block in enumerate(self.blocks):
            if before_block is not None:
                before_block(i)
            x = block(x, state.e0, state.context, state.rotations, kv=state.text_kv(i, block),
                      text_bias=state.text_bias, inplace=True)
            if hints:
                hints.after_block(i, x)
        return x

    def vace_hints(self, state: ForwardState, control: "VaceInput") -> "VaceHints":
        """The VACE hint streams of this forward (dit.vace), started from the patch-embedded tokens in `state`."""
        from .vace import VaceHints

        return VaceHints(self, state, control)

    def finish(self, state: ForwardState) -> torch.Tensor:
        """Head and unpatchify: the token stream -> velocity [B, out_dim, F, H, W] float32."""
        return self.unpatchify(self.head(state.x, state.e).float(), state.grid)

    def _grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        pt, ph, pw = self.config.patch_size
        if frames % pt or height % ph or width % pw:
            raise ValueError(f"latent of {frames}x{height}x{width} (frames x height x width) is not divisible by the "
                             f"patch size {pt}x{ph}x{pw}; use an image size that is a multiple of {8 * ph} pixels")
        return frames // pt, height // ph, width // pw

    def pad_context(self, context: torch.Tensor | list[torch.Tensor], batch: int, device: torch.device) -> torch.Tensor:
        """Zero-pad each context to this model's text_len tokens, as the official forward does before text_embedding."""
        return pad_text_contexts(context, batch, self.config.text_len, self.config.text_dim, device)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, F'H'W', out·pt·ph·pw] -> [B, out, F'pt, H'ph, W'pw] (official einsum 'fhwpqrc->cfphqwr')."""
        (f, h, w), (pt, ph, pw) = grid, self.config.patch_size
        x = x.view(x.shape[0], f, h, w, pt, ph, pw, self.config.out_dim)
        x = torch.einsum("bfhwpqrc->bcfphqwr", x)
        return x.reshape(x.shape[0], self.config.out_dim, f * pt, h * ph, w * pw)
