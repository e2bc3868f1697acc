"""The umT5 encoder in the official Wan key layout (`token_embedding`, `blocks.N.*`, `norm`).

Numerics follow the official Wan T5 encoder: RMS norm with fp32 statistics, attention without 1/sqrt(d)
scaling and with a relative-position bias table in every layer, softmax in fp32, gated tanh-GELU FFN,
and a clamp of activations in fp16. `T5Encoder.encode_ids` returns only the real tokens of each prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class T5Config:
    """Sizes of a umT5 encoder (official naming)."""

    vocab: int
    dim: int
    dim_attn: int
    dim_ffn: int
    num_heads: int
    num_layers: int
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.dim_attn // self.num_heads

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, Sequence[int]]) -> "T5Config":
        """Derive the config from official-layout key shapes (heads = width of the position table)."""
        vocab, dim = shapes["token_embedding.weight"]
        layers = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("blocks."))
        buckets, heads = shapes["blocks.0.pos_embedding.embedding.weight"]
        return cls(vocab=int(vocab), dim=int(dim), dim_attn=int(shapes["blocks.0.attn.q.weight"][0]),
                   dim_ffn=int(shapes["blocks.0.ffn.fc1.weight"][0]), num_heads=int(heads), num_layers=layers,
                   num_buckets=int(buckets))

    def official_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every official key of an encoder of this size, with its shape."""
        s: dict[str, tuple[int, ...]] = {"token_embedding.weight": (self.vocab, self.dim)}
        for i in range(self.num_layers):
            p = f"blocks.{i}."
            s[p + "norm1.weight"] = (self.dim,)
            for n in "qkv":
                s[p + f"attn.{n}.weight"] = (self.dim_attn, self.dim)
            s[p + "attn.o.weight"] = (self.dim, self.dim_attn)
            s[p + "norm2.weight"] = (self.dim,)
            s[p + "ffn.gate.0.weight"] = (self.dim_ffn, self.dim)
            s[p + "ffn.fc1.weight"] = (self.dim_ffn, self.dim)
            s[p + "ffn.fc2.weight"] = (self.dim, self.dim_ffn)
            s[p + "pos_embedding.embedding.weight"] = (self.num_buckets, self.num_heads)
        s["norm.weight"] = (self.dim,)
        return s


UMT5_XXL = T5Config(vocab=256384, dim=4096, dim_attn=4096, dim_ffn=10240, num_heads=64, num_layers=24)


def _fp16_clamp(x: torch.Tensor) -> torch.Tensor:
    # Official quirk: only fp16 activations are clamped, and only once an inf appeared.
    if x.dtype == torch.float16 and torch.isinf(x).any():
        limit = torch.finfo(x.dtype).max - 1000
        x = x.clamp(-limit, limit)
    return x


