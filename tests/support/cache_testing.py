"""Helpers for the model-cache tests: expert files, a file-backed loader, and a small MoE Euler loop.

`run_moe` calls an ExpertSource exactly as the sampler does: `expert(name)` at every step (high while
t >= boundary) and `release()` in a finally. Run as a script (`python cache_testing.py rss DIR BUDGET`)
it measures the peak RSS of a budgeted run in a fresh interpreter and prints a JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from wan_core.memory.cache import CacheKey  # noqa: E402
from wan_core.dit.model import DiTConfig, WanDiT  # noqa: E402
from wan_core.memory.budget import module_bytes  # noqa: E402
from wan_core.testing.measure import PeakRSS  # noqa: E402
from wan_core.sampling.placement import CachedExperts, ExpertSpec  # noqa: E402

TINY = DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=3, text_len=16)
# About 186 MB of float32 weights per expert: large enough that interpreter noise does not matter.
BIG = DiTConfig(dim=1024, ffn_dim=4096, num_heads=8, num_layers=2, text_len=16)
TIMESTEPS = (999, 960, 900, 860, 700, 400)
BOUNDARY = 875.0


def make_expert(config: DiTConfig, seed: int) -> WanDiT:
    """A random expert, deterministic in `seed`."""
    torch.manual_seed(seed)
    return WanDiT(config).eval().requires_grad_(False)


def write_experts(folder: Path, config: DiTConfig) -> tuple[Path, Path]:
    """high.safetensors and low.safetensors with different random weights."""
    from safetensors.torch import save_file

    paths = []
    for name, seed in (("high", 1), ("low", 2)):
        path = folder / f"{name}.safetensors"
        save_file(make_expert(config, seed).state_dict(), str(path))
        paths.append(path)
    return paths[0], paths[1]


def file_loader(path: Path, config: DiTConfig, counter: list | None = None) -> Callable[[torch.device], WanDiT]:
    """Loader reading the file memory-mapped into a meta-built model (no second copy); counts calls."""
    from safetensors.torch import load_file

    def load(device: torch.device) -> WanDiT:
        if counter is not None:
            counter.append(path.name)
        with torch.device("meta"):
            model = WanDiT(config)
        model.load_state_dict(load_file(str(path), device=str(device)), assign=True)
        return model.eval().requires_grad_(False)

    return load


def expert_bytes(config: DiTConfig) -> int:
    """Weight bytes of one float32 expert of `config`."""
    with torch.device("meta"):
        return module_bytes(WanDiT(config))


def specs(high: Path, low: Path, config: DiTConfig, counter: list | None = None, **settings) -> tuple[ExpertSpec, ExpertSpec]:
    """ExpertSpecs for two expert files (keys from file identity and `settings`)."""
    size = expert_bytes(config)
    from wan_core.dit.sizes import stream_bytes_for

    stream = stream_bytes_for(config, 4)
    return tuple(ExpertSpec(CacheKey.for_file("dit", p, **settings), file_loader(p, config, counter), size, stream)
                 for p in (high, low))


def counting_loads(specs, loads: list, names: tuple[str, ...] = ("high", "low")) -> list[ExpertSpec]:
    """The specs, each load appending its expert's name to `loads` (to count what was read from a file)."""
    from dataclasses import replace

    return [replace(s, load=lambda d, s=s, n=n: (loads.append(n), s.load(d))[1]) for s, n in zip(specs, names)]


def cpu_experts(specs, placement: str, cache, loads: list | None = None) -> CachedExperts:
    """CachedExperts on the CPU over (high, low) `specs`, their loads counted into `loads` when given."""
    return CachedExperts(*(counting_loads(specs, loads) if loads is not None else specs), device="cpu",
                         placement=placement, cache=cache)


def inputs(config: DiTConfig, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A small latent [1, 16, 1, 8, 8] and one 12-token text context."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, config.in_dim, 1, 8, 8, generator=g)
    return x, [torch.randn(12, config.text_dim, generator=g)]


def run_moe(experts, x: torch.Tensor, context: list[torch.Tensor], *, timesteps=TIMESTEPS, boundary: float = BOUNDARY,
            before_block: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Euler flow steps switching expert at `boundary`, using the ExpertSource as the sampler does."""
    sigmas = [t / 1000 for t in timesteps] + [0.0]
    x = x.clone()
    try:
        for step, t in enumerate(timesteps):
            model = experts.expert("high" if t >= boundary else "low")
            hook = (lambda block, step=step: before_block(step, block)) if before_block else None
            with torch.no_grad():
                v = model(x, torch.tensor([float(t)]), context, before_block=hook)
            x = x + (sigmas[step + 1] - sigmas[step]) * v
    finally:
        experts.release()
    return x


def _rss_main(folder: str, budget: int) -> None:
    import psutil

    from wan_core.memory.cache import ModelCache
    from wan_core.memory.budget import MemoryBudget
    from wan_core.sampling.placement import CachedExperts

    torch.set_num_threads(1)
    high, low = Path(folder) / "high.safetensors", Path(folder) / "low.safetensors"
    x, context = inputs(BIG)
    loads: list = []
    # Warm up one-time costs (meta registrations, kernels, thread pools) with a small model.
    warm = make_expert(TINY, 0)
    with torch.no_grad():
        warm(*inputs(TINY)[:1], torch.tensor([500.0]), inputs(TINY)[1])
    with torch.device("meta"):
        WanDiT(BIG)
    del warm
    baseline = psutil.Process().memory_info().rss
    meter = PeakRSS()
    cache = ModelCache(MemoryBudget(vram_bytes=0, ram_bytes=budget))
    experts = CachedExperts(*specs(high, low, BIG, loads), device="cpu", cache=cache)
    out = run_moe(experts, x, context)
    out_again = run_moe(experts, x, context)
    peak = meter.peak()
    plan = str(experts.plan)
    cache.release_all()
    reference_cache = ModelCache(MemoryBudget(vram_bytes=0, ram_bytes=100 * budget))
    reference = CachedExperts(*specs(high, low, BIG), device="cpu", cache=reference_cache)
    expected = run_moe(reference, x, context)
    print(json.dumps({
        "baseline": baseline, "peak": peak, "plan": plan, "reference_plan": reference.plan.policy,
        "loads": loads, "equal": bool(torch.equal(out, expected)), "equal_again": bool(torch.equal(out_again, expected)),
        "finite": bool(torch.isfinite(out).all()), "status": str(cache.status()),
    }))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "rss":
        _rss_main(sys.argv[2], int(sys.argv[3]))
    else:
        raise SystemExit("usage: cache_testing.py rss FOLDER BUDGET_BYTES")


class Cancelled(Exception):
    """Stands in for ComfyUI's interrupt."""


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, especially on a shared machine (import it into a test module)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
