"""Interop (a): WanMoETextEncode's CONDITIONING vs the one core CLIPLoader(type=wan) + CLIPTextEncode produce.

Route (the most honest one that exists): core CLIPLoader only recognises the full 24-layer umT5 (sd.t5xxl_detect
looks for block 23), so it cannot load a tiny file. A subprocess with ComfyUI's folder on sys.path therefore
  * core side: builds the text encoder exactly as comfy.sd.load_text_encoder_state_dicts does for CLIPType.WAN
    (comfy.text_encoders.wan.te(**t5_xxl_detect(sd)) + WanT5Tokenizer with the file's spiece_model, comfy.sd.CLIP,
    clip.load_sd), with only the tiny size added through model_options["umt5xxl_model_config"], and calls core
    nodes.CLIPTextEncode().encode (tokenize + encode_from_tokens_scheduled);
  * our side: loads this pack the way ComfyUI does (nodes.load_custom_node on the pack folder, so the node module
    imports comfy_api as in the server) and runs WanMoETextEncoderLoader and WanMoETextEncode through ComfyUI's
    own executor helper (execution.get_output_data), which is what the server calls for every node.
There is no core node that saves a CONDITIONING, so a server prompt could not hand the tensors back; the real
server path of our CONDITIONING into core conditioning nodes is covered by tests/comfy/test_interop_server.py.

The tiny file is stored in fp32: ComfyUI computes umT5 in the file's stored dtype (t5_xxl_detect), our loader's
"auto" keeps it too, so both sides compute in fp32 and 1e-5 is an fp32 round-off bound (measured: 0.0).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from wan_core.testing.tiny import t5 as tiny

REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "ComfyUI-WanMoE"
TE_FILE = "interop_umt5_tiny_fp32.safetensors"
CLEAN = ["A red sports car drives along a coastal road at sunset, waves crash on the rocks.",
         "一辆红色跑车在日落时沿着海岸公路行驶", "해질녘 해안 도로를 빨간 스포츠카가 달리고"]
WEIGHTED = "A (red:1.5) sports car drives along a coastal road."  # core parses (text:weight); we keep the text
HTML = "A cat &amp; a dog   walk  in the garden."  # we unescape HTML and squeeze whitespace (official clean); core does not
LONG = " ".join(tiny.CORPUS[:10] * 4)  # well over 512 umT5 tokens
PROMPTS = [*CLEAN, WEIGHTED, HTML, LONG]

_COMFY_SIDE = r"""
import asyncio, json, os, sys
pack, te_dir, te_name, out, prompts, cfg = sys.argv[1:5] + [json.loads(sys.argv[5]), json.loads(sys.argv[6])]
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
from safetensors.torch import save_file
import folder_paths
folder_paths.add_model_folder_path("text_encoders", te_dir, is_default=True)
import comfy.sd, comfy.utils, comfy.text_encoders.wan as wan
from comfy.text_encoders.sd3_clip import t5_xxl_detect
import nodes, execution

# core: comfy.sd.load_text_encoder_state_dicts, branch TEModel.T5_XXL + CLIPType.WAN, plus the tiny size
sd = comfy.utils.load_torch_file(os.path.join(te_dir, te_name), safe_load=True)
class Target: pass
target = Target(); target.params = {}
target.clip, target.tokenizer = wan.te(**t5_xxl_detect(sd)), wan.WanT5Tokenizer
clip = comfy.sd.CLIP(target, parameters=comfy.utils.calculate_parameters(sd),
                     tokenizer_data={"spiece_model": sd.get("spiece_model")}, model_options={"umt5xxl_model_config": cfg})
missing, unexpected = clip.load_sd(sd)
core = [nodes.CLIPTextEncode().encode(clip, p)[0] for p in prompts]

# ours: the pack as ComfyUI loads it, nodes run through ComfyUI's executor helper
loaded = asyncio.run(nodes.load_custom_node(pack))
async def run(node, **inputs):
    res, _, _, _ = await execution.get_output_data("interop", "1", nodes.NODE_CLASS_MAPPINGS[node], {k: [v] for k, v in inputs.items()})
    return [r[0] for r in res]
(enc,) = asyncio.run(run("WanMoETextEncoderLoader", text_encoder=te_name, device="cpu", dtype="auto"))
ours = []
for p in prompts:
    pos, neg = asyncio.run(run("WanMoETextEncode", text_encoder=enc, positive=p, negative=p))
    ours.append(pos)

tensors, info = {}, {"loaded": loaded, "missing": list(missing), "unexpected": list(unexpected), "layout": {}}
for side, conds in (("core", core), ("ours", ours)):
    info["layout"][side] = [{"container": [type(c).__name__, len(c), type(c[0]).__name__, len(c[0])],
                             "extra": {k: repr(v) for k, v in c[0][1].items()}} for c in conds]
    for i, c in enumerate(conds):
        tensors[f"{side}{i}"] = c[0][0].contiguous()
