"""A tiny diffusers `WanPipeline` folder as the Hub's Wan2.2-T2V-A14B-Diffusers lays it out.

model_index.json; transformer/ (high-noise) and transformer_2/ (low-noise) with config.json and sharded
diffusers-key weights + index; text_encoder/ (a sharded UMT5EncoderModel, no tokenizer) with tokenizer/ beside
it; vae/ (AutoencoderKLWan); scheduler/.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ...dit.keys import official_to_diffusers
from . import dit, t5, vae

_ROLE_SEEDS = {"transformer": 0, "transformer_2": 7919}


def _transformer_config(config) -> dict:
    return {"_class_name": "WanTransformer3DModel", "_diffusers_version": "0.35.0", "added_kv_proj_dim": None,
            "attention_head_dim": config.dim // config.num_heads, "cross_attn_norm": True, "eps": config.eps,
            "ffn_dim": config.ffn_dim, "freq_dim": config.freq_dim, "image_dim": None, "in_channels": config.in_dim,
            "num_attention_heads": config.num_heads, "num_layers": config.num_layers, "out_channels": config.out_dim,
            "patch_size": list(config.patch_size), "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024,
            "text_dim": config.text_dim}


def write_transformer(folder: Path, sd: dict[str, torch.Tensor], config, shards: int = 2) -> Path:
    """A diffusers transformer folder: config.json, diffusion_pytorch_model-0000N-of-0000M.safetensors, index."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(_transformer_config(config), indent=2))
    keys = list(sd)
    weight_map = {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[i * len(keys) // shards:(i + 1) * len(keys) // shards]
        save_file({official_to_diffusers(k): sd[k].contiguous() for k in part}, str(folder / name))
        weight_map.update({official_to_diffusers(k): name for k in part})
    index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in sd.values())}, "weight_map": weight_map}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder


def write_pipeline(folder: str | Path, seed: int = 0) -> Path:
    """Write the whole tiny pipeline folder; returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "WanPipeline", "_diffusers_version": "0.35.0", "boundary_ratio": 0.875,
        "scheduler": ["diffusers", "UniPCMultistepScheduler"], "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"], "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": ["diffusers", "WanTransformer3DModel"], "vae": ["diffusers", "AutoencoderKLWan"]}, indent=2))
    for role, role_seed in _ROLE_SEEDS.items():
        sd = {k: v.to(torch.float16) for k, v in dit.random_state_dict(dit.TINY_DIT_CONFIG, seed + role_seed).items()}
        write_transformer(folder / role, sd, dit.TINY_DIT_CONFIG)
    t5.write_hf_folder(folder / "text_encoder", t5.TINY_T5, seed, dtype=torch.float16, max_shard_size="8MB",
                       tokenizer=False)
    (folder / "tokenizer").mkdir(exist_ok=True)
    (folder / "tokenizer" / "spiece.model").write_bytes(t5.tiny_spm_bytes())
    (folder / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer"}))
    vae.write_diffusers(folder / "vae", seed=seed)
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "UniPCMultistepScheduler", "flow_shift": 3.0, "use_flow_sigmas": True}))
    return folder
