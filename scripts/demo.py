"""`make demo`: boot the real ComfyUI headless with this pack, write tiny random Wan2.2 checkpoints under the public
file names, run the shipped text-to-video workflow (API twin) at a tiny size over HTTP, and copy the .mp4 to ./out/.

A stage that fails exits 1 with ComfyUI's error message.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "support"))  # the harness the tests use (one implementation)
sys.path.insert(0, str(REPO_ROOT))  # wan_core as a top-level package, for the tiny checkpoint writers

from harness.client import ComfyError, output_files  # noqa: E402
from harness.comfy_server import ComfyServer, pack_load_report  # noqa: E402

API_WORKFLOW = REPO_ROOT / "workflows" / "api" / "wan22_t2v_a14b_720p.json"
OUT_DIR = REPO_ROOT / "out"
TINY = {"width": 64, "height": 48, "length": 5, "steps": 4}  # 5 frames -> 2 latent frames; 64x48 -> 8x6 latent; 4 steps at shift 12 = 3 high-noise + 1 low-noise
# Which node inputs the tiny size goes to (class_type -> input names).
TINY_INPUTS = {"WanMoEEmptyLatent": ("width", "height", "length"), "WanMoESampler": ("steps",),
               "WanVaceToVideo": ("width", "height", "length"), "WanMoEControlPreprocess": ("width", "height", "length")}
# A workflow with context windows stays windowed at the tiny size: 17 frames (5 latent) in windows of 9 frames
# (3 latent) sharing 4 (1 latent) -> two windows, latent frames 0-2 and 2-4.
TINY_WINDOWS = {"length": 17, "window_frames": 9, "overlap_frames": 4}
# The engine's tiny writers (wan_core/testing/tiny/<module>.py) and the function each must expose:
# write_comfy_file(path, role, fp8, seed) writing one tiny file in the layout ComfyUI users download.
TINY_WRITER_MODULES = {"dit": "dit", "t5": "t5", "vae": "vae"}
TINY_WRITER_FUNCTION = "write_comfy_file"


def say(message: str) -> None:
    """Print a demo progress line."""
    print(f"[demo] {message}", flush=True)


def component_of(file_name: str) -> tuple[str, str, bool]:
    """(writer module, role, fp8) for a public file name from wan_core.config.COMFY_FILES."""
    from wan_core.config import COMFY_FILES

    key = next((k for k, v in COMFY_FILES.items() if v == file_name), None)
    if key is None:
        raise ValueError(f"{file_name!r} is not one of the public file names in wan_core/defaults.py COMFY_FILES")
    role, precision = key.rsplit("_", 1) if "_" in key else (key, "fp16")  # vace_high_fp8 -> vace_high, fp8
    module = {"high": "dit", "low": "dit", "vace_high": "dit", "vace_low": "dit"}.get(role, role)
    return module, role, precision == "fp8"


def model_folder(module: str) -> str:
    """ComfyUI's model folder for a component."""
    return {"dit": "diffusion_models", "t5": "text_encoders", "vae": "vae"}[module]


def referenced_model_files(workflow: dict) -> list[str]:
    """The public model file names an API workflow's nodes name in their inputs."""
    from wan_core.config import COMFY_FILES

    public = set(COMFY_FILES.values())
    inputs = (v for node in workflow.values() for v in node.get("inputs", {}).values())
    return sorted({v for v in inputs if isinstance(v, str) and v in public})


def tiny_writer(module: str):
    """The tiny writer function of a component: write_comfy_file(path, role, fp8, seed)."""
    return getattr(importlib.import_module(f"wan_core.testing.tiny.{TINY_WRITER_MODULES[module]}"), TINY_WRITER_FUNCTION)


def write_tiny_checkpoints(models_dir: Path, file_names: list[str], seed: int = 0) -> list[Path]:
    """Write a tiny random checkpoint under each public file name into ComfyUI's model folders."""
    writers = {module: tiny_writer(module) for module in {component_of(name)[0] for name in file_names}}
    written = []
    for name in file_names:
        module, role, fp8 = component_of(name)
        path = models_dir / model_folder(module) / name
        writers[module](path, role=role, fp8=fp8, seed=seed)
        written.append(path)
    return written


