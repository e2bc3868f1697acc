"""Distributed benchmark: one DiT step (one expert call) on 1 rank vs N ranks, at 480p and 720p token counts.

Both sides run the same random expert (built on each rank's device from one seed, as wan_core.parallel's
workers would load a file): 1 rank is the expert's own forward in this process; N ranks is the worker pool
(rank 0 here, N-1 spawned workers, gloo on the CPU, NCCL on CUDA). Rows: cfg > 1 (cond + uncond, one batch of 2:
two CFG groups of N/2 Ulysses ranks) and cfg 1 (batch 1: Ulysses over all N). One warm-up call, then
`--repeats` timed calls, median; peak memory per rank (CUDA allocator peak, or the process's peak RSS on the
CPU); speed-up = 1-rank time / N-rank time; max|diff| between the two outputs is a sanity check.

On CUDA the expert is A14B (bf16, `--blocks` of its 40 blocks) at the real token counts (480p 32 760, 720p
75 600; 81 frames). On the CPU a narrow expert runs at the token count of `--frames` latent frames (default 1):
the CPU shares its cores between the ranks, so that run shows the overhead of the scheme, not a speed-up.

    python -m bench.distributed [--ranks N] [--device cuda|cpu] [--blocks 40] [--frames F] [--shard] [--tiny]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.gpu_placement import random_expert  # noqa: E402
from wan_core.dit.model import DiTConfig  # noqa: E402
from wan_core.memory.budget import gib  # noqa: E402
from wan_core.parallel.experts import ParallelExperts  # noqa: E402
from wan_core.parallel.group import rank_devices  # noqa: E402
from wan_core.parallel.pool import get_pool, release_pool  # noqa: E402
from wan_core.parallel.sharding import ShardedExperts  # noqa: E402
from wan_core.parallel.worker import peak_bytes  # noqa: E402
from wan_core.sampling.experts import ResidentExperts  # noqa: E402

# Latent (frames, height, width) of 81 frames: 832x480 -> 32 760 tokens, 1280x720 -> 75 600 tokens.
RESOLUTIONS = {"480p": (21, 60, 104), "720p": (21, 90, 160)}
FACTORY = "bench.distributed:random_experts"
SEED = 7


def _config(values: dict) -> DiTConfig:
    return DiTConfig(**{**values, "patch_size": tuple(values["patch_size"])})


def random_experts(*, device: torch.device, config: dict, dtype: str, shard: bool = False) -> object:
    """Every rank's ExpertSource: one random expert (the same weights on every rank), as both experts."""
    config, dtype = _config(config), getattr(torch, dtype)
    if shard:
        build = lambda: random_expert(config, torch.device("cpu"), dtype, SEED)  # noqa: E731
        return ShardedExperts({"high": build, "low": build}, device, key=("bench", str(config), str(dtype)))
    expert = random_expert(config, torch.device(device), dtype, SEED)
    return ResidentExperts(expert, expert)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(call, device: torch.device, repeats: int) -> tuple[float, torch.Tensor]:
    """Median seconds of `repeats` calls after one warm-up, and the last output."""
    with torch.no_grad():
        out = call()
        times = []
        for _ in range(repeats):
            _sync(device)
            started = time.perf_counter()
            out = call()
            _sync(device)
            times.append(time.perf_counter() - started)
    return statistics.median(times), out


def _inputs(config: DiTConfig, latent: tuple[int, int, int], batch: int, device: torch.device) -> tuple:
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, config.in_dim, *latent, generator=gen).to(device)
    t = torch.full((batch,), 900.0, device=device)
    contexts = [torch.randn(512, config.text_dim, generator=gen).to(device) for _ in range(batch)]
    return x, t, contexts


