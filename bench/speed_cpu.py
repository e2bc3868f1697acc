"""Speed and memory at real widths on the CPU, ours against diffusers in the same run (the speed issue's table).

Rows: the DiT at A14B's width (5120, 40 heads, ffn 13824) with one layer at a 480p-like token count scaled to fit;
a 1536-wide DiT at four token counts; a whole guided two-expert sampling run (ours, ours with step caching,
diffusers WanPipeline with transformer_2); the real-width VAE (base 96) decode at three frame counts, untiled and
tiled, ours against diffusers' decode and diffusers' tiled decode. Each row: time, peak working memory (RSS
high-water mark, see bench/reference_cpu.py), ratio ours/reference and max|diff|; our step-cached run is compared
with our uncached one. The machine's load average is printed at the start and the end: a row measured under load
says so. Weights are random; only speed, memory and agreement are measured.

    python -m bench.speed_cpu [--tiny] [--compute bf16] [--rows dit,sampling,vae] [--allocator fixed|default]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bench import reference_cpu
from bench.reference_cpu import HEADER, isolated, measure, row
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from wan_core.config import BOUNDARY, GUIDE_HIGH, GUIDE_LOW
from wan_core.dit.keys import official_to_diffusers
from wan_core.dit.model import DiTConfig, WanDiT
from wan_core.sampling.experts import ResidentExperts
from wan_core.sampling.sampler import make_noise, sample_schedule
from wan_core.sampling.schedule import base_grid, build_schedule
from wan_core.sampling.step_cache import StepCache
from wan_core.testing.tiny import dit as tiny_dit, vae as tiny_vae
from wan_core.vae.latent_format import denormalize
from wan_core.vae.loader import load_vae
from wan_core.vae.shapes import video_frames

# The step cache's threshold in the cached row: on these random-weight experts 0.1 skips none of 12 steps, 0.2
# three (measured 2026-12-02), 0.3 four but at 10x the latent difference.
CACHE_THRESHOLD = 0.2
A14B_1L = DiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=1)
WIDE = DiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=2)


@dataclass(frozen=True)
class Plan:
    """What one run measures."""

    a14b_latent: tuple[int, ...]  # [C, T, H, W] for the A14B-width row (480p aspect: 60x104 latent px, scaled)
    wide_latents: tuple[tuple[int, ...], ...]
    sampler: DiTConfig
    sampler_latent: tuple[int, ...]
    sampler_steps: int
    vae_dim: int
    vae_frames: tuple[int, ...]  # latent frames
    vae_hw: tuple[int, int]  # latent px
    vae_tile: int  # latent px
    vae_large_hw: tuple[int, int]  # latent px of one more untiled row (2 latent frames): 4x the area


REAL = Plan(a14b_latent=(16, 2, 30, 52), wide_latents=((16, 1, 16, 32), (16, 2, 16, 32), (16, 2, 32, 32), (16, 4, 32, 32)),
            sampler=WIDE, sampler_latent=(16, 2, 16, 32), sampler_steps=12, vae_dim=96, vae_frames=(2, 3, 5),
            vae_hw=(16, 24), vae_tile=8, vae_large_hw=(32, 48))
TINY = Plan(a14b_latent=(16, 1, 4, 4), wide_latents=((16, 1, 4, 8),), sampler=tiny_dit.TINY_DIT_CONFIG,
            sampler_latent=(16, 2, 8, 8), sampler_steps=10, vae_dim=8, vae_frames=(2,), vae_hw=(8, 8), vae_tile=4,
            vae_large_hw=(16, 16))
TINY_A14B = DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=1)


def _diffusers_dit(config: DiTConfig) -> WanTransformer3DModel:
    return WanTransformer3DModel(
        patch_size=config.patch_size, num_attention_heads=config.num_heads, attention_head_dim=config.head_dim,
        in_channels=config.in_dim, out_channels=config.out_dim, text_dim=config.text_dim, freq_dim=config.freq_dim,
        ffn_dim=config.ffn_dim, num_layers=config.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=config.eps, rope_max_seq_len=1024).eval()


def _padded(c: torch.Tensor, text_len: int) -> torch.Tensor:
    return torch.cat([c, c.new_zeros(text_len - len(c), c.shape[1])])[None]


def dit_case(impl: str, config: DiTConfig, latent: tuple[int, ...], compute: str, repeats: int) -> dict:
    weights = tiny_dit.random_state_dict(config, seed=0)
    gen = torch.Generator().manual_seed(1)
    x, t = torch.randn(1, *latent, generator=gen), torch.full((1,), 999.0)
    context = torch.randn(120, config.text_dim, generator=gen)
    if impl == "ours":
        model = WanDiT(config).eval()
        model.load_state_dict(weights, strict=True)
        model.compute_dtype = getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[compute])
        run = lambda: model(x, t, [context])  # noqa: E731
    else:
        model = _diffusers_dit(config)
        model.load_state_dict({official_to_diffusers(k): v for k, v in weights.items()}, strict=True)
        padded = _padded(context, config.text_len)
        run = lambda: model(x, t, padded, return_dict=False)[0]  # noqa: E731
    del weights
    return measure(run, repeats)


def sampler_case(impl: str, p: Plan, threshold: float, repeats: int) -> dict:
    config = p.sampler
    weights = [tiny_dit.random_state_dict(config, seed) for seed in (1, 2)]
    gen = torch.Generator().manual_seed(4)
    positive, negative = torch.randn(40, config.text_dim, generator=gen), torch.randn(30, config.text_dim, generator=gen)
    noise = make_noise((1, *p.sampler_latent), 42)
    if impl == "ours":
        high, low = (WanDiT(config).eval() for _ in range(2))
        for model, sd in zip((high, low), weights):
            model.load_state_dict(sd, strict=True)
        schedule = build_schedule(p.sampler_steps, 12.0, "unipc")
        caches: list[StepCache] = []

        def run() -> torch.Tensor:
            caches[:] = [StepCache(threshold, schedule.steps)]  # the last run's, for its skipped count
            return sample_schedule(ResidentExperts(high, low), schedule, [positive], [negative], noise=noise,
                                   step_cache=caches[-1] if threshold else None)
    else:
        high, low = (_diffusers_dit(config) for _ in range(2))
        for model, sd in zip((high, low), weights):
            model.load_state_dict({official_to_diffusers(k): v for k, v in sd.items()}, strict=True)
        scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                            num_train_timesteps=1000, flow_shift=12.0)
        set_timesteps = scheduler.set_timesteps  # the official unshifted grid (diffusers shifts it)
        scheduler.set_timesteps = lambda num_inference_steps=None, device=None, **kw: set_timesteps(
            device=device, sigmas=base_grid("unipc", num_inference_steps))
        pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler, transformer=high,
                           transformer_2=low, boundary_ratio=BOUNDARY)
        pipe.set_progress_bar_config(disable=True)
        _, frames, h, w = p.sampler_latent
        run = lambda: pipe(prompt_embeds=_padded(positive, config.text_len),  # noqa: E731
                           negative_prompt_embeds=_padded(negative, config.text_len), height=8 * h, width=8 * w,
                           num_frames=video_frames(frames), num_inference_steps=p.sampler_steps,
                           guidance_scale=GUIDE_HIGH, guidance_scale_2=GUIDE_LOW, latents=noise.clone(),
                           output_type="latent").frames
    del weights
    result = measure(run, repeats)
    if impl == "ours" and threshold:
        result["skipped"] = len(caches[-1].skipped)
    return result


def vae_case(impl: str, p: Plan, frames: int, tiled: bool, repeats: int) -> dict:
    latent = torch.randn(1, 16, frames, *p.vae_hw, generator=torch.Generator().manual_seed(2))
    small = latent[:, :, :2, :4, :4]
    if impl == "ours":
        with tempfile.TemporaryDirectory() as tmp:
            model = load_vae(tiny_vae.write_comfy_safetensors(Path(tmp) / "vae.safetensors", p.vae_dim, seed=0))
        options = dict(tiling="on", tile_size=p.vae_tile, tile_overlap=p.vae_tile // 4) if tiled else dict(tiling="off")
        run, warmup = (lambda: model.decode(latent, **options)), (lambda: model.decode(small, tiling="off"))
    else:
        model = AutoencoderKLWan(base_dim=p.vae_dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                 temperal_downsample=[False, True, True], dropout=0.0).eval()
        model.load_state_dict(tiny_vae.to_diffusers(tiny_vae.random_state_dict(p.vae_dim, seed=0)), strict=True)
        if tiled:  # the same tile and stride in video px as ours
            px, overlap = 8 * p.vae_tile, 8 * (p.vae_tile // 4)
            model.enable_tiling(px, px, px - overlap, px - overlap)
        raw = denormalize(latent)
        run, warmup = (lambda: model.decode(raw).sample), (lambda: model.decode(denormalize(small)).sample)
    return measure(run, repeats, warmup)


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) / {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def _sampling_rows(p: Plan, pair: Callable, repeats: int) -> None:
    """Ours against diffusers' WanPipeline, then ours with step caching against both."""
    ours, ref = pair(sampler_case, p, 0.0)
    name = f"{p.sampler.dim}d x2, {p.sampler_steps} steps, cfg"
    print(row("MoE sampling", name, ours, ref), flush=True)
    cached = isolated(sampler_case, "ours", p, CACHE_THRESHOLD, repeats)
    skipped = f"skips {cached['skipped']}/{p.sampler_steps}"
    print(row("MoE sampling", f"{name}, cache {CACHE_THRESHOLD} {skipped}", cached, ref), flush=True)
    rel = float(np.sqrt(np.mean((cached["out"] - ours["out"]) ** 2) / np.mean(ours["out"] ** 2)))
    print(row("  vs ours", f"cache {CACHE_THRESHOLD} / uncached, rel rms {rel:.1e}", cached, ours), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run every row, print the table; returns 0."""
    parser = argparse.ArgumentParser(prog="python -m bench.speed_cpu", description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs (a smoke run)")
    parser.add_argument("--compute", choices=("fp32", "bf16"), default="fp32", help="our DiT's compute dtype")
    parser.add_argument("--rows", default="dit,sampling,vae",
                        help="which groups of rows to run, comma-separated (dit, sampling, vae; default all)")
    parser.add_argument("--allocator", choices=("fixed", "default"), default="fixed",
                        help="fixed: glibc's mmap threshold at 1 MiB, so peaks are the live tensors (default); "
                             "default: glibc's adaptive threshold, as a ComfyUI process runs (freed blocks reused "
                             "from the heap, no fresh pages per large allocation; peaks include what the heap keeps)")
    args = parser.parse_args(argv)
    if args.allocator == "default":
        reference_cpu.MMAP_THRESHOLD = None
    rows = set(args.rows.split(","))
    if not rows <= {"dit", "sampling", "vae"}:
        parser.error(f"--rows takes dit, sampling and vae, got {args.rows!r}")
    p, a14b = (TINY, TINY_A14B) if args.tiny else (REAL, A14B_1L)
    print(f"speed benchmark on CPU ({torch.get_num_threads()} threads, {args.allocator} allocator); start: {_load()}",
          flush=True)
    print(HEADER)
    # Median of 3 calls for the DiT and sampling rows (single calls varied by 30% between runs on the 2-core
    # machine); one call for the VAE rows, whose calls take tens of seconds.
    repeats = 1 if args.tiny else 3
    pair = lambda case, *a, n=repeats: [isolated(case, impl, *a, n) for impl in ("ours", "reference")]  # noqa: E731
    for config, latents in ((a14b, (p.a14b_latent,)), (p.sampler, p.wide_latents)) if "dit" in rows else ():
        for latent in latents:
            tokens = latent[1] * (latent[2] // 2) * (latent[3] // 2)
            name = f"{config.dim}d {config.num_layers}L {tokens} tok" + (f" ours {args.compute}" if args.compute != "fp32" else "")
            print(row("DiT forward", name, *pair(dit_case, config, latent, args.compute)), flush=True)
    if "sampling" in rows:
        _sampling_rows(p, pair, repeats)
    for tiled in (False, True) if "vae" in rows else ():
        for frames in p.vae_frames:
            name = f"dim {p.vae_dim}, {frames}x{p.vae_hw[0]}x{p.vae_hw[1]} -> {video_frames(frames)} fr" + \
                (f", tiles {p.vae_tile}" if tiled else "")
            print(row("VAE decode", name, *pair(vae_case, p, frames, tiled, n=1)), flush=True)
        if not tiled:  # the untiled ratio at 4x the area (the band copies of a small frame weigh less)
            large = dataclasses.replace(p, vae_hw=p.vae_large_hw)
            name = f"dim {p.vae_dim}, 2x{large.vae_hw[0]}x{large.vae_hw[1]} -> {video_frames(2)} fr"
            print(row("VAE decode", name, *pair(vae_case, large, 2, False, n=1)), flush=True)
    print(f"end: {_load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