class T5RMSNorm(nn.Module):
    """RMS norm without mean subtraction or bias; statistics in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x * rsqrt(fp32 stats) promotes to fp32; cast back only when the weight is half precision (official).
        x = x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.type_as(self.weight)
        return self.weight * x


class T5Attention(nn.Module):
    """Multi-head self-attention without bias and without 1/sqrt(d) scaling."""

    def __init__(self, dim: int, dim_attn: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n = x.shape[0], self.num_heads
        q = self.q(x).view(b, -1, n, self.q.out_features // n).transpose(1, 2)
        k = self.k(x).view(b, -1, n, self.k.out_features // n).transpose(1, 2)
        v = self.v(x).view(b, -1, n, self.v.out_features // n).transpose(1, 2)
        logits = torch.matmul(q, k.transpose(-1, -2)) + bias.to(q.dtype)
        # Softmax in fp32, probabilities back in the activation dtype (official).
        attn = F.softmax(logits.float(), dim=-1).type_as(logits)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, -1, self.o.in_features)
        return self.o(out)


class T5FeedForward(nn.Module):
    """Gated FFN: fc2(fc1(x) * gelu_tanh(gate(x)))."""

    def __init__(self, dim: int, dim_ffn: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False), nn.GELU(approximate="tanh"))
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


class T5RelativeEmbedding(nn.Module):
    """Bidirectional bucketed relative-position bias, one table per layer."""

    def __init__(self, num_buckets: int, num_heads: int, max_distance: int = 128) -> None:
        super().__init__()
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def buckets(self, lq: int, lk: int, device: torch.device) -> torch.Tensor:
        """Bucket index [lq, lk] of rel = k_pos - q_pos."""
        rel = torch.arange(lk, device=device)[None, :] - torch.arange(lq, device=device)[:, None]
        half = self.num_buckets // 2  # one half per sign of rel
        out = (rel > 0).long() * half
        rel = rel.abs()
        exact = half // 2  # |rel| < exact: one bucket per distance; beyond: log-spaced up to max_distance
        large = exact + (torch.log(rel.float() / exact) / math.log(self.max_distance / exact) * (half - exact)).long()
        large = large.clamp(max=half - 1)
        return out + torch.where(rel < exact, rel, large)

    def forward(self, lq: int, lk: int) -> torch.Tensor:
        """Bias [1, heads, lq, lk]."""
        table = self.embedding(self.buckets(lq, lk, self.embedding.weight.device))
        return table.permute(2, 0, 1).unsqueeze(0).contiguous()


class T5Block(nn.Module):
    """Pre-norm self-attention + gated FFN with its own relative-position table."""

    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.norm1 = T5RMSNorm(cfg.dim, cfg.eps)
        self.attn = T5Attention(cfg.dim, cfg.dim_attn, cfg.num_heads)
        self.norm2 = T5RMSNorm(cfg.dim, cfg.eps)
        self.ffn = T5FeedForward(cfg.dim, cfg.dim_ffn)
        self.pos_embedding = T5RelativeEmbedding(cfg.num_buckets, cfg.num_heads, cfg.max_distance)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor | None) -> torch.Tensor:
        bias = self.pos_embedding(x.shape[1], x.shape[1])
        if mask_bias is not None:
            bias = bias.to(mask_bias.dtype) + mask_bias
        x = _fp16_clamp(x + self.attn(self.norm1(x), bias))
        return _fp16_clamp(x + self.ffn(self.norm2(x)))


class T5Encoder(nn.Module):
    """umT5 encoder stack (official key layout)."""

    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.config = cfg
        self.token_embedding = nn.Embedding(cfg.vocab, cfg.dim)
        self.blocks = nn.ModuleList(T5Block(cfg) for _ in range(cfg.num_layers))
        self.norm = T5RMSNorm(cfg.dim, cfg.eps)

    @property
    def device(self) -> torch.device:
        return self.norm.weight.device

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states [B, L, dim] for token ids [B, L]; `mask` [B, L] (1 = real token) hides padding keys."""
        x = self.token_embedding(ids)
        mask_bias = None
        if mask is not None:
            # Padded keys get finfo.min added to their logits (official), in the activation dtype.
            neg = torch.finfo(x.dtype).min
            mask_bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(mask.to(x.device) == 0, neg)
            mask_bias = mask_bias[:, None, None, :]
        for block in self.blocks:
            x = block(x, mask_bias)
        return self.norm(x)

    @torch.no_grad()  # not inference_mode: callers may modify the returned tensors in place
    def encode_ids(self, ids: Sequence[Sequence[int]], pad_id: int = 0) -> list[torch.Tensor]:
        """Encode a batch of token-id lists (padded here); returns each prompt's real tokens [L_i, dim]."""
        lengths = [len(t) for t in ids]
        longest = max(lengths)
        batch = torch.full((len(ids), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), longest), dtype=torch.long)
        for i, t in enumerate(ids):
            batch[i, : len(t)] = torch.as_tensor(list(t), dtype=torch.long)
            mask[i, : len(t)] = 1
        out = self.forward(batch.to(self.device), mask.to(self.device))
        return [out[i, :n] for i, n in enumerate(lengths)]
