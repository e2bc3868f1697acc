"""Helpers of the multi-process tests: tiny experts with 4 heads (Ulysses over 2 or 4 ranks), a model request, inputs.

Every pool these tests start goes through `wan_core.parallel.pool.get_pool` (one process group per process), and
each test module releases it at its end, so no worker outlives a test module.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from wan_core.dit.model import DiTConfig  # noqa: E402
from wan_core.parallel.pool import WorkerPool, get_pool  # noqa: E402
from wan_core.requests import ModelRequest  # noqa: E402
from wan_core.testing.tiny.dit import random_state_dict, write_official_folder  # noqa: E402

# 4 heads of 32 channels: Ulysses over 2 or 4 ranks, CFG groups of 2 x 2; text_dim 64 keeps contexts small.
TINY4 = DiTConfig(dim=128, ffn_dim=256, num_heads=4, num_layers=3, text_dim=64, freq_dim=32, text_len=16)
CPU = torch.device("cpu")
WORKER_EXPERTS = "wan_core.sampling.multi_gpu:cached_experts"
REQUEST_DEFAULTS = dict(weight_dtype="auto", placement="auto", attention="sdpa", boundary=0.875)


def write_tiny_experts(folder: Path, config: DiTConfig = TINY4, **settings: object) -> ModelRequest:
    """Official-layout expert folders (config.json names the 4 heads) with different random weights, as a request."""
    high = write_official_folder(folder / "high_noise_model", random_state_dict(config, seed=21), config)
    low = write_official_folder(folder / "low_noise_model", random_state_dict(config, seed=22), config)
    return ModelRequest(str(high), str(low), **{**REQUEST_DEFAULTS, **settings})


def expert_kwargs(model: ModelRequest) -> dict:
    """The keyword arguments every rank passes to wan_core.sampling.multi_gpu.cached_experts."""
    return dict(high_path=model.high_noise_path, low_path=model.low_noise_path, weight_dtype=model.weight_dtype,
                placement=model.placement, attention=model.attention, tokens=0, batch=1)


def inputs(frames: int, height: int, width: int, batch: int = 1, seed: int = 0) -> tuple:
    """A latent [B, 16, F, H, W], timesteps [B] and one text context [L_i, 64] per item (different lengths)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, frames, height, width, generator=g)
    t = torch.full((batch,), 907.0)
    contexts = [torch.randn(5 + 3 * i, TINY4.text_dim, generator=g) for i in range(batch)]
    return x, t, contexts


def conditioning(context: torch.Tensor) -> list:
    """A core CONDITIONING of one text context [L, D]."""
    return [[context[None], {}]]


def sample(model: ModelRequest, schedule, positive: torch.Tensor, negative: torch.Tensor, latent: torch.Tensor,
           seed: int) -> torch.Tensor:
    """wan_core.api.sample on the CPU from plain tensors; the sampled latent in the DiT's (normalised) units."""
    from wan_core import api, interop

    out = api.sample(model, schedule, positive=conditioning(positive), negative=conditioning(negative),
                     latent={"samples": latent}, seed=seed, device=CPU)
    return interop.latent_from_comfy(out.latent)


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def pool_on(world: int) -> WorkerPool:
    """The (shared) pool of `world` CPU ranks."""
    return get_pool([CPU] * world)
