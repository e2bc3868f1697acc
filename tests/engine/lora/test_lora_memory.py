"""Merging a LoRA keeps one copy of the expert: peak RSS of a fresh process over load + merge, against the expert."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wan_core.dit.model import DiTConfig
from wan_core.testing.tiny import dit as tiny_dit
from wan_core.testing.tiny import lora as tiny_lora

REPO = Path(__file__).resolve().parents[3]
# 78M parameters, 313 MB in fp32: a second copy (what keeping originals or merging out of place costs) would be
# +100%, one layer's float32 delta (the largest, 4096 x 1024) is 5%.
BIG = DiTConfig(dim=1024, ffn_dim=4096, num_heads=8, num_layers=4)

# A warm-up load + merge of the tiny expert pages in the code first; then the baseline, the big load + merge, and
# the kernel's high-water mark (VmHWM) of this process (see tests/engine/dit/test_dit_memory.py).
PROBE = """
import gc, json, re, sys
from wan_core.dit.loader import load_dit
from wan_core.lora import apply_stack
def kib(field):
    return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
expert, lora, tiny, tiny_lora = sys.argv[1:5]
warm = load_dit(tiny)
apply_stack(warm, [(tiny_lora, 1.0)], base_path=tiny)
del warm
gc.collect()
base = kib("VmRSS")
model = load_dit(expert)
loaded = kib("VmHWM")
apply_stack(model, [(lora, 1.0)], base_path=expert)
peak = kib("VmHWM")
state = model.lora_state
tensors = list(model.parameters()) + list(model.buffers())
print(json.dumps({"base": base, "loaded": loaded, "peak": peak, "merged": len(state.merged),
                  "bytes": sum(t.numel() * t.element_size() for t in tensors)}))
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("lora_memory")
    modules = tiny_lora.ATTENTION + ("ffn.0", "ffn.2")
    out = {"expert": tiny_dit.write_single_file(folder / "big.safetensors", tiny_dit.random_state_dict(BIG, seed=0)),
           "lora": tiny_lora.write_lora(folder / "big_lora.safetensors",
                                        tiny_lora.random_lora(BIG, rank=16, seed=1, modules=modules)),
           "tiny": tiny_dit.write_single_file(folder / "tiny.safetensors", tiny_dit.random_state_dict(seed=0))}
    out["tiny_lora"] = tiny_lora.write_lora(folder / "tiny_lora.safetensors", tiny_lora.random_lora(seed=1))
    return out


def test_peak_rss_while_merging_stays_within_the_expert_plus_10_percent(files):
    result = subprocess.run([sys.executable, "-c", PROBE, *(str(files[k]) for k in ("expert", "lora", "tiny", "tiny_lora"))],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    f = json.loads(result.stdout.strip().splitlines()[-1])
    ratio = (f["peak"] - f["base"]) / f["bytes"]
    print(f"expert {f['bytes'] / 1e6:.0f} MB, {f['merged']} tensors merged: peak RSS increment over load + merge "
          f"{(f['peak'] - f['base']) / 1e6:.0f} MB (load alone {(f['loaded'] - f['base']) / 1e6:.0f} MB), ratio {ratio:.3f}")
    assert f["merged"] == 4 * 10 + 4 * 4 and f["bytes"] > 300e6
    assert ratio <= 1.10
