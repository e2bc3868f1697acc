"""One guided A14B step on a GPU: our DiT per attention backend, with and without fp8 matmul and torch.compile,
against diffusers' WanTransformer3DModel on the same random weights; achieved TFLOP/s against the device's dense
peak, peak VRAM, the projected 40-step video time, and the VAE decode of 81 frames.

A "full guided step" is both CFG passes (batch 2: cond and uncond) of one expert at the 480p or 720p token count
(32 760 / 75 600 tokens). Weights are random bf16 made on the device (no file); the fp8 rows quantise the block
Linears per tensor to e4m3 as scaled-fp8 files store them. Each row: one warm-up step, then `--repeats` timed
steps (median). The projection is 40 x the step time plus the decode; it leaves out text encoding and loading.
Without CUDA it prints "no CUDA device: skipped" and exits 0 (`--device cpu --tiny` runs the same code as a smoke).

    python -m bench.gpu_step [--blocks 40] [--resolutions 480p 720p] [--repeats 2] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.gpu_placement import RESOLUTIONS, SKIP_MESSAGE, random_expert
from wan_core.dit.attention import available_attention
from wan_core.dit.model import DiTConfig
from wan_core.io.quant.fp8 import quantize_fp8, swap_in_fp8_linears, use_fp8_matmul

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets, matched on the device name.
DENSE_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.2,
                     "B200": 2250.0}
BLOCK_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                 "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


def step_flops(config: DiTConfig, tokens: int, batch: int = 2, text_len: int = 512) -> float:
    """Multiply-adds x 2 of one forward over `tokens` tokens (the blocks; embeddings and head are negligible)."""
    d, f = config.dim, config.ffn_dim
    per_block = (4 * tokens * d * d + 2 * tokens * tokens * d  # self-attention projections, QK^T and AV
                 + 2 * tokens * d * d + 2 * text_len * d * d + 2 * tokens * text_len * d  # cross-attention
                 + 2 * tokens * d * f)  # FFN
    return 2.0 * batch * per_block * config.num_layers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fp8(model, dtype: torch.dtype) -> None:
    """Quantise the block Linears to per-tensor scaled e4m3, as scaled-fp8 files store them."""
    names = {f"blocks.{i}.{n}" for i in range(len(model.blocks)) for n in BLOCK_LINEARS}
    full = {n: model.get_submodule(n) for n in names}
    swap_in_fp8_linears(model, names, storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
    for name, old in full.items():
        new = model.get_submodule(name)
        weight, scale = quantize_fp8(old.weight.detach())
        new.weight.data, new.weight_scale.data = weight, scale.to(weight.device)
        new.bias.data = old.bias.detach().to(dtype)


def timed(run, device: torch.device, repeats: int) -> tuple[float, int]:
    """(median seconds, peak device bytes) of `repeats` calls after one warm-up."""
    run()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return statistics.median(times), peak


def our_rows(config: DiTConfig, device: torch.device, dtype: torch.dtype, latent: tuple[int, ...], args) -> list:
    """(label, seconds, peak) for each attention backend x fp8 matmul x compile of our DiT."""
    model = random_expert(config, device, dtype, seed=0)
    x = torch.randn(2, 16, *latent, device=device)
    t = torch.full((2,), 900.0, device=device)
    context = [torch.randn(200, config.text_dim, device=device), torch.randn(120, config.text_dim, device=device)]
    rows = []
    for weights in ("bf16", "fp8"):
        if weights == "fp8":
            _fp8(model, dtype)
        for attention in [a for a in args.attention if a in available_attention()]:
            model.set_attention(attention)
            for fast in ((False, True) if weights == "fp8" else (False,)):
                use_fp8_matmul(model, fast)
                for compiled in ((False, True) if args.compile else (False,)):
                    model.compile_blocks(compiled)
                    label = f"ours {weights}{' fp8-matmul' if fast else ''} {attention}{' compiled' if compiled else ''}"
                    with torch.no_grad():
                        seconds, peak = timed(lambda: model(x, t, context), device, args.repeats)
                    rows.append((label, seconds, peak))
                    model.forget_text()
    return rows


def diffusers_row(config: DiTConfig, device: torch.device, dtype: torch.dtype, latent: tuple[int, ...], args) -> tuple:
    from diffusers import WanTransformer3DModel

    from wan_core.dit.keys import official_to_diffusers

    ours = random_expert(config, device, dtype, seed=0)
    with torch.device(device):
        ref = WanTransformer3DModel(
            patch_size=config.patch_size, num_attention_heads=config.num_heads, attention_head_dim=config.head_dim,
            in_channels=16, out_channels=16, text_dim=config.text_dim, freq_dim=config.freq_dim,
            ffn_dim=config.ffn_dim, num_layers=config.num_layers, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=config.eps, rope_max_seq_len=1024).to(dtype).eval()
    ref.load_state_dict({official_to_diffusers(k): v for k, v in ours.state_dict().items()}, strict=True)
    del ours
    x = torch.randn(2, 16, *latent, device=device, dtype=dtype)
    t = torch.full((2,), 900.0, device=device)
    context = torch.randn(2, 512, config.text_dim, device=device, dtype=dtype)
    with torch.no_grad():
        seconds, peak = timed(lambda: ref(x, t, context, return_dict=False)[0], device, args.repeats)
    return "diffusers WanTransformer3DModel bf16", seconds, peak


def vae_row(device: torch.device, dtype: torch.dtype, resolution: str, tiny: bool) -> tuple:
    from wan_core.vae.model import WanVAE

    vae = WanVAE(dim=8 if tiny else 96).to(device, dtype).eval()
    frames, h, w = RESOLUTIONS[resolution]
    latent = torch.randn(1, 16, frames, h, w, device=device)
    seconds, peak = timed(lambda: vae.decode(latent, tiling="off", out_device=device), device, 1)
    return f"VAE decode {frames} latent frames (bf16)", seconds, peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_step", description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--resolutions", nargs="+", default=["480p", "720p"], choices=list(RESOLUTIONS))
    parser.add_argument("--attention", nargs="+", default=["sdpa", "sdpa_flash", "sdpa_cudnn", "sage"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd blocks (minutes to compile)")
    parser.add_argument("--no-diffusers", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny config (smoke run on any device)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(SKIP_MESSAGE)
        return 0
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = args.peak_tflops or next((v for k, v in DENSE_PEAK_TFLOPS.items() if k in name), None)
    config = DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2) if args.tiny else \
        DiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=args.blocks)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(f"guided step (cond + uncond) of one expert, {config.num_layers} blocks, on {name}; dense peak "
          f"{peak or '?'} TFLOP/s")
    for resolution in (["tiny"] if args.tiny else args.resolutions):
        latent = RESOLUTIONS[resolution]
        tokens = latent[0] * (latent[1] // 2) * (latent[2] // 2)
        flops = step_flops(config, tokens)
        rows = our_rows(config, device, dtype, latent, args)
        if not args.no_diffusers:
            rows.append(diffusers_row(config, device, dtype, latent, args))
        decode = vae_row(device, dtype, resolution, args.tiny)
        for label, seconds, peak_bytes in rows:
            tflops = flops / seconds / 1e12
            share = f"{100 * tflops / peak:.0f}% of peak" if peak else "peak unknown"
            print(f"{resolution} {tokens} tok  {label:<44} {seconds:8.3f} s/step  {tflops:7.1f} TFLOP/s ({share})"
                  f"  peak {peak_bytes / 2**30:6.2f} GiB  -> 40 steps + decode {40 * seconds + decode[1]:7.1f} s")
        print(f"{resolution} {decode[0]}: {decode[1]:.2f} s, peak {decode[2] / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
