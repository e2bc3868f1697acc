"""Our umT5 output vs ComfyUI's own umT5 path (CLIPLoader type=wan + CLIPTextEncode internals) on the same tiny file.

ComfyUI runs in a subprocess (its modules never enter this interpreter); it loads a Comfy-layout tiny file with
its WanT5Model / WanT5Tokenizer at the tiny size and writes the CONDITIONING tensors it would produce.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from wan_core.text.t5 import T5Config
from wan_core.interop import comfy_context
from wan_core.text.encoder import load_text_encoder
from wan_core.testing.tiny import t5 as tiny

SMALL = T5Config(vocab=tiny.SPM_VOCAB, dim=64, dim_attn=32, dim_ffn=48, num_heads=4, num_layers=2)
# Clean prompts without ComfyUI's weight syntax "(...)": ComfyUI neither cleans nor truncates, we do both.
PROMPTS = ["A red sports car drives along a coastal road at sunset, waves crash on the rocks.",
           "一辆红色跑车在日落时沿着海岸公路行驶", "해질녘 해안 도로를 빨간 스포츠카가 달리고"]

_COMFY_SIDE = r"""
import json, sys
weights, out, prompts, cfg = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import torch
from safetensors.torch import load_file, save_file
import comfy.text_encoders.wan as wan
sd = load_file(weights)
model = wan.WanT5Model(device="cpu", dtype=torch.float32, model_options={"umt5xxl_model_config": cfg})
missing, unexpected = model.load_sd({k: v for k, v in sd.items() if k != "spiece_model"})
tok = wan.WanT5Tokenizer(tokenizer_data={"spiece_model": sd["spiece_model"]})
tensors, info = {}, {"missing": list(missing), "unexpected": list(unexpected), "ids": [], "pooled": []}
for i, p in enumerate(prompts):
    tokens = tok.tokenize_with_weights(p)
    cond, pooled = model.encode_token_weights(tokens)[:2]
    tensors[f"cond{i}"] = cond.contiguous()
    info["ids"].append([t for t, w in tokens["umt5xxl"][0]])
    info["pooled"].append(pooled is None)
save_file(tensors, out)
print(json.dumps(info))
"""


@pytest.fixture(scope="module")
def comfy_run(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
    from harness.comfy_server import find_comfyui

    comfy_dir = find_comfyui()  # set up by scripts/setup.sh; missing means a broken setup, not a skip
    d = tmp_path_factory.mktemp("comfy_t5")
    weights = tiny.write_comfy(d / "umt5_xxl_fp16.safetensors", SMALL, seed=3, dtype=torch.float32)
    cfg = {"d_ff": SMALL.dim_ffn, "d_kv": SMALL.head_dim, "d_model": SMALL.dim, "num_heads": SMALL.num_heads,
           "num_layers": SMALL.num_layers, "vocab_size": SMALL.vocab}
    out = d / "comfy_cond.safetensors"
    proc = subprocess.run([sys.executable, "-c", _COMFY_SIDE, str(weights), str(out), json.dumps(PROMPTS), json.dumps(cfg)],
                          cwd=comfy_dir, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return weights, load_file(str(out)), json.loads(proc.stdout.strip().splitlines()[-1])


def test_comfy_loads_every_key_of_our_comfy_layout(comfy_run):
    _, _, info = comfy_run
    assert info["missing"] == [] and info["unexpected"] == []


def test_same_ids_and_embeddings_as_comfyui(comfy_run):
    weights, conds, info = comfy_run
    enc = load_text_encoder(weights, dtype="fp32")
    res = enc.encode(PROMPTS)
    for i, p in enumerate(PROMPTS):
        ours_ids = enc.tokenizer.encode(p).ids
        comfy_ids = info["ids"][i]
        n = len(ours_ids)
        # ComfyUI: ids + </s> (1), then pad id 0 up to at least 512; pooled_output is None for umT5.
        assert comfy_ids[:n] == ours_ids and len(comfy_ids) == 512 and set(comfy_ids[n:]) == {0}
        assert info["pooled"][i] is True
        cond = conds[f"cond{i}"]
        assert cond.shape == (1, 512, SMALL.dim) and cond.dtype == torch.float32
        assert cond[0, n:].abs().max().item() == 0.0  # zero_out_masked: padded positions are exact zeros
        diff = (cond[0, :n] - res.embeddings[i]).abs().max().item()
        print(f"comfy vs ours, prompt {i}: {n} tokens, max-abs {diff:.2e}")
        assert diff <= 1e-5
        ctx = comfy_context(res.embeddings[i])
        assert ctx.shape == cond.shape and (ctx - cond).abs().max().item() <= 1e-5
