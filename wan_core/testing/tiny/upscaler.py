"""A tiny random Real-ESRGAN x4 (RRDBNet) in the layout of the public `RealESRGAN_x4plus.pth`.

The released file is BasicSR's pickled `{"params_ema": state_dict}` with RRDBNet keys (`conv_first`,
`body.N.rdbM.convK`, `conv_body`, `conv_up1/2`, `conv_hr`, `conv_last`); this writes the same layout at
8 features and 1 block (~0.9 MB) so ComfyUI's core `UpscaleModelLoader` and ours read it like the real one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

PUBLIC_NAME = "RealESRGAN_x4plus.pth"
TINY_FEATURES, TINY_BLOCKS, SCALE = 8, 1, 4
# spandrel's (old ESRGAN) key -> BasicSR RRDBNet key, for scale 4 (upsampling convs at model.3 and model.6).
_OLD_TO_NEW = [
    (r"^model\.0\.", "conv_first."),
    (r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.", lambda m: f"body.{m[1]}.rdb{m[2]}.conv{m[3]}."),
    (rf"^model\.1\.sub\.{TINY_BLOCKS}\.", "conv_body."),
    (r"^model\.3\.", "conv_up1."),
    (r"^model\.6\.", "conv_up2."),
    (r"^model\.8\.", "conv_hr."),
    (r"^model\.10\.", "conv_last."),
]


def random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """BasicSR-layout RRDBNet x4 weights (PyTorch default init, deterministic in `seed`)."""
    from spandrel.architectures.ESRGAN import ESRGAN

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        old = ESRGAN(in_nc=3, out_nc=3, num_filters=TINY_FEATURES, num_blocks=TINY_BLOCKS, scale=SCALE).state_dict()
    new = {}
    for key, value in old.items():
        for pattern, repl in _OLD_TO_NEW:
            renamed, n = re.subn(pattern, repl, key)
            if n:
                new[renamed] = value.clone()
                break
        else:
            raise KeyError(f"no RRDBNet name for spandrel key {key}")
    return new


def write_comfy_file(path: str | os.PathLike, role: str = "upscaler", fp8: bool = False, seed: int = 0) -> Path:
    """Write a tiny `RealESRGAN_x4plus.pth` (`{"params_ema": ...}`) at `path` (the demo's writer signature)."""
    if fp8:
        raise ValueError("upscale models are not shipped in fp8")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": random_state_dict(seed)}, p)
    return p
