"""ComfyUI's nvfp4 / mxfp8 / int8 tensorwise files: written by ComfyUI's code, loaded packed, equal to ComfyUI's
own dequantisation on a DiT forward. nvfp4 is ComfyUI 0.8.0's (run from the 0.8.0 release source); mxfp8 and int8
are not in 0.8.0, so those files are written and dequantised the way newer ComfyUI does it (comfy-kitchen's
layouts, which newer ComfyUI's ops load them with)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from comfy08_testing import quantise, unpack
from wan_core.dit.loader import inspect_dit, load_dit
from wan_core.dit.model import WanDiT
from wan_core.io.checkpoint import CheckpointError
from wan_core.io.quant.comfy_formats import ComfyQuantLinear
from wan_core.testing.tiny.dit import TINY_DIT_CONFIG as CONFIG, random_state_dict, write_single_file

FORMATS = ["nvfp4", "mxfp8", "int8_tensorwise", "int8_convrot"]
STORED = {"nvfp4": torch.uint8, "mxfp8": torch.float8_e4m3fn, "int8_tensorwise": torch.int8, "int8_convrot": torch.int8}


@pytest.fixture(scope="session")
def comfy080(tmp_path_factory) -> Path:
    return unpack(tmp_path_factory.mktemp("comfyui-0.8.0"))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return write_single_file(tmp_path_factory.mktemp("src") / "fp32.safetensors", random_state_dict(CONFIG, seed=17))


@pytest.fixture(scope="module")
def comfy_files(comfy080, source, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """format -> (the file ComfyUI wrote, ComfyUI's dequantisation of it as float32 weights)."""
    folder = tmp_path_factory.mktemp("comfy_quant")
    report = quantise(comfy080, source, folder, FORMATS)
    assert report == {"formats": FORMATS, "layers": 20, "comfyui": "0.8.0"}
    return {fmt: (folder / f"{fmt}.safetensors", folder / f"{fmt}_dequant.safetensors") for fmt in FORMATS}


@pytest.fixture(scope="module")
def probe():
    gen = torch.Generator().manual_seed(8)
    return (torch.randn(1, 16, 2, 6, 4, generator=gen), torch.tensor([600.0]),
            [torch.randn(11, CONFIG.text_dim, generator=gen)])


def forward(model: WanDiT, probe) -> torch.Tensor:
    with torch.no_grad():
        return model(*probe)


def twin(weights_file: Path) -> WanDiT:
    model = WanDiT(CONFIG)
    model.load_state_dict(load_file(weights_file), strict=True)
    return model.eval()


@pytest.mark.parametrize("fmt", FORMATS)
def test_comfy_quant_file_matches_comfyuis_dequantisation_on_a_dit_forward(fmt, comfy_files, probe):
    quant, dequant = comfy_files[fmt]
    model = load_dit(quant)
    packed = {n: m for n, m in model.named_modules() if isinstance(m, ComfyQuantLinear)}
    assert len(packed) == 20 and all(m.weight.dtype == STORED[fmt] for m in packed.values())
    reference = load_file(dequant)
    for name, module in packed.items():  # each layer's weight equals ComfyUI's dequantisation bit for bit
        assert torch.equal(module.dequantized_weight(torch.float32), reference[name + ".weight"])
    # Identical float32 weights through the same ops: measured identical; 1e-5 is the bound.
    assert (forward(model, probe) - forward(twin(dequant), probe)).abs().max().item() <= 1e-5
    assert inspect_dit(quant).quant == ("int8_tensorwise" if fmt == "int8_convrot" else fmt)


def test_nvfp4_layers_listed_in_the_header_metadata_load_the_same(comfy_files, probe, tmp_path):
    # The other way ComfyUI names quantised layers: `_quantization_metadata` in the header, keys with a prefix.
    quant, dequant = comfy_files["nvfp4"]
    sd = load_file(quant)
    layers = {k[: -len(".comfy_quant")]: json.loads(bytes(v.tolist())) for k, v in sd.items() if k.endswith(".comfy_quant")}
    prefix = "model.diffusion_model."
    meta = {"format_version": "1.0", "layers": {prefix + name: conf for name, conf in layers.items()}}
    path = tmp_path / "nvfp4_header.safetensors"
    save_file({prefix + k: v for k, v in sd.items() if not k.endswith(".comfy_quant")}, str(path),
              metadata={"_quantization_metadata": json.dumps(meta)})
    assert (forward(load_dit(path), probe) - forward(twin(dequant), probe)).abs().max().item() <= 1e-5


def test_packed_memory_is_what_the_file_stores(comfy_files):
    quant, _ = comfy_files["nvfp4"]
    model = load_dit(quant)
    layer = model.blocks[0].ffn[0]
    with safe_open(str(quant), "pt") as f:
        stored = f.get_tensor("blocks.0.ffn.0.weight")
    assert torch.equal(layer.weight, stored) and layer.weight_scale.shape == (512, 256 // 16)
    # 4.5 bits a weight (fp4 + one e4m3 scale per 16) for the block Linears, float32 elsewhere.
    dense = sum(p.numel() for p in layer.parameters() if p.dtype == torch.uint8) * 2
    assert dense == 512 * 256


def test_other_weight_dtypes_dequantise_comfy_formats_at_load(comfy_files):
    quant, dequant = comfy_files["mxfp8"]
    model = load_dit(quant, weight_dtype="bf16")
    assert not any(isinstance(m, ComfyQuantLinear) for m in model.modules())
    assert torch.equal(model.blocks[1].cross_attn.k.weight, load_file(dequant)["blocks.1.cross_attn.k.weight"].to(torch.bfloat16))


def _with_layer_config(source: Path, tmp_path: Path, conf: dict, extra: dict | None = None) -> Path:
    sd = load_file(source)
    sd["blocks.0.ffn.0.comfy_quant"] = torch.tensor(list(json.dumps(conf).encode()), dtype=torch.uint8)
    sd.update(extra or {})
    path = tmp_path / "other.safetensors"
    save_file(sd, str(path))
    return path


def test_a_comfy_format_we_cannot_read_is_named_not_called_another_model(source, tmp_path):
    path = _with_layer_config(source, tmp_path, {"format": "convrot_w4a4"},
                              {"blocks.0.ffn.0.weight_scale": torch.ones(512)})
    with pytest.raises(CheckpointError) as err:
        load_dit(path)
    message = str(err.value)
    assert "ComfyUI's quantisation format 'convrot_w4a4' (e.g. layer 'blocks.0.ffn.0')" in message
    assert "nvfp4, mxfp8, int8_tensorwise and GGUF" in message and "variant" not in message


def test_other_tools_quantisation_is_named(source, tmp_path):
    sd = load_file(source)
    sd["blocks.0.ffn.0.weight.absmax"] = torch.ones(4)
    sd["blocks.0.ffn.0.weight.quant_state.bitsandbytes__nf4"] = torch.zeros(8, dtype=torch.uint8)
    path = tmp_path / "bnb.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match=r"quantised with bitsandbytes NF4 \(4-bit\).*cannot read"):
        inspect_dit(path)


def test_nvfp4_with_activation_smoothing_is_refused_by_name(comfy_files, tmp_path):
    sd = load_file(comfy_files["nvfp4"][0])
    sd["blocks.0.ffn.0.pre_quant_scale"] = torch.ones(256)
    path = tmp_path / "awq.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match=r"'blocks\.0\.ffn\.0' is nvfp4 with a pre_quant_scale"):
        load_dit(path)


def test_integer_weights_without_a_config_are_called_an_unknown_quantisation(comfy_files, tmp_path):
    sd = {k: v for k, v in load_file(comfy_files["int8_tensorwise"][0]).items() if not k.endswith(".comfy_quant")}
    path = tmp_path / "unlabelled.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError) as err:
        load_dit(path)
    assert "layer 'blocks.0.cross_attn.k' stores its weight as int8 [256, 256] with bias, weight_scale but the file " \
           "has no quantisation config" in str(err.value) and "variant" not in str(err.value)
