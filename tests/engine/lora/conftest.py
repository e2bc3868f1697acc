"""Shared pieces of the LoRA tests: a tiny fp32 expert file, its LoRAs, one fixed DiT input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cache_testing import one_thread  # noqa: F401  (autouse: tiny models run fastest on one thread)

from wan_core.dit.model import WanDiT
from wan_core.testing.tiny import dit as tiny_dit
from wan_core.testing.tiny import lora as tiny_lora

CONFIG = tiny_dit.TINY_DIT_CONFIG


def dit_input(seed: int = 0, t: float = 937.0):
    """(x [1, 16, 2, 4, 6], integer timestep [1], context [7 x 4096]) for one DiT forward."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 2, 4, 6, generator=gen)
    return x, torch.tensor([t]), [torch.randn(7, CONFIG.text_dim, generator=gen)]


@torch.no_grad()
def forward(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    return model(*dit_input(seed))


def model_from(sd: dict[str, torch.Tensor]) -> WanDiT:
    """A WanDiT holding `sd` (fp32)."""
    model = WanDiT(CONFIG)
    model.load_state_dict(sd)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def base_sd() -> dict[str, torch.Tensor]:
    return tiny_dit.random_state_dict(CONFIG, seed=3)


@pytest.fixture(scope="session")
def expert_file(tmp_path_factory, base_sd) -> Path:
    return tiny_dit.write_single_file(tmp_path_factory.mktemp("expert") / "expert_fp32.safetensors", base_sd)


@pytest.fixture(scope="session")
def content() -> tiny_lora.TinyLora:
    return tiny_lora.random_lora(CONFIG, rank=4, alpha=2.0, seed=1)


@pytest.fixture(scope="session")
def lora_files(tmp_path_factory, content) -> dict[str, Path]:
    """The same LoRA content in every layout: layout -> file."""
    folder = tmp_path_factory.mktemp("loras")
    return {layout: tiny_lora.write_lora(folder / f"{layout}.safetensors", content, layout)
            for layout in tiny_lora.LAYOUTS}

