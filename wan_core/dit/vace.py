"""VACE control for a Wan DiT expert: the hint blocks of Wan2.2-VACE-Fun, their layer mapping, and the hint streams.

Layout (official and ComfyUI key names): `vace_patch_embedding` (Conv3d, `vace_in_dim` = 16 inactive + 16 reactive
latent channels + 64 mask channels, kernel = stride = patch) and `vace_blocks.N` (a full Wan block plus `after_proj`;
block 0 also `before_proj`). VACE block n runs after main block `n * (num_layers // vace_layers)`.

Forward: each control stream starts as the patch-embedded VACE context; VACE block 0 adds `before_proj(c)` to the
patch-embedded video tokens x0 (before any main block); after each mapped main block the VACE block advances every
stream and the main stream receives `after_proj(c) * strength` (one strength per stream and batch item). Streams
stack. Without a control the branch is not entered at all: a VACE expert then runs exactly as the plain expert.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from .model import DiTConfig, Linear, PatchEmbedding, WanBlock

if TYPE_CHECKING:
    from .model import ForwardState, WanDiT

VACE_IN_DIM = 96  # 16 inactive + 16 reactive latent channels + 64 mask channels (8x8 pixel-unshuffled)


def layer_mapping(num_layers: int, vace_layers: int) -> dict[int, int]:
    """Main block index -> VACE block index: VACE block n after main block n * (num_layers // vace_layers)."""
    if not 0 < vace_layers <= num_layers:
        raise ValueError(f"{vace_layers} VACE blocks cannot attach to a DiT of {num_layers} blocks")
    mapping = {main: n for n, main in enumerate(range(0, num_layers, num_layers // vace_layers))}
    if len(mapping) != vace_layers:
        raise ValueError(f"{vace_layers} VACE blocks do not divide {num_layers} main blocks evenly (Wan2.2-VACE-Fun "
                         f"A14B: 8 blocks for 40); the file is not a VACE layout this pack knows")
    return mapping


class VaceBlock(WanBlock):
    """A Wan block on a hint stream: (c, x0) -> (after_proj(c') [the hint], c'); block 0 first adds before_proj(c) to x0.

    `c` is advanced in place (the caller hands over its stream); `x0` is only read."""

    def __init__(self, config: DiTConfig, attention: str, first: bool) -> None:
        super().__init__(config, attention)
        self.before_proj = Linear(config.dim, config.dim) if first else None
        self.after_proj = Linear(config.dim, config.dim)

    def forward(self, c: torch.Tensor, x0: torch.Tensor, e0: torch.Tensor, context: torch.Tensor,
                rotations: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                text_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """c, x0 [B, L, dim] float32 -> (hint [B, L, dim] float32, the advanced stream c); `kv`, `text_bias` as
        WanBlock's."""
        if self.before_proj is not None:
            c = self.before_proj(c).float() + x0
        c = super().forward(c, e0, context, rotations, kv=kv, text_bias=text_bias, inplace=True)  # the stream is ours: advanced in place
        return self.after_proj(c).float(), c


def add_vace(model: "WanDiT", attention: str) -> None:
    """Give `model` its VACE modules (`vace_patch_embedding`, `vace_blocks`) from `model.config`."""
    config = model.config
    layer_mapping(config.num_layers, config.vace_layers)
    model.vace_patch_embedding = PatchEmbedding(config.vace_in_dim, config.dim, config.patch_size)
    model.vace_blocks = nn.ModuleList(VaceBlock(config, attention, first=i == 0) for i in range(config.vace_layers))


@dataclass(frozen=True)
class VaceInput:
    """The control one forward applies: per stream a VACE context and one strength per batch item."""

    contexts: tuple[torch.Tensor, ...]  # per stream [B, vace_in_dim, F, H, W]: normalised latents + mask
    strengths: tuple[torch.Tensor, ...]  # per stream [B] float32

    def __post_init__(self) -> None:
        if len(self.contexts) != len(self.strengths) or not self.contexts:
            raise ValueError(f"a VACE input needs one strength per context; got {len(self.contexts)} contexts and "
                             f"{len(self.strengths)} strengths")


class VaceHints:
    """The hint streams of one forward, started from the patch-embedded tokens and advanced after mapped blocks."""

    def __init__(self, model: "WanDiT", state: "ForwardState", control: VaceInput) -> None:
        config = model.config
        if not config.vace_layers:
            raise ValueError("this expert has no VACE blocks, so it cannot follow a control video; load a VACE expert "
                             "(wan2.2_fun_vace_*_14B_*.safetensors) or attach a VACE module file in the model loader")
        self.model, self.state = model, state
        self.mapping = layer_mapping(config.num_layers, config.vace_layers)
        batch = state.x.shape[0]
        self.streams: list[torch.Tensor] = []
        self.strengths: list[torch.Tensor] = []
        for i, (context, strength) in enumerate(zip(control.contexts, control.strengths)):
            strength = strength.to(device=state.x.device, dtype=torch.float32).reshape(-1)
            if context.ndim != 5 or context.shape[0] != batch or context.shape[1] != config.vace_in_dim \
                    or strength.numel() != batch:
                raise ValueError(f"VACE stream {i}: context {tuple(context.shape)} with {strength.numel()} strengths; "
                                 f"expected [{batch}, {config.vace_in_dim}, frames, height, width] and {batch}")
            if not bool(strength.any()):
                continue  # strength 0 everywhere: the stream adds nothing, so it is not run
            tokens = model.vace_patch_embedding(context.to(state.x.device))
            if tuple(tokens.shape[2:]) != tuple(state.grid):
                raise ValueError(f"VACE stream {i} covers a latent grid of {tuple(tokens.shape[2:])} patches but the "
                                 f"video is {tuple(state.grid)}: the control must have the latent's frames and size")
            self.streams.append(tokens.flatten(2).transpose(1, 2).float())
            self.strengths.append(strength.view(batch, 1, 1))

    def __bool__(self) -> bool:
        return bool(self.streams)

    def after_block(self, index: int, x: torch.Tensor) -> None:
        """When a VACE block follows main block `index`: advance every stream and add its hint to `x` in place."""
        n = self.mapping.get(index)
        if n is None:
            return
        block, state = self.model.vace_blocks[n], self.state
        kv = state.text_kv(len(self.model.blocks) + n, block)  # one projection of the text for every stream
        for j, stream in enumerate(self.streams):
            hint, self.streams[j] = block(stream, state.x, state.e0, state.context, state.rotations, kv=kv,
                                          text_bias=state.text_bias)
            x.addcmul_(hint, self.strengths[j])