def _reset_peaks(pool, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        if pool is not None:
            pool.send({"kind": "reset_stats"})


def run_row(config: DiTConfig, latent: tuple[int, int, int], batch: int, single, parallel, device: torch.device,
            repeats: int) -> dict:
    """One resolution at one batch (2: cfg > 1, 1: cfg 1): times, speed-up, peaks, max|diff|."""
    x, t, contexts = _inputs(config, latent, batch, device)
    _reset_peaks(None, device)
    one_s, one_out = _timed(lambda: single(x, t, contexts), device, repeats)
    one_peak = peak_bytes(device)
    _reset_peaks(parallel.pool, device)
    many_s, many_out = _timed(lambda: parallel(x, t, contexts), device, repeats)
    peaks = parallel.pool.stats()
    return {"tokens": latent[0] * (latent[1] // 2) * (latent[2] // 2), "batch": batch, "one_s": one_s,
            "many_s": many_s, "speedup": one_s / many_s, "one_peak": one_peak, "peaks": peaks,
            "layout": parallel.pool.last_layout, "diff": float((one_out.float() - many_out.float()).abs().max())}


def format_row(name: str, ranks: int, r: dict) -> str:
    peaks = " ".join(gib(r["peaks"][rank]) for rank in sorted(r["peaks"]))
    cfg = "cfg>1 (batch 2)" if r["batch"] == 2 else "cfg 1 (batch 1)"
    return (f"{name:>5} {r['tokens']:>6} tok {cfg}: 1 rank {r['one_s']:.3f} s, {ranks} ranks {r['many_s']:.3f} s "
            f"({r['layout'].cfg} CFG x {r['layout'].ulysses} Ulysses), speed-up {r['speedup']:.2f}x; peak 1 rank "
            f"{gib(r['one_peak'])}, per rank {peaks}; max|diff| {r['diff']:.2e}")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(prog="python -m bench.distributed", description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, default=torch.cuda.device_count() if cuda else 2)
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--blocks", type=int, default=None, help="blocks of the expert (A14B: 40; CPU default 4)")
    parser.add_argument("--frames", type=int, default=None, help="latent frames (GPU default 21 = 81 video frames; "
                                                                 "CPU default 1)")
    parser.add_argument("--resolutions", nargs="+", default=list(RESOLUTIONS), choices=list(RESOLUTIONS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shard", action="store_true", help="placement shard: each rank holds 1/N of every block")
    parser.add_argument("--tiny", action="store_true", help="a tiny expert and latent (smoke runs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the rows; prints why and returns 0 when fewer than 2 ranks are possible."""
    args = _arguments(argv)
    device = torch.device(args.device)
    if args.ranks < 2:
        print(f"distributed benchmark needs 2 or more ranks ({args.ranks} CUDA device(s)): skipped")
        return 0
    gpu = device.type == "cuda"
    a14b = DiTConfig.a14b()
    if args.tiny:
        base, blocks = DiTConfig(dim=128, ffn_dim=256, num_heads=8, num_layers=2, text_dim=64, freq_dim=32), 2
    elif gpu:
        base, blocks = a14b, 40
    else:  # A14B's head width and head count ratio, narrower
        base, blocks = DiTConfig(dim=512, ffn_dim=1024, num_heads=8, num_layers=4), 4
    config = DiTConfig(**{**asdict(base), "num_layers": args.blocks or blocks})
    dtype = "bfloat16" if gpu else "float32"
    frames = 1 if args.tiny else args.frames or (21 if gpu else 1)
    settings = dict(config=asdict(config), dtype=dtype, shard=args.shard)
    pool = get_pool(rank_devices(args.ranks, device))
    try:
        local = random_experts(device=device, **settings)
        parallel = ParallelExperts(pool, local, FACTORY, settings).expert("high")
        # 1 rank: the same weights whole (with --shard, a separate unsharded copy).
        single = random_expert(config, device, getattr(torch, dtype), SEED) if args.shard else local.expert("high")
        name = torch.cuda.get_device_name(device) if gpu else "CPU"
        print(f"distributed benchmark on {args.ranks} x {name} ({pool.groups.device.type}, "
              f"{'nccl' if gpu else 'gloo'}): {config.num_layers} blocks of dim {config.dim}, {config.num_heads} heads, "
              f"{dtype}{', weights sharded' if args.shard else ''}, {frames} latent frame(s)")
        for resolution in (["480p"] if args.tiny else args.resolutions):
            _, height, width = RESOLUTIONS[resolution]
            latent = (frames, 8, 8) if args.tiny else (frames, height, width)
            for batch in (2, 1):
                row = run_row(config, latent, batch, single, parallel, device, args.repeats)
                print(format_row(resolution, args.ranks, row), flush=True)
    finally:
        release_pool()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
