"""Placement benchmark: real-size Wan2.2-A14B experts (random bf16 weights) through resident, swap and stream.

For each resolution (480p: 32 760 tokens, 720p: 75 600 tokens) and placement, two experts are built
directly on the device by the cache's loader callables, `--steps` steps run per expert through the
cache-backed ExpertSource (one forward per step, no CFG), then one more step of the first expert; the
script prints the peak VRAM, peak RAM (process RSS), the time per steady step, the first step (with the
load) and the time of that last switch back (weights loaded before: a real swap). A placement that cannot fit is
reported with the cache's own message. Without CUDA it prints "no CUDA device: skipped" and exits 0.

    python -m bench.gpu_placement [--blocks 40] [--steps 2] [--resolutions 480p 720p] [--placements ...]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from wan_core.memory.cache import CacheKey, ModelCache  # noqa: E402
from wan_core.dit.model import DiTConfig, WanDiT  # noqa: E402
from wan_core.memory.budget import MemoryBudget, NotEnoughMemoryError, gib  # noqa: E402
from wan_core.testing.measure import PeakRSS  # noqa: E402
from wan_core.memory.offload import tensor_slots, write_slot  # noqa: E402
from wan_core.dit.sizes import activation_bytes  # noqa: E402
from wan_core.dit.sizes import stream_bytes_for  # noqa: E402
from wan_core.sampling.placement import CachedExperts, ExpertSpec  # noqa: E402

SKIP_MESSAGE = "no CUDA device: skipped"
# Latent (frames, height, width) of 81 frames: 832x480 -> 32 760 tokens, 1280x720 -> 75 600 tokens.
RESOLUTIONS = {"480p": (21, 60, 104), "720p": (21, 90, 160), "tiny": (1, 8, 8)}
PLACEMENTS = ("resident", "swap", "stream")


def random_expert(config: DiTConfig, device: torch.device, dtype: torch.dtype, seed: int) -> WanDiT:
    """An expert of `config` with random weights made directly on `device` in `dtype` (no host copy)."""
    with torch.device("meta"):
        model = WanDiT(config)
    # Random numbers come from the GPU when there is one (CPU randn of 14B values takes minutes).
    source = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else device
    generator = torch.Generator(device=source).manual_seed(seed)
    for owner, kind, name in list(tensor_slots(model)):
        meta = getattr(owner, kind)[name]
        if name == "weight" and meta.dim() == 1:  # norm scales
            value = torch.ones(meta.shape, dtype=dtype, device=device)
        else:
            value = (torch.randn(meta.shape, dtype=dtype, device=source, generator=generator) * 0.02).to(device)
        write_slot((owner, kind, name), value)
    model.compute_dtype = dtype
    return model.eval().requires_grad_(False)


def expert_spec(config: DiTConfig, name: str, dtype: torch.dtype, seed: int) -> ExpertSpec:
    """ExpertSpec whose loader builds a random expert (stands in for reading a file)."""
    with torch.device("meta"):
        params = sum(p.numel() for p in WanDiT(config).parameters())
    itemsize = torch.empty((), dtype=dtype).element_size()
    key = CacheKey("bench-dit", (name, config.num_layers, str(dtype)))
    return ExpertSpec(key, lambda device: random_expert(config, device, dtype, seed), params * itemsize,
                      stream_bytes_for(config, itemsize))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(config: DiTConfig, placement: str, resolution: str, device: torch.device, dtype: torch.dtype,
             steps: int, budget: MemoryBudget) -> dict:
    """One placement at one resolution: timings and peaks (or the reason it does not fit)."""
    frames, height, width = RESOLUTIONS[resolution]
    tokens = frames * (height // 2) * (width // 2)
    cache = ModelCache(budget)
    working = activation_bytes(config, tokens)
    result = {"placement": placement, "resolution": resolution, "tokens": tokens, "blocks": config.num_layers}
    try:
        experts = CachedExperts(expert_spec(config, "high", dtype, 1), expert_spec(config, "low", dtype, 2),
                                device=device, placement=placement, cache=cache, working_bytes=working)
    except NotEnoughMemoryError as exc:
        result["skipped"] = str(exc)
        return result
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(1, config.in_dim, frames, height, width, generator=gen).to(device)
    context = [torch.randn(512, config.text_dim, generator=gen).to(device)]
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    rss = PeakRSS()
    activate, compute = [], []
    order = ["high"] * steps + ["low"] * steps + ["high"]  # the last switch moves weights that were loaded before
    try:
        for step, name in enumerate(order):
            _sync(device)
            t0 = time.perf_counter()
            model = experts.expert(name)
            _sync(device)
            t1 = time.perf_counter()
            with torch.no_grad():
                model(x, torch.full((1,), 999.0 - step, device=device), context)
            _sync(device)
            activate.append(t1 - t0)
            compute.append(time.perf_counter() - t1)
            del model
    except torch.OutOfMemoryError as exc:
        result["skipped"] = f"out of memory during the forward ({str(exc).splitlines()[0]})"
        return result
    finally:
        experts.release()
        result["plan"] = str(experts.plan)
        cache.release_all()
        del experts
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    steady = [c for i, c in enumerate(compute) if i not in (0, steps, 2 * steps)] or compute
    result.update(
        step_s=statistics.median(steady), first_step_s=activate[0] + compute[0], switch_s=activate[-1],
        peak_vram=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        peak_ram=rss.peak(), working_estimate=working)
    return result


def format_result(r: dict) -> str:
    """One line per case."""
    head = f"{r['resolution']:>5} {r['tokens']:>6} tok {r['placement']:>8} {r['blocks']:>2} blocks"
    if "skipped" in r:
        return f"{head}: does not fit: {r['skipped']}"
    vram = gib(r["peak_vram"]) if r["peak_vram"] is not None else "n/a"
    return (f"{head}: {r['step_s']:.2f} s/step (first {r['first_step_s']:.2f} s incl. load, switch "
            f"{r['switch_s']:.2f} s), peak VRAM {vram} (estimated activations {gib(r['working_estimate'])}), "
            f"peak RAM {gib(r['peak_ram'])}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints the skip message and returns 0 without CUDA."""
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_placement", description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=40, help="transformer blocks per expert (A14B: 40)")
    parser.add_argument("--steps", type=int, default=2, help="steps per expert")
    parser.add_argument("--resolutions", nargs="+", default=["480p", "720p"], choices=sorted(RESOLUTIONS))
    parser.add_argument("--placements", nargs="+", default=list(PLACEMENTS), choices=PLACEMENTS)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke run of the same code)")
    parser.add_argument("--tiny", action="store_true", help="a tiny DiT instead of A14B (smoke runs)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(SKIP_MESSAGE)
        return 0
    base = DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2) if args.tiny else DiTConfig.a14b()
    config = DiTConfig(dim=base.dim, ffn_dim=base.ffn_dim, num_heads=base.num_heads, num_layers=args.blocks)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    budget = MemoryBudget.auto(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"placement benchmark on {name}: {'tiny' if args.tiny else 'A14B'} expert, {args.blocks} blocks, "
          f"{dtype}, budget {budget}")
    for resolution in args.resolutions:
        for placement in args.placements:
            print(format_result(run_case(config, placement, resolution, device, dtype, args.steps, budget)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