save_file(tensors, out)
print("INFO " + json.dumps(info))
"""


@pytest.fixture(scope="module")
def conds(tmp_path_factory):
    """{"core": [tensor], "ours": [tensor], "info": {...}} for PROMPTS, computed once in a ComfyUI subprocess."""
    from harness.comfy_server import find_comfyui

    comfy_dir = find_comfyui()  # set up by scripts/setup.sh; missing means a broken setup, not a skip
    d = tmp_path_factory.mktemp("interop_te")
    (d / "te").mkdir()
    tiny.write_comfy(d / "te" / TE_FILE, tiny.TINY_T5, seed=11, dtype=torch.float32)
    (d / "custom_nodes").mkdir()
    pack = d / "custom_nodes" / PACK_NAME
    pack.symlink_to(REPO, target_is_directory=True)
    c = tiny.TINY_T5
    cfg = {"d_ff": c.dim_ffn, "d_kv": c.head_dim, "d_model": c.dim, "num_heads": c.num_heads,
           "num_layers": c.num_layers, "vocab_size": c.vocab}
    out = d / "conds.safetensors"
    proc = subprocess.run([sys.executable, "-c", _COMFY_SIDE, str(pack), str(d / "te"), TE_FILE, str(out),
                           json.dumps(PROMPTS), json.dumps(cfg)], cwd=comfy_dir, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(comfy_dir)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("INFO "))[5:])
    t = load_file(str(out))
    n = len(PROMPTS)
    return {"core": [t[f"core{i}"] for i in range(n)], "ours": [t[f"ours{i}"] for i in range(n)], "info": info}


def _tokens(cond: torch.Tensor) -> int:
    """Non-padding positions: ComfyUI zeroes the padding (zero_out_masked); so does comfy_context."""
    rows = cond[0].abs().amax(dim=-1) != 0
    n = int(rows.sum())
    assert rows[:n].all() and not rows[n:].any(), "padding must be one zero block after the tokens"
    return n


def test_pack_and_core_encoder_load_the_tiny_file(conds):
    info = conds["info"]
    assert info["loaded"] is True
    assert info["missing"] == [] and info["unexpected"] in ([], ["spiece_model"])  # the tokenizer rides in the file


def test_same_conditioning_layout_as_clip_text_encode(conds):
    layout = conds["info"]["layout"]
    for core, ours in zip(layout["core"], layout["ours"]):
        # [[cond, {"pooled_output": None}]]: one entry, a [tensor, dict] pair, no other keys
        assert ours == core == {"container": ["list", 1, "list", 2], "extra": {"pooled_output": "None"}}
    for i in range(len(CLEAN)):
        core, ours = conds["core"][i], conds["ours"][i]
        assert ours.shape == core.shape == (1, 512, tiny.TINY_T5.dim) and ours.dtype == core.dtype == torch.float32
        assert _tokens(ours) == _tokens(core)  # same token count (ids + </s>), zeros from there to 512


def test_same_values_as_clip_text_encode_within_1e_5(conds):
    for i, prompt in enumerate(CLEAN):
        diff = (conds["ours"][i] - conds["core"][i]).abs().max().item()
        print(f"prompt {i} ({prompt[:20]}...): max |ours - core| = {diff:.2e}")
        assert diff <= 1e-5  # both fp32 from the same fp32 weights


def test_core_parses_weight_syntax_we_keep_it_as_text(conds):
    i = PROMPTS.index(WEIGHTED)
    core, ours = conds["core"][i], conds["ours"][i]
    # core strips "(", ":1.5)" and scales that token's embedding; we encode the characters, as the official code does
    assert _tokens(core) < _tokens(ours)
    print(f"weighted prompt: {_tokens(core)} core tokens vs {_tokens(ours)} ours")


def test_core_does_not_apply_the_official_cleaning(conds):
    i = PROMPTS.index(HTML)
    core, ours = conds["core"][i], conds["ours"][i]
    assert _tokens(core) > _tokens(ours)  # "&amp;" stays 5 characters in core; we unescape it to "&"
    print(f"html prompt: {_tokens(core)} core tokens vs {_tokens(ours)} ours")


def test_core_does_not_truncate_long_prompts_we_cut_at_512(conds):
    i = PROMPTS.index(LONG)
    core, ours = conds["core"][i], conds["ours"][i]
    assert core.shape[1] > 512 and _tokens(core) == core.shape[1]  # no padding: every position is a token
    assert ours.shape[1] == 512 and _tokens(ours) == 512
    print(f"long prompt: core {tuple(core.shape)}, ours {tuple(ours.shape)}")
