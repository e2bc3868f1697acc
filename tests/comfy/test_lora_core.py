"""LoRA parity with ComfyUI core: the same tiny expert and LoRA through core UNETLoader + LoraLoaderModelOnly, and
through our request path (api.add_loras, what WanMoELoraLoader calls, then the expert as the sampler loads it).

A ComfyUI subprocess (the harness's ComfyUI 0.3.75, --cpu --fp32-unet) loads the tiny fp32 expert with core
UNETLoader, applies each LoRA with core LoraLoaderModelOnly, patches the weights (ModelPatcher.patch_model, what
load_models_gpu does) and runs the model's diffusion_model forward on one input at an integer timestep. fp32 on
both sides, and core's time sinusoid computed in float64 as the official code and ours do (core's float32 sinusoid
alone moves the output by 1.1e-5 at t = 937; patched in the subprocess as tests/engine/dit/test_dit_parity.py does
for diffusers): then 1e-5 bounds two implementations of one forward and one merge.
Core maps the `diffusion_model.` prefix and kohya `lora_unet_` names (with .diff / .diff_b / alpha); it loads
none of the unprefixed or PEFT/diffusers keys, so for those the reference is the merge by definition and this
file checks that core indeed returns the base output for them. Core also drops `.diff` patches of the blocks'
`modulation` tables without a word (ModelPatcher.load skips parameters of non-leaf modules, and a block owns its
modulation next to its sub-modules): the parity content leaves them out, and a test shows core ignoring them
where ours applies them as defined.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from cache_testing import one_thread  # noqa: F401  (autouse: one thread for tiny models)
from wan_core import api
from wan_core.dit.model import WanDiT
from wan_core.sampling.placement import dit_expert_spec
from wan_core.testing.tiny import dit as tiny_dit
from wan_core.testing.tiny import lora as tiny_lora

pytestmark = pytest.mark.comfy
CONFIG = tiny_dit.TINY_DIT_CONFIG
EXPERT = "lora_core_expert_fp32.safetensors"
STRENGTHS = (1.0, 0.5, -1.0)
CORE_LAYOUTS = ("diffusion_model", "kohya")  # what core 0.3.75 maps for Wan
IGNORED_BY_CORE = ("official", "peft")

_CORE_SIDE = r"""
import json, os, sys
expert, loras, strengths, inputs, out = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4], sys.argv[5]
sys.argv = [sys.argv[0], "--cpu", "--fp32-unet"]
import comfy.options
comfy.options.enable_args_parsing()
import torch
torch.set_num_threads(1)  # tiny model, shared machine
from safetensors.torch import load_file, save_file
import folder_paths
folder_paths.add_model_folder_path("diffusion_models", os.path.dirname(expert), is_default=True)
folder_paths.add_model_folder_path("loras", os.path.dirname(next(iter(loras.values()))), is_default=True)
import nodes
import comfy.ldm.wan.model as wan_model
def sinusoid_float64(dim, position):  # core's sinusoidal_embedding_1d in float64, as the official code (and ours)
    half = dim // 2
    position = position.type(torch.float64)
    sinusoid = torch.outer(position, torch.pow(10000, -torch.arange(half).to(position).div(half)))
    return torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1)
wan_model.sinusoidal_embedding_1d = sinusoid_float64
x = load_file(inputs)
(model,) = nodes.UNETLoader().load_unet(os.path.basename(expert), "default")
def run(patcher):
    patcher.patch_model()
    try:
        with torch.no_grad():
            return patcher.model.diffusion_model(x["x"], x["t"], x["context"]).float().contiguous()
    finally:
        patcher.unpatch_model()
results = {"base": run(model)}
info = {"dtype": str(model.model.diffusion_model.patch_embedding.weight.dtype)}
for layout, path in loras.items():
    for s in strengths:
        (patched,) = nodes.LoraLoaderModelOnly().load_lora_model_only(model, os.path.basename(path), s)
        results[f"{layout}_{s}"] = run(patched)