def patch_to_tiny_size(workflow: dict, size: dict = TINY) -> dict:
    """A copy of an API workflow with the latent size, frame count and steps set to `size`."""
    patched = copy.deepcopy(workflow)
    changed = []
    for node_id, node in patched.items():
        for name in TINY_INPUTS.get(node.get("class_type"), ()):
            if name in node.get("inputs", {}):
                node["inputs"][name] = size[name]
                changed.append(f"{node_id}.{name}")
    missing = [n for names in TINY_INPUTS.values() for n in names if not any(c.endswith(f".{n}") for c in changed)]
    if missing:
        raise ValueError(
            f"{API_WORKFLOW.name}: found no {', '.join(missing)} input on its "
            f"{'/'.join(TINY_INPUTS)} nodes; the demo cannot shrink the run (expected inputs: {TINY_INPUTS})"
        )
    windows = [node for node in patched.values() if node.get("class_type") == "WanMoEContextWindows"]
    for node in windows:
        node["inputs"].update(window_frames=TINY_WINDOWS["window_frames"], overlap_frames=TINY_WINDOWS["overlap_frames"])
    if windows:
        for node in patched.values():
            if node.get("class_type") == "WanMoEEmptyLatent":
                node["inputs"]["length"] = TINY_WINDOWS["length"]
    return patched


def run_workflow(server: ComfyServer, workflow: dict, timeout: float) -> Path:
    """Queue the workflow, wait for it, copy the first .mp4 it wrote to ./out/ and return that path."""
    outputs = server.client.run(workflow, timeout=timeout)
    videos = [entry for entry in output_files(outputs) if entry["filename"].endswith(".mp4")]
    if not videos:
        raise ComfyError(f"the workflow finished but wrote no .mp4; its outputs were: {json.dumps(outputs)[:1000]}")
    OUT_DIR.mkdir(exist_ok=True)
    target = OUT_DIR / videos[0]["filename"]
    shutil.copy2(server.output_path(videos[0]), target)
    return target


def check_pack_loaded(server: ComfyServer) -> None:
    """Raise with the log tail unless ComfyUI loaded the pack without errors."""
    report = pack_load_report(server.log_text())
    if not report["loaded"] or report["import_failed"] or report["tracebacks"]:
        raise ComfyError(
            "ComfyUI did not load ComfyUI-WanMoE cleanly:\n" + "\n".join(report["import_lines"] + report["tracebacks"])
            + f"\nLog tail:\n{server.log_tail()}"
        )


def main() -> int:
    """Run the demo stages; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the workflow")
    parser.add_argument("--keep", action="store_true", help="keep ComfyUI's temporary base directory")
    args = parser.parse_args()

    timings: dict[str, float] = {}
    if os.environ.get("WANMOE_SETUP_SECONDS"):
        timings["setup (make setup)"] = float(os.environ["WANMOE_SETUP_SECONDS"])
    exit_code = 0
    server = ComfyServer()
    try:
        say(f"booting ComfyUI from {server.comfy_dir} (base directory {server.base_dir})")
        server.start()
        timings["ComfyUI boot"] = server.boot_seconds
        check_pack_loaded(server)
        served = [n for n, i in server.client.object_info().items() if i.get("python_module") == "custom_nodes.ComfyUI-WanMoE"]
        say(f"ComfyUI is up at {server.url}; ComfyUI-WanMoE loaded cleanly, serving {len(served)} node(s)")

        workflow = json.loads(API_WORKFLOW.read_text())
        started = time.monotonic()
        files = write_tiny_checkpoints(server.models_dir, referenced_model_files(workflow))
        timings["tiny checkpoint writing"] = time.monotonic() - started
        say("wrote " + ", ".join(f"{p.parent.name}/{p.name} ({p.stat().st_size / 2**20:.1f} MiB)" for p in files))

        started = time.monotonic()
        video = run_workflow(server, patch_to_tiny_size(workflow), args.timeout)
        timings["queue -> done"] = time.monotonic() - started
        say(f"video written: {video} ({video.stat().st_size} bytes; {TINY['length']} frames of "
            f"{TINY['width']}x{TINY['height']}, random weights, so it is noise)")
    except (ComfyError, ValueError, TimeoutError) as err:
        say(f"FAILED: {err}")
        exit_code = 1
    finally:
        if args.keep:
            server.stop()
            say(f"kept {server.base_dir} (ComfyUI log: {server.log_path})")
        else:
            server.cleanup()

    for stage, seconds in timings.items():
        say(f"  {stage:<26} {seconds:7.1f} s")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
