"""Helpers of the multi-process tests: tiny experts with 4 heads (Ulysses over 2 or 4 ranks), a model request, inputs.

Every pool these tests start goes through `wan_core.parallel.pool.get_pool` (one process group per process), and
`pool_on(world)` releases it afterwards, so no worker outlives a test module.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from wan_core.dit.model import DiTConfig  # noqa: E402
from wan_core.parallel.pool import WorkerPool, get_pool, release_pool  # noqa: E402
from wan_core.testing.tiny.dit import random_state_dict, write_official_folder  # noqa: E402

# 4 heads of 32 channels: Ulysses over 2 or 4 ranks, CFG groups of 2 x 2; text_dim 64 keeps contexts small.
TINY4 = DiTConfig(dim=128, ffn_dim=256, num_heads=4, num_layers=3, text_dim=64, freq_dim=32, text_len=16)
CPU = torch.device("cpu")
WORKER_EXPERTS = "wan_core.api:experts_for"


@dataclass(frozen=True)
class Model:
    """What the sampler's model request carries: the expert files and how to run them."""

    high_noise_path: str
    low_noise_path: str
    weight_dtype: str = "auto"
    placement: str = "auto"
    attention: str = "sdpa"
    boundary: float = 0.875
    gpus: int = 1


def write_tiny_experts(folder: Path, config: DiTConfig = TINY4) -> Model:
    """Official-layout expert folders (config.json names the 4 heads) with different random weights."""
    high = write_official_folder(folder / "high_noise_model", random_state_dict(config, seed=21), config)
    low = write_official_folder(folder / "low_noise_model", random_state_dict(config, seed=22), config)
    return Model(str(high), str(low))


def expert_kwargs(model: Model) -> dict:
    """The keyword arguments workers pass to wan_core.api.experts_for."""
    return dict(high_path=model.high_noise_path, low_path=model.low_noise_path, weight_dtype=model.weight_dtype,
                placement=model.placement, attention=model.attention, tokens=0, batch=1)


def inputs(frames: int, height: int, width: int, batch: int = 1, seed: int = 0) -> tuple:
    """A latent [B, 16, F, H, W], timesteps [B] and one text context [L_i, 64] per item (different lengths)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, frames, height, width, generator=g)
    t = torch.full((batch,), 907.0)
    contexts = [torch.randn(5 + 3 * i, TINY4.text_dim, generator=g) for i in range(batch)]
    return x, t, contexts


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


@pytest.fixture
def fresh_pools():
    """Release any running pool before and after a test that starts its own."""
    release_pool()
    yield
    release_pool()