save_file(results, out)
print("INFO " + json.dumps(info))
"""


def dit_input() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    context = torch.zeros(1, CONFIG.text_len, CONFIG.text_dim)
    context[0, :7] = torch.randn(7, CONFIG.text_dim, generator=gen)  # zero-padded to 512, as both pipelines feed it
    return {"x": torch.randn(1, 16, 2, 4, 6, generator=gen), "t": torch.tensor([937.0]), "context": context}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from harness.comfy_server import find_comfyui

    folder = tmp_path_factory.mktemp("lora_core")
    sd = tiny_dit.random_state_dict(CONFIG, seed=21)
    expert = tiny_dit.write_single_file(folder / "experts" / EXPERT, sd)
    content = tiny_lora.random_lora(CONFIG, rank=4, alpha=2.0, seed=22)
    no_modulation = tiny_lora.TinyLora(content.pairs, {k: v for k, v in content.diffs.items() if "modulation" not in k})
    modulation = tiny_lora.TinyLora({}, {k: v for k, v in content.diffs.items() if "modulation" in k})
    contents = {"diffusion_model": no_modulation, "kohya": no_modulation, "official": content, "peft": content,
                "modulation": modulation}
    loras = {name: tiny_lora.write_lora(folder / "loras" / f"lora_core_{name}.safetensors", contents[name],
                                        "diffusion_model" if name == "modulation" else name) for name in contents}
    save_file(dit_input(), str(folder / "inputs.safetensors"))
    out = folder / "core.safetensors"
    proc = subprocess.run([sys.executable, "-c", _CORE_SIDE, str(expert), json.dumps({k: str(v) for k, v in loras.items()}),
                           json.dumps(STRENGTHS), str(folder / "inputs.safetensors"), str(out)], cwd=find_comfyui(),
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(find_comfyui())})
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("INFO "))[5:])
    return {"sd": sd, "expert": expert, "contents": contents, "loras": loras, "core": load_file(str(out)),
            "info": info, "log": proc.stderr}


@torch.no_grad()
def ours(setup, layout: str, strength: float) -> torch.Tensor:
    """Our DiT forward after WanMoELoraLoader's request path: api.add_loras, then the expert as the sampler loads it."""
    expert = str(setup["expert"])
    request = api.ModelRequest(expert, expert, "auto", "auto", "sdpa", 0.875)
    request = api.add_loras(request, high=api.LoraRequest(str(setup["loras"][layout]), strength))
    spec = dit_expert_spec(expert, device="cpu", loras=[(l.path, l.strength) for l in request.loras_high])
    x = dit_input()
    return spec.load(torch.device("cpu"))(x["x"], x["t"], [x["context"][0, :7]])


@torch.no_grad()
def by_definition(setup, layout: str, strength: float) -> torch.Tensor:
    model = WanDiT(CONFIG)
    model.load_state_dict(tiny_lora.merged_state_dict(setup["sd"], setup["contents"][layout], strength))
    x = dit_input()
    return model.eval()(x["x"], x["t"], [x["context"][0, :7]])


def test_core_runs_the_expert_in_fp32_and_its_base_equals_ours(setup):
    assert setup["info"]["dtype"] == "torch.float32"
    assert (ours(setup, "diffusion_model", 0.0) - setup["core"]["base"]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("layout", CORE_LAYOUTS)
@pytest.mark.parametrize("strength", STRENGTHS)
def test_core_mapped_layouts_equal_core_lora_loader_within_1e_5(setup, layout, strength):
    core = setup["core"][f"{layout}_{strength}"]
    assert (core - setup["core"]["base"]).abs().max().item() > 1e-2  # core did apply it
    assert (ours(setup, layout, strength) - core).abs().max().item() <= 1e-5


@pytest.mark.parametrize("layout", IGNORED_BY_CORE)
def test_layouts_core_ignores_give_the_definition_and_core_gives_the_base(setup, layout):
    assert torch.equal(setup["core"][f"{layout}_1.0"], setup["core"]["base"])
    assert "lora key not loaded" in setup["log"]
    for strength in STRENGTHS:
        assert (ours(setup, layout, strength) - by_definition(setup, layout, strength)).abs().max().item() <= 1e-5


def test_core_silently_drops_modulation_diffs_which_ours_applies_as_defined(setup):
    assert torch.equal(setup["core"]["modulation_1.0"], setup["core"]["base"])
    ours_out = ours(setup, "modulation", 1.0)
    assert (ours_out - by_definition(setup, "modulation", 1.0)).abs().max().item() <= 1e-5
    assert (ours_out - setup["core"]["base"]).abs().max().item() > 1e-2
