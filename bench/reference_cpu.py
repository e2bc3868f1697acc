"""Our engine against the PyPI references on the CPU: DiT forward, VAE decode, umT5 encoder, MoE sampler loop.

Each pair runs the same random weights (diffusers / transformers layout, renamed into ours by the engine's own
key tables, strict loads) on the same inputs. Every measurement runs in its own forked process (libraries
imported once, before any compute, so the child starts with a fresh allocator and RSS high-water mark): one
warm-up call, then `--repeats` timed calls (the VAE, by far the slowest: a small warm-up decode and one timed
call); time is the median, peak is the RSS high-water mark over the timed calls minus the RSS before them minus
the output's own bytes (the call's working memory; glibc's mmap threshold is fixed at 1 MiB so freed tensors go
back to the kernel, for both sides alike). max|diff| is a sanity check, not a test.

    python -m bench.reference_cpu [--tiny] [--repeats 3]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import math
import multiprocessing
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel  # noqa: E402
from transformers import UMT5Config, UMT5EncoderModel  # noqa: E402

from wan_core.config import BOUNDARY, GUIDE_HIGH, GUIDE_LOW  # noqa: E402
from wan_core.dit.model import DiTConfig, WanDiT  # noqa: E402
from wan_core.dit.keys import diffusers_to_official, official_to_diffusers  # noqa: E402
from wan_core.sampling.experts import ResidentExperts  # noqa: E402
from wan_core.vae.latent_format import denormalize  # noqa: E402
from wan_core.testing.measure import PeakRSS  # noqa: E402
from wan_core.sampling.sampler import make_noise, sample_moe  # noqa: E402
from wan_core.sampling.schedule import base_grid  # noqa: E402
from wan_core.text.t5 import T5Config, T5Encoder  # noqa: E402
from wan_core.text.encoder import hf_to_official, official_to_hf  # noqa: E402
from wan_core.testing.tiny import dit as tiny_dit, t5 as tiny_t5, vae as tiny_vae  # noqa: E402
from wan_core.vae.loader import load_vae  # noqa: E402
from wan_core.vae.shapes import video_frames  # noqa: E402

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
# The measuring children's fixed mmap threshold (None: glibc's adaptive default, as a ComfyUI process runs; then
# freed blocks are reused from the heap without fresh pages, and peaks include what the heap keeps).
MMAP_THRESHOLD: int | None = 1 << 20


@dataclass(frozen=True)
class Sizes:
    """Every configuration of one run (the default one and the --tiny smoke one)."""

    dit: DiTConfig
    dit_latent: tuple[int, ...]  # [C, T, H, W]
    dit_text: tuple[int, int]  # tokens of the cond and the uncond prompt
    vae_dim: int
    vae_latent: tuple[int, ...]  # [C, T, H, W]; also run with 4x the frames
    t5: T5Config
    t5_tokens: int
    sampler_latent: tuple[int, ...]
    sampler_steps: int


FULL = Sizes(dit=DiTConfig(dim=512, ffn_dim=1536, num_heads=4, num_layers=4), dit_latent=(16, 5, 32, 32),
             dit_text=(300, 120), vae_dim=32, vae_latent=(16, 5, 16, 16),
             t5=T5Config(vocab=4096, dim=1024, dim_attn=1024, dim_ffn=2560, num_heads=8, num_layers=4), t5_tokens=300,
             sampler_latent=(16, 2, 8, 8), sampler_steps=8)
# Smoke configs, still with some tensors over the 1 MiB mmap threshold so every peak is above zero.
TINY = Sizes(dit=tiny_dit.TINY_DIT_CONFIG, dit_latent=(16, 4, 32, 32), dit_text=(30, 12), vae_dim=8,
             vae_latent=(16, 2, 8, 8), t5=T5Config(vocab=256, dim=512, dim_attn=512, dim_ffn=1024, num_heads=2, num_layers=1),
             t5_tokens=300, sampler_latent=(16, 2, 8, 8), sampler_steps=4)


# ---------------------------------------------------------------------------------------------------------------
# measuring


def _child(fn, args):
    try:  # glibc: big blocks come from mmap and go back to the kernel when freed (no heap high-water noise)
        if MMAP_THRESHOLD is not None:
            ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass
    return fn(*args)


def isolated(fn, *args) -> dict:
    """fn(*args) in a forked child process (fresh RSS high-water mark and allocator); returns its picklable result."""
    with multiprocessing.get_context("fork").Pool(1) as pool:
        return pool.apply(_child, (fn, args))


@torch.no_grad()
def measure(run, repeats: int, warmup=None) -> dict:
    """A warm-up call (`warmup`, default `run`), then `repeats` timed calls: median seconds, working memory, output."""
    (warmup or run)()
    gc.collect()
    out = None
    rss = PeakRSS()
    base = psutil.Process().memory_info().rss
    times = []
    for _ in range(repeats):
        out = None
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
    peak = rss.peak() - base - out.numel() * out.element_size()
    return {"time": statistics.median(times), "peak": peak, "out": out.float().numpy()}


# ---------------------------------------------------------------------------------------------------------------
# the cases: (implementation, sizes, ...) -> measure()'s dict; weights and inputs made from fixed seeds in the child


def dit_case(impl: str, s: Sizes, batch: int, repeats: int) -> dict:
    config = s.dit
    weights = {official_to_diffusers(k): v for k, v in tiny_dit.random_state_dict(config, seed=0).items()}
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, *s.dit_latent, generator=gen).expand(batch, -1, -1, -1, -1).contiguous()
    t = torch.full((batch,), 999.0)
    context = [torch.randn(n, config.text_dim, generator=gen) for n in s.dit_text[:batch]]
    if impl == "ours":
        model = WanDiT(config)
        model.load_state_dict({diffusers_to_official(k): v for k, v in weights.items()}, strict=True)
        run = lambda: model(x, t, context)  # noqa: E731
    else:
        model = WanTransformer3DModel(
            patch_size=config.patch_size, num_attention_heads=config.num_heads, attention_head_dim=config.head_dim,
            in_channels=config.in_dim, out_channels=config.out_dim, text_dim=config.text_dim,
            freq_dim=config.freq_dim, ffn_dim=config.ffn_dim, num_layers=config.num_layers, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=config.eps, rope_max_seq_len=1024)
        model.load_state_dict(weights, strict=True)
        padded = torch.zeros(batch, config.text_len, config.text_dim)  # the pipeline zero-pads prompts to 512
        for i, c in enumerate(context):
            padded[i, : len(c)] = c
        run = lambda: model(x, t, padded, return_dict=False)[0]  # noqa: E731
    del weights
    model.eval()
    return measure(run, repeats)


def vae_case(impl: str, s: Sizes, frames: int, repeats: int) -> dict:
    """One timed decode (the slowest case by far), after a warm-up decode of a 2-frame 4x4 latent."""
    latent = torch.randn(1, s.vae_latent[0], frames, *s.vae_latent[2:], generator=torch.Generator().manual_seed(2))
    small = latent[:, :, :2, :4, :4]
    if impl == "ours":
        with tempfile.TemporaryDirectory() as tmp:
            model = load_vae(tiny_vae.write_comfy_safetensors(Path(tmp) / "vae.safetensors", s.vae_dim, seed=0))
        run, warmup = (lambda: model.decode(latent, tiling="off")), (lambda: model.decode(small, tiling="off"))
    else:
        model = AutoencoderKLWan(base_dim=s.vae_dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                 attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0)
        model.load_state_dict(tiny_vae.to_diffusers(tiny_vae.random_state_dict(s.vae_dim, seed=0)), strict=True)
        raw = denormalize(latent)  # diffusers decodes the raw (un-normalised) latent
        run, warmup = (lambda: model.decode(raw).sample), (lambda: model.decode(denormalize(small)).sample)
    return measure(run, 1, warmup)


def t5_case(impl: str, s: Sizes, batch: int, repeats: int) -> dict:
    cfg = s.t5
    weights = {official_to_hf(k): v for k, v in tiny_t5.random_official_state(cfg, seed=0).items()}
    ids = torch.randint(3, cfg.vocab, (batch, s.t5_tokens), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    if impl == "ours":
        model = T5Encoder(cfg)
        model.load_state_dict({hf_to_official(k): v for k, v in weights.items()}, strict=True)
        run = lambda: model(ids, mask)  # noqa: E731
    else:
        model = UMT5EncoderModel(UMT5Config(
            vocab_size=cfg.vocab, d_model=cfg.dim, d_kv=cfg.head_dim, d_ff=cfg.dim_ffn, num_layers=cfg.num_layers,
            num_heads=cfg.num_heads, relative_attention_num_buckets=cfg.num_buckets,
            relative_attention_max_distance=cfg.max_distance, feed_forward_proj="gated-gelu", dropout_rate=0.0,
            layer_norm_epsilon=cfg.eps, is_encoder_decoder=False, use_cache=False))
        model.load_state_dict({**weights, "encoder.embed_tokens.weight": weights["shared.weight"]}, strict=True)
        run = lambda: model(input_ids=ids, attention_mask=mask).last_hidden_state  # noqa: E731
    del weights
    model.eval()
    return measure(run, repeats)


def sampler_case(impl: str, s: Sizes, repeats: int) -> dict:
    config = tiny_dit.TINY_DIT_CONFIG
    weights = [{official_to_diffusers(k): v for k, v in tiny_dit.random_state_dict(config, seed).items()}
               for seed in (1, 2)]
    gen = torch.Generator().manual_seed(4)
    positive, negative = torch.randn(7, config.text_dim, generator=gen), torch.randn(5, config.text_dim, generator=gen)
    noise = make_noise((1, *s.sampler_latent), 42)
    if impl == "ours":
        high, low = (WanDiT(config).eval() for _ in range(2))
        for model, sd in zip((high, low), weights):
            model.load_state_dict({diffusers_to_official(k): v for k, v in sd.items()}, strict=True)
        experts = ResidentExperts(high, low)
        # cond and uncond as two passes, as the pipeline runs them
        run = lambda: sample_moe(experts, [positive], [negative], noise=noise, steps=s.sampler_steps,  # noqa: E731
                                 shift=5.0, cfg_batch="off")
    else:
        high, low = (WanTransformer3DModel(
            patch_size=config.patch_size, num_attention_heads=config.num_heads, attention_head_dim=config.head_dim,
            in_channels=16, out_channels=16, text_dim=config.text_dim, freq_dim=config.freq_dim,
            ffn_dim=config.ffn_dim, num_layers=config.num_layers, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=config.eps, rope_max_seq_len=1024).eval() for _ in range(2))
        for model, sd in zip((high, low), weights):
            model.load_state_dict(sd, strict=True)
        scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                            num_train_timesteps=1000, flow_shift=5.0)
        # The pipeline passes only the step count; give it the official unshifted grid (diffusers shifts it).
        set_timesteps = scheduler.set_timesteps
        scheduler.set_timesteps = lambda num_inference_steps=None, device=None, **kw: set_timesteps(
            device=device, sigmas=base_grid("unipc", num_inference_steps))
        pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler, transformer=high,
                           transformer_2=low, boundary_ratio=BOUNDARY)
        pipe.set_progress_bar_config(disable=True)

        def padded(c: torch.Tensor) -> torch.Tensor:
            return torch.cat([c, c.new_zeros(config.text_len - len(c), c.shape[1])])[None]

        _, frames, h, w = s.sampler_latent
        run = lambda: pipe(prompt_embeds=padded(positive), negative_prompt_embeds=padded(negative),  # noqa: E731
                           height=8 * h, width=8 * w, num_frames=video_frames(frames),
                           num_inference_steps=s.sampler_steps, guidance_scale=GUIDE_HIGH, guidance_scale_2=GUIDE_LOW,
                           latents=noise.clone(), output_type="latent").frames
    del weights
    return measure(run, repeats)


# ---------------------------------------------------------------------------------------------------------------
# the table


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def row(component: str, config: str, ours: dict, ref: dict) -> str:
    diff = float(np.abs(ours["out"] - ref["out"]).max())
    return (f"{component:<13} {config:<38} {ours['time']:>8.3f} s {ref['time']:>8.3f} s {_ratio(ours['time'], ref['time']):>6.2f}"
            f" {_mib(ours['peak']):>10} {_mib(ref['peak']):>10} {_ratio(ours['peak'], ref['peak']):>6.2f}  {diff:.1e}")


HEADER = (f"{'component':<13} {'config':<38} {'time ours':>10} {'reference':>10} {'ratio':>6}"
          f" {'peak ours':>10} {'reference':>10} {'ratio':>6}  max|diff|")


def main(argv: list[str] | None = None) -> int:
    """Run every pair, print the table; returns 0."""
    parser = argparse.ArgumentParser(prog="python -m bench.reference_cpu", description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs (a smoke run of a few seconds)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 3, tiny 1)")
    args = parser.parse_args(argv)
    s = TINY if args.tiny else FULL
    repeats = args.repeats or (1 if args.tiny else 3)
    pair = lambda case, *a: [isolated(case, impl, s, *a, repeats) for impl in ("ours", "reference")]  # noqa: E731
    d, t5 = s.dit, s.t5
    _, frames, h, w = s.dit_latent
    tokens = frames * (h // d.patch_size[1]) * (w // d.patch_size[2])
    print(f"reference benchmark on CPU ({torch.get_num_threads()} threads), float32, median of {repeats} calls after a "
          f"warm-up (VAE: 1 call); peak = RSS high-water mark - RSS before - output bytes; ratio = ours / reference",
          flush=True)
    print(HEADER)
    dit_name = f"{d.dim}d {d.num_heads}h {d.num_layers}L, {tokens} tok"
    for batch in (1, 2):
        print(row("DiT forward", f"{dit_name}, batch {batch}", *pair(dit_case, batch)), flush=True)
    vae = {}
    for frames in (s.vae_latent[1], 4 * s.vae_latent[1]):
        vae[frames] = pair(vae_case, frames)
        h, w = s.vae_latent[2:]
        print(row("VAE decode", f"dim {s.vae_dim}, {frames}x{h}x{w} -> {video_frames(frames)} fr", *vae[frames]), flush=True)
    print(row("umT5 encoder", f"{t5.dim}d {t5.num_heads}h {t5.num_layers}L, 2x{s.t5_tokens} tok", *pair(t5_case, 2)),
          flush=True)
    print(row("MoE sampler", f"tiny DiTs, {s.sampler_steps} UniPC steps, CFG 2 passes", *pair(sampler_case)), flush=True)
    (o1, r1), (o4, r4) = vae.values()
    print(f"VAE working memory at 4x the frames: ours x{_ratio(o4['peak'], o1['peak']):.2f}, "
          f"reference x{_ratio(r4['peak'], r1['peak']):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
