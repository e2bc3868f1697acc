"""Tiny random Wan2.1 VAEs in the three layouts users have (official .pth, Comfy safetensors, diffusers).

Only the base width is shrunk: 4 levels and num_res_blocks=2 stay, as diffusers' key converter and
ComfyUI's loader (which reads the width from `decoder.head.0.gamma`) require.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ...vae.model import WanVAE
from ...vae.loader import official_to_diffusers_key

TINY_VAE_DIM = 8

# diffusers AutoencoderKLWan config for a tiny official-layout VAE (only base_dim differs from the real one)
_DIFFUSERS_CONFIG = {
    "_class_name": "AutoencoderKLWan",
    "attn_scales": [],
    "dim_mult": [1, 2, 4, 4],
    "dropout": 0.0,
    "num_res_blocks": 2,
    "temperal_downsample": [False, True, True],
    "z_dim": 16,
}


def random_state_dict(dim: int = TINY_VAE_DIM, seed: int = 0) -> dict[str, torch.Tensor]:
    """Official-layout fp32 weights: PyTorch default conv init, norm gammas around 1 (deterministic in `seed`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WanVAE(dim=dim)
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                with torch.no_grad():
                    p.uniform_(0.8, 1.2)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official-layout state dict to diffusers `AutoencoderKLWan` keys."""
    return {official_to_diffusers_key(k): v for k, v in state.items()}


def write_official_pth(path: str | os.PathLike, dim: int = TINY_VAE_DIM, seed: int = 0) -> Path:
    """Write a tiny `Wan2.1_VAE.pth` (a pickled state dict, as the official release ships)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_state_dict(dim, seed), p)
    return p


def write_comfy_safetensors(
    path: str | os.PathLike, dim: int = TINY_VAE_DIM, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Path:
    """Write a tiny `wan_2.1_vae.safetensors` (official keys, as Comfy-Org ships it)."""
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype) for k, v in random_state_dict(dim, seed).items()}, str(p))
    return p


def write_diffusers(folder: str | os.PathLike, dim: int = TINY_VAE_DIM, seed: int = 0) -> Path:
    """Write a tiny diffusers `vae/` folder: config.json + diffusion_pytorch_model.safetensors."""
    from safetensors.torch import save_file

    p = Path(folder)
    p.mkdir(parents=True, exist_ok=True)
    (p / "config.json").write_text(json.dumps({**_DIFFUSERS_CONFIG, "base_dim": dim}, indent=2))
    save_file(to_diffusers(random_state_dict(dim, seed)), str(p / "diffusion_pytorch_model.safetensors"))
    return p


def write_comfy_file(path: str | os.PathLike, role: str, fp8: bool = False, seed: int = 0) -> Path:
    """Demo hook: write the tiny VAE under a public file name (role 'vae'; `fp8` is ignored for the VAE)."""
    if role != "vae":
        raise ValueError(f"wan_core.testing.tiny.vae writes the VAE only (role 'vae'), got role {role!r}")
    if str(path).endswith(".pth"):
        return write_official_pth(path, seed=seed)
    return write_comfy_safetensors(path, seed=seed)
