"""`python -m bench`: run every benchmark in turn (pass a benchmark's name to run only it)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ("distributed", "gpu_placement", "gpu_step", "quant_dequant", "reference_cpu", "speed_cpu",
              "vace_overhead")  # modules of this package, each with main(argv) -> int


def main(argv: list[str]) -> int:
    """Run the named benchmarks (all when none is named); the worst exit status wins."""
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    status = 0
    for name in names:
        print(f"== {name}", flush=True)
        module = importlib.import_module(f"{__package__}.{name}")  # only what runs is imported
        status = max(status, module.main([]))
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
