"""Run in a subprocess with an unpacked ComfyUI 0.8.0 on sys.path: quantise a tiny DiT the way ComfyUI writes
quantised checkpoints, and dequantise that file with ComfyUI's own code, as references for the engine tests.

    python comfy08_quant.py COMFY_ROOT SRC.safetensors OUT_DIR FORMAT...

writes OUT_DIR/<FORMAT>.safetensors (the quantised file) and OUT_DIR/<FORMAT>_dequant.safetensors (float32).

FORMAT nvfp4: ComfyUI 0.8.0's `comfy.ops.mixed_precision_ops` Linear writes the layer (its `state_dict`:
weight, weight_scale, weight_scale_2, comfy_quant) and reads it back (`_load_from_state_dict`, then the
weight's `dequantize()`), with 0.8.0's `comfy.quant_ops` layouts (from comfy-kitchen, as 0.8.0 requires).
FORMAT mxfp8 / int8_tensorwise / int8_convrot: 0.8.0 has no such layout, so the layer is written and read the
way newer ComfyUI does (comfy-kitchen's `QuantizedTensor.state_dict` + a `comfy_quant` config; the weight
rebuilt from the file's tensors and `dequantize()`d).
Only the block Linears are quantised (as in Comfy-Org's quantised Wan files); everything else stays float32.
"""

from __future__ import annotations

import json
import re
import sys

BLOCK_LINEAR = re.compile(r"^blocks\.\d+\.(self_attn\.[qkvo]|cross_attn\.[qkvo]|ffn\.[02])$")
CONVROT_GROUP = 16


def _config(fmt: str) -> dict:
    if fmt == "int8_convrot":
        return {"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": CONVROT_GROUP}
    return {"format": fmt}


def _config_tensor(torch, conf: dict):
    return torch.tensor(list(json.dumps(conf).encode("utf-8")), dtype=torch.uint8)


def _write_nvfp4(torch, ops, quant_ops, layer: str, w, bias) -> dict:
    """0.8.0's MixedPrecisionOps Linear holding the quantised weight writes its own state dict."""
    from comfy_kitchen.tensor import QuantizedTensor

    lin = ops.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    qdata, params = quant_ops.TensorCoreNVFP4Layout.quantize(w)
    lin.weight = torch.nn.Parameter(QuantizedTensor(qdata, "TensorCoreNVFP4Layout", params), requires_grad=False)
    if bias is not None:
        lin.bias = torch.nn.Parameter(bias, requires_grad=False)
    lin.quant_format = "nvfp4"
    out = {f"{layer}.{k}": v for k, v in lin.state_dict().items()}
    out[f"{layer}.weight"] = lin.weight._qdata  # the packed bytes, as released nvfp4 files store them
    return out


def _read_nvfp4(torch, ops, layer: str, sd: dict, out_features: int, in_features: int):
    lin = ops.Linear(in_features, out_features, bias=f"{layer}.bias" in sd)
    part = {k[len(layer) + 1:]: v for k, v in sd.items() if k.startswith(layer + ".")}
    lin.load_state_dict(part, strict=False)
    return lin.weight.dequantize()


def _layout_kwargs(fmt: str) -> tuple[str, dict]:
    if fmt == "mxfp8":
        return "TensorCoreMXFP8Layout", {}
    if fmt == "int8_tensorwise":
        return "TensorWiseINT8Layout", {}
    return "TensorWiseINT8Layout", {"per_channel": True, "convrot": True, "convrot_groupsize": CONVROT_GROUP}


def _write_newer(torch, fmt: str, layer: str, w, bias) -> dict:
    from comfy_kitchen.tensor import QuantizedTensor

    layout, kwargs = _layout_kwargs(fmt)
    qt = QuantizedTensor.from_float(w, layout, **kwargs)
    out = dict(qt.state_dict(f"{layer}.weight"))
    out[f"{layer}.comfy_quant"] = _config_tensor(torch, _config(fmt))
    if bias is not None:
        out[f"{layer}.bias"] = bias
    return out


def _read_newer(torch, fmt: str, layer: str, sd: dict, out_features: int, in_features: int):
    from comfy_kitchen.tensor import QuantizedTensor
    from comfy_kitchen.tensor.base import get_layout_class

    layout, kwargs = _layout_kwargs(fmt)
    scale = sd[f"{layer}.weight_scale"]
    if fmt == "mxfp8":
        scale = scale.view(torch.uint8).view(torch.float8_e8m0fnu)
    extra = {"convrot": True, "convrot_groupsize": CONVROT_GROUP} if kwargs.get("convrot") else {}
    params = get_layout_class(layout).Params(scale=scale, orig_dtype=torch.float32,
                                             orig_shape=(out_features, in_features), **extra)
    return QuantizedTensor(sd[f"{layer}.weight"], layout, params).dequantize()


def _one_format(torch, ops, quant_ops, sd: dict, layers: list[str], fmt: str, quant_out: str, dequant_out: str) -> None:
    from safetensors.torch import load_file, save_file

    quant = {k: v for k, v in sd.items() if k.rpartition(".")[0] not in layers}
    for layer in layers:
        w, bias = sd[f"{layer}.weight"], sd.get(f"{layer}.bias")
        quant.update(_write_nvfp4(torch, ops, quant_ops, layer, w, bias) if fmt == "nvfp4"
                     else _write_newer(torch, fmt, layer, w, bias))
    save_file({k: v.contiguous() for k, v in quant.items()}, quant_out)
    back = load_file(quant_out)  # the reference dequantises what is in the file, not what was in memory
    dequant = {k: v for k, v in back.items() if k in sd and (k.rpartition(".")[0] not in layers or k.endswith(".bias"))}
    for layer in layers:
        out_features, in_features = sd[f"{layer}.weight"].shape
        read = _read_nvfp4(torch, ops, layer, back, out_features, in_features) if fmt == "nvfp4" else \
            _read_newer(torch, fmt, layer, back, out_features, in_features)
        dequant[f"{layer}.weight"] = read.float().contiguous()
    save_file(dequant, dequant_out)


def main(root: str, src: str, out_dir: str, *formats: str) -> None:
    sys.path.insert(0, root)
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import torch
    import comfy.ops
    import comfy.quant_ops as quant_ops
    from safetensors.torch import load_file

    ops = comfy.ops.mixed_precision_ops({}, torch.float32)
    sd = load_file(src)
    layers = sorted({k[: -len(".weight")] for k in sd if k.endswith(".weight") and BLOCK_LINEAR.match(k[: -len(".weight")])})
    for fmt in formats:
        _one_format(torch, ops, quant_ops, sd, layers, fmt, f"{out_dir}/{fmt}.safetensors", f"{out_dir}/{fmt}_dequant.safetensors")
    print(json.dumps({"formats": list(formats), "layers": len(layers), "comfyui": __import__("comfyui_version").__version__}))


if __name__ == "__main__":
    main(*sys.argv[1:])
