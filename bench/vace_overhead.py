"""VACE overhead per step on the CPU: ours vs ComfyUI's native VACE model, on the same merged VACE weights.

One tiny-width DiT with the A14B block layout (40 blocks, 8 VACE blocks after every fifth) written as one merged
file (float32); the plain expert is the same file without its VACE tensors. Ours: load_dit and a forward without
and with one control stream. ComfyUI (0.3.75 from the harness, in a subprocess in its folder, --cpu, fp32): the
plain file as its WanModel, the merged one as its VaceWanModel with one stream. Both sides: same inputs, integer
timestep, one warm-up call, median of `--repeats` timed calls, the same torch thread count. The overhead is
(VACE step - plain step) / plain step; max|diff| is our VACE output against ComfyUI's (a sanity check).

    python -m bench.vace_overhead [--tiny] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from wan_core.dit.loader import load_dit  # noqa: E402
from wan_core.dit.model import DiTConfig  # noqa: E402
from wan_core.dit.vace import VaceInput  # noqa: E402
from wan_core.testing.tiny import dit as tiny_dit  # noqa: E402

FULL = (DiTConfig(dim=512, ffn_dim=1536, num_heads=4, num_layers=40, vace_layers=8), (16, 3, 16, 16), 64)
TINY = (replace(tiny_dit.TINY_DIT_CONFIG, num_layers=10, vace_layers=2), (16, 1, 4, 4), 16)

_COMFY_SIDE = r"""
import json, statistics, sys, time
import torch
plain, merged, inputs, out, repeats, threads = sys.argv[1:7]
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import comfy.sd
from safetensors.torch import load_file, save_file
torch.set_num_threads(int(threads))
d = load_file(inputs)
result = {}
for name, path in (("plain", plain), ("vace", merged)):
    dm = comfy.sd.load_diffusion_model(path, model_options={"dtype": torch.float32}).model.diffusion_model
    extra = {"vace_context": d["vace"].unsqueeze(1), "vace_strength": [1.0]} if name == "vace" else {}
    times = []
    with torch.no_grad():
        for i in range(int(repeats) + 1):
            t0 = time.perf_counter()
            y = dm(d["x"], d["t"], d["context"], **extra)
            times.append(time.perf_counter() - t0)
    result[name] = statistics.median(times[1:])
    result["model_" + name] = type(dm).__name__
save_file({"y": y.contiguous()}, out)
print("INFO " + json.dumps(result))
"""


def comfyui_dir() -> Path:
    """The harness's ComfyUI (as tests/support/harness finds it)."""
    return Path(os.environ.get("WANMOE_COMFYUI_DIR") or REPO_ROOT / ".cache" / "comfyui").expanduser().resolve()


def write_files(folder: Path, config: DiTConfig, latent: tuple[int, ...], tokens: int) -> dict[str, Path]:
    """The merged and the plain expert, and the inputs of one forward."""
    sd = tiny_dit.random_state_dict(config, seed=5)
    base, _ = tiny_dit.split_vace(sd)
    gen = torch.Generator().manual_seed(1)
    context = torch.zeros(1, 512, config.text_dim)
    context[0, :tokens] = torch.randn(tokens, config.text_dim, generator=gen)
    inputs = {"x": torch.randn(1, *latent, generator=gen), "t": torch.tensor([500.0]), "context": context,
              "vace": torch.randn(1, 96, *latent[1:], generator=gen), "tokens": torch.tensor(tokens)}
    paths = {"merged": tiny_dit.write_single_file(folder / "vace_merged.safetensors", sd),
             "plain": tiny_dit.write_single_file(folder / "plain.safetensors", base),
             "inputs": folder / "inputs.safetensors", "out": folder / "comfy_out.safetensors"}
    save_file(inputs, str(paths["inputs"]))
    return paths


@torch.no_grad()
def ours(paths: dict[str, Path], repeats: int) -> tuple[dict, torch.Tensor]:
    """Median seconds of our plain and VACE forwards (one warm-up each), and the VACE output."""
    d = load_file(str(paths["inputs"]))
    context = [d["context"][0, :int(d["tokens"])]]
    result, y = {}, None
    for name, path, control in (("plain", paths["plain"], None),
                                ("vace", paths["merged"], VaceInput((d["vace"],), (torch.tensor([1.0]),)))):
        model = load_dit(path)
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            y = model(d["x"], d["t"], context, control=control)
            times.append(time.perf_counter() - t0)
        result[name] = statistics.median(times[1:])
    return result, y


def comfyui(paths: dict[str, Path], repeats: int) -> dict:
    """ComfyUI's native models on the same files and inputs, in a subprocess in its folder."""
    comfy = comfyui_dir()
    done = subprocess.run([sys.executable, "-c", _COMFY_SIDE, str(paths["plain"]), str(paths["merged"]),
                           str(paths["inputs"]), str(paths["out"]), str(repeats), str(torch.get_num_threads())],
                          cwd=comfy, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(comfy)})
    if done.returncode != 0:
        raise RuntimeError(f"the ComfyUI side failed:\n{done.stderr[-3000:]}")
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("INFO "))[5:])


def main(argv: list[str] | None = None) -> int:
    """Print the overhead row of ours and of ComfyUI's native VACE model; returns 0."""
    parser = argparse.ArgumentParser(prog="python -m bench.vace_overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a 10-block smoke run of a few seconds")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 3, tiny 1)")
    args = parser.parse_args(argv)
    config, latent, tokens = TINY if args.tiny else FULL
    repeats = args.repeats or (1 if args.tiny else 3)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_files(Path(tmp), config, latent, tokens)
        mine, y = ours(paths, repeats)
        theirs = comfyui(paths, repeats)
        diff = (y - load_file(str(paths["out"]))["y"]).abs().max().item()
    assert theirs["model_vace"] == "VaceWanModel", theirs
    grid = latent[1] * latent[2] * latent[3] // 4
    print(f"VACE overhead per step on CPU ({torch.get_num_threads()} threads), fp32, dim {config.dim}, "
          f"{config.num_layers} blocks + {config.vace_layers} VACE blocks, {grid} tokens, median of {repeats}")
    print(f"{'':<22}{'plain step':>12}{'VACE step':>12}{'overhead':>10}")
    for name, t in (("ours", mine), ("ComfyUI native", theirs)):
        print(f"{name:<22}{t['plain']:>10.3f} s{t['vace']:>10.3f} s{(t['vace'] - t['plain']) / t['plain']:>+10.1%}")
    print(f"VACE step time ours / ComfyUI {mine['vace'] / theirs['vace']:.2f}; "
          f"expected from block count +{config.vace_layers / config.num_layers:.0%}; max|diff| {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
