"""Video upscaling engine (wan_core.upscale.pipeline, wan_core.upscale.loader) with tiny random-weight spandrel models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact
from spandrel.architectures.ESRGAN import ESRGAN

from wan_core.memory.pace import pacing
from wan_core.upscale.pipeline import auto_tile_and_batch, plan_geometry, resize, upscale_video
from wan_core.upscale.loader import UpscaleModelError, load_upscale_model, upscale_model_from_state_dict

REPO_ROOT = Path(__file__).resolve().parents[3]


def compact_x4():
    """SRVGGNetCompact (realesr-animevideov3's family), random weights, x4."""
    torch.manual_seed(0)
    return upscale_model_from_state_dict(Compact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=4).state_dict())


def esrgan_x2():
    """RRDBNet (RealESRGAN x4plus's family), random weights, x2."""
    torch.manual_seed(1)
    return upscale_model_from_state_dict(ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=2, scale=2).state_dict())


def frames(n: int = 3, h: int = 48, w: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed))


def test_spandrel_recognises_the_tiny_models():
    c, e = compact_x4(), esrgan_x2()
    assert (c.architecture.id, c.scale) == ("Compact", 4)
    assert (e.architecture.id, e.scale) == ("ESRGAN", 2)


def test_files_load_and_a_foreign_file_is_refused_clearly(tmp_path):
    sd = Compact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=4).state_dict()
    torch.save(sd, tmp_path / "tiny.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "tiny.safetensors")
    for name in ("tiny.pth", "tiny.safetensors"):
        assert load_upscale_model(tmp_path / name).scale == 4
    save_file({"decoder.middle.0.residual.0.gamma": torch.zeros(4)}, tmp_path / "vae.safetensors")
    with pytest.raises(UpscaleModelError, match=r"vae.safetensors: spandrel does not recognise .*upscale_models"):
        load_upscale_model(tmp_path / "vae.safetensors")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UpscaleModelError, match=r"notes.txt: .*Expected .pth"):
        load_upscale_model(tmp_path / "notes.txt")


@pytest.mark.parametrize("make_model", [compact_x4, esrgan_x2], ids=["compact_x4", "esrgan_x2"])
def test_tiled_equals_untiled(make_model):
    model, clip = make_model(), frames()
    common = dict(stabilize=0.0, color_fix=False)
    whole = upscale_video(clip, model, tile=None, frame_batch=3, **common)
    assert whole.shape == (3, 48 * model.scale, 64 * model.scale, 3)
    # 3 x 2 tiles of 32 px, 18 px overlaps blended over their middle 6 px (both models see at most ~6 px
    # around a pixel), 2 frames per batch: batches and tiles both vary.
    tiled = upscale_video(clip, model, tile=32, overlap=18, frame_batch=2, **common)
    assert (tiled - whole).abs().max().item() < 1e-3


def test_auto_settings_tile_when_memory_is_short():
    model = compact_x4()
    with pacing(budget=1e30):  # memory alone decides here (test_upscale_limits covers the work between checks)
        assert auto_tile_and_batch(model, 48, 64, "cpu", budget=1 << 30) == (None, 4)
        tile, batch = auto_tile_and_batch(model, 480, 832, "cpu", budget=64 << 20)
    assert batch == 1 and 64 <= tile < 480 and tile % 32 == 0


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        (dict(model="esrgan"), (2, 96, 128, 3)),  # the model's own 2x
        (dict(model="compact"), (2, 192, 256, 3)),  # the model's own 4x
        (dict(model="compact", scale=2.0), (2, 96, 128, 3)),  # 4x model, resampled down to 2x
        (dict(model=None, scale=4.0), (2, 192, 256, 3)),
        (dict(model="compact", target=(160, 90), fit="crop"), (2, 90, 160, 3)),
        (dict(model="esrgan", target=(100, 100), fit="pad"), (2, 100, 100, 3)),
        (dict(model=None, target=(99, 41), fit="stretch"), (2, 41, 99, 3)),
    ],
)
def test_output_shapes(kwargs, shape):
    model = {"compact": compact_x4, "esrgan": esrgan_x2, None: lambda: None}[kwargs.pop("model")]()
    assert upscale_video(frames(2), model, **kwargs).shape == shape


def test_pad_leaves_black_bars_and_crop_takes_the_centre():
    clip = frames(1, 48, 64)
    padded = upscale_video(clip, None, target=(100, 100), fit="pad")
    assert plan_geometry(64, 48, target=(100, 100), fit="pad").offset == (0, 12)
    assert padded[:, :12].abs().max() == 0 and padded[:, 87:].abs().max() == 0 and padded[:, 12:87].mean() > 0.3
    geo = plan_geometry(64, 48, target=(100, 100), fit="crop")
    assert geo.src_box == (8, 0, 56, 48) and geo.content == geo.canvas == (100, 100)


def test_resampling_matches_pillow():
    from PIL import Image

    img = np.random.default_rng(0).random((37, 53), dtype=np.float32)
    for method, pil in (("lanczos", Image.LANCZOS), ("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)):
        for h, w in ((100, 130), (20, 17)):  # up and antialiased down
            ref = np.asarray(Image.fromarray(img, mode="F").resize((w, h), pil))
            assert np.abs(resize(torch.from_numpy(img), (h, w), method).numpy() - ref).max() < 1e-5


def test_progress_reports_chunks_and_can_cancel():
    seen = []
    upscale_video(frames(5), None, frame_batch=2, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(2, 5), (4, 5), (5, 5)]

    class Cancelled(Exception):
        pass

    def cancel(done, total):
        raise Cancelled

    with pytest.raises(Cancelled):
        upscale_video(frames(5), compact_x4(), frame_batch=2, progress=cancel)


def test_model_goes_back_where_it_was():
    model = compact_x4()
    upscale_video(frames(1), model, device="cpu")
    assert model.device == torch.device("cpu") and model.dtype == torch.float32


# Runs in a fresh interpreter: peak RSS while upscaling N frames (auto tile/batch), minus the RSS before
# the call and the output tensor's own bytes = the working memory the call needed. glibc's mmap threshold
# is pinned at 64 KiB so freed buffers leave RSS (by default it rises to 32 MiB after the first large free
# and heap fragmentation then adds a few MiB of allocator retention that is not live memory).
_MEMORY_PROBE = r"""
import json, sys, torch
torch.set_num_threads(1)
from spandrel.architectures.Compact import Compact
from wan_core.upscale.pipeline import upscale_video
from wan_core.upscale.loader import upscale_model_from_state_dict

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

n = int(sys.argv[1])
torch.manual_seed(0)
model = upscale_model_from_state_dict(Compact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=4).state_dict())
clip = torch.rand(n, 96, 128, 3, generator=torch.Generator().manual_seed(0))
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS")
out = upscale_video(clip, model, stabilize=0.5, color_fix=True, device="cpu")
peak = status("VmHWM")
print(json.dumps({"before": before, "peak": peak, "output": out.numel() * out.element_size()}))
"""


def _working_memory(n: int) -> dict:
    result = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(n)], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300, env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                                 "MALLOC_MMAP_THRESHOLD_": "65536"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report["working"] = report["peak"] - report["before"] - report["output"]
    return report


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_working_memory_does_not_grow_with_clip_length():
    short, long = _working_memory(8), _working_memory(32)
    mib = {k: round(v["working"] / 2**20, 1) for k, v in (("8 frames", short), ("32 frames", long))}
    print(f"working memory (peak RSS - RSS before - output bytes), MiB: {mib}")
    assert long["output"] == 4 * short["output"]
    assert long["working"] <= 1.10 * short["working"], mib
