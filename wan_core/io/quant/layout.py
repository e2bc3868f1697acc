"""Which layers of a checkpoint are stored in which quantised format, and where their extra tensors are.

Sources, in ComfyUI's order (comfy/utils.py `convert_old_quants`, comfy/ops.py `MixedPrecisionOps`): a
`_quantization_metadata` header entry `{"layers": {name: {"format": ...}}}` (a bare format string also
occurs), per-layer `<layer>.comfy_quant` uint8 JSON tensors, and for older files the fp8 dtype itself
(see `fp8.describe_fp8`). GGUF files name each tensor's GGML type in its header (`TensorInfo.packing`).
Formats this package cannot compute, and other tools' quantisation schemes recognised by their tensor
names, raise a CheckpointError that names the format found.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..checkpoint import Checkpoint, CheckpointError
from ..safe import JSON_LIMIT, json_object, parse_json, shown
from .comfy_formats import FORMATS as COMFY_PACKED
from .fp8 import Fp8Layout, describe_fp8

FP8_FORMATS = ("float8_e4m3fn", "float8_e5m2")
READABLE = FP8_FORMATS + COMFY_PACKED

# Other quantisation schemes, told apart by the tensors they add to each layer.
_FOREIGN = (
    (".quant_state.bitsandbytes__nf4", "bitsandbytes NF4 (4-bit)"),
    (".quant_state.bitsandbytes__fp4", "bitsandbytes FP4 (4-bit)"),
    (".SCB", "bitsandbytes LLM.int8"),
    (".qweight", "GPTQ/AWQ packed int4"),
    (".weight_scale_inv", "block-wise fp8 (128x128 weight_scale_inv, DeepSeek/transformers FP8 layout)"),
    (".weight._data", "optimum-quanto"),
)


@dataclass(frozen=True)
class PackedLayer:
    """One Linear stored packed: its format and the checkpoint keys of its scales (role -> key)."""

    format: str
    scales: dict[str, str] = field(default_factory=dict)
    convrot_groupsize: int = 0


@dataclass
class QuantLayout:
    """Every quantised layer of a checkpoint: fp8 (per-tensor scale) and packed (GGML, nvfp4, mxfp8, int8)."""

    fp8: Fp8Layout | None
    packed: dict[str, PackedLayer]
    marker_keys: set[str] = field(default_factory=set)

    def bookkeeping_keys(self) -> set[str]:
        """Keys that are not model parameters (scales, markers, configs): loaders read them with their layer."""
        keys = set(self.marker_keys) | (self.fp8.bookkeeping_keys() if self.fp8 else set())
        return keys | {k for layer in self.packed.values() for k in layer.scales.values()}

    def summary(self) -> str | None:
        """What the file's quantisation is called: 'scaled_fp8', 'nvfp4', 'GGUF Q4_K+Q6_K', ... or None."""
        names = sorted({layer.format for layer in self.packed.values()})
        gguf = [n for n in names if n not in COMFY_PACKED]
        parts = ([f"GGUF {'+'.join(gguf)}"] if gguf else []) + [n for n in names if n in COMFY_PACKED]
        if self.fp8:
            parts.append(self.fp8.format)
        return ", ".join(parts) or None


def layer_configs(ckpt: Checkpoint) -> dict[str, dict]:
    """Layer name (relative to the checkpoint) -> ComfyUI quantisation config, from header and `.comfy_quant` tensors."""
    configs: dict[str, dict] = {}
    raw = ckpt.metadata.get("_quantization_metadata")
    if raw:
        what = "_quantization_metadata header entry"
        layers = json_object(parse_json(raw.encode(), ckpt.path, what), ckpt.path, what).get("layers", {})
        for name, conf in json_object(layers, ckpt.path, what + "'s layers").items():
            name = name[len(ckpt.prefix):] if ckpt.prefix and name.startswith(ckpt.prefix) else name
            configs[name] = conf if isinstance(conf, dict) else {"format": str(conf)}
    for key in ckpt.keys():
        if key.endswith(".comfy_quant"):
            what = f"layer quantisation config {shown(key)}"
            data = ckpt.get(key)
            if data.dtype != torch.uint8 or data.numel() > JSON_LIMIT:
                raise CheckpointError(f"{ckpt.path}: the {what} is a {list(data.shape)} {data.dtype} tensor; expected "
                                      "JSON text as uint8 bytes. The file is damaged; download it again.")
            configs[key[: -len(".comfy_quant")]] = json_object(parse_json(data.numpy().tobytes(), ckpt.path, what),
                                                               ckpt.path, what)
    return configs


def _foreign(ckpt: Checkpoint) -> None:
    for suffix, name in _FOREIGN:
        hit = next((k for k in ckpt.keys() if suffix in k), None)
        if hit:
            raise CheckpointError(
                f"{ckpt.path}: this file is quantised with {name} (e.g. tensor {shown(hit)}), a format this pack cannot "
                f"read. It reads ComfyUI's {', '.join(READABLE)} files and GGUF files; use one of those.")


def _unknown_format(ckpt: Checkpoint, configs: dict[str, dict]) -> None:
    bad = {}
    for layer, conf in configs.items():
        fmt = conf.get("format")
        if fmt not in READABLE:
            bad.setdefault(str(fmt), layer)
    if bad:
        found = ", ".join(f"{shown(fmt)} (e.g. layer {shown(layer)})" for fmt, layer in sorted(bad.items()))
        raise CheckpointError(
            f"{ckpt.path}: this file stores layers in ComfyUI's quantisation format {found}, which this pack cannot "
            f"read. It reads {', '.join(READABLE)} and GGUF files; use one of those quantisations of the model.")


def _packed_layer(ckpt: Checkpoint, layer: str, conf: dict) -> PackedLayer:
    fmt = conf["format"]
    roles = ("weight_scale", "weight_scale_2") if fmt == "nvfp4" else ("weight_scale",)
    scales = {role: f"{layer}.{role}" for role in roles if f"{layer}.{role}" in ckpt.infos}
    missing = [role for role in roles if role not in scales]
    if missing:
        raise CheckpointError(f"{ckpt.path}: layer {shown(layer)} is {fmt} but its {', '.join(missing)} tensor is missing; "
                              "the file is incomplete. Download it again.")
    if f"{layer}.pre_quant_scale" in ckpt.infos:
        raise CheckpointError(f"{ckpt.path}: layer {shown(layer)} is {fmt} with a pre_quant_scale (activation smoothing, "
                              f"AWQ-style {fmt}), which this pack cannot compute. Use a plain {fmt} or fp8 file.")
    if f"{layer}.input_scale" in ckpt.infos:
        scales["input_scale"] = f"{layer}.input_scale"  # for quantised activations only: not needed here
    params = conf.get("params") if isinstance(conf.get("params"), dict) else {}
    convrot = bool(conf.get("convrot", params.get("convrot", False)))
    group = conf.get("convrot_groupsize", params.get("convrot_groupsize", 256)) if convrot else 0
    if type(group) is not int or group < 0 or (convrot and not 1 <= group <= 1 << 16):
        raise CheckpointError(f"{ckpt.path}: layer {shown(layer)} ({fmt}) has convrot_groupsize {shown(group)}; "
                              "expected a positive whole number (256 in ComfyUI's files). The file is damaged.")
    return PackedLayer(fmt, scales, group)


def describe_quant(ckpt: Checkpoint) -> QuantLayout:
    """The quantised layers of `ckpt`; CheckpointError naming the format when it is one this pack cannot read."""
    _foreign(ckpt)
    configs = layer_configs(ckpt)
    _unknown_format(ckpt, configs)
    packed = {layer: _packed_layer(ckpt, layer, conf) for layer, conf in configs.items()
              if conf["format"] in COMFY_PACKED}
    for key, info in ckpt.infos.items():
        if info.packing and key.endswith(".weight"):
            packed[key[: -len(".weight")]] = PackedLayer(info.packing)
    fp8_names = {layer for layer, conf in configs.items() if conf["format"] in FP8_FORMATS}
    markers = {k for k in ckpt.keys() if k.endswith(".comfy_quant")}
    fp8 = describe_fp8(ckpt, fp8_names if configs else None, exclude=frozenset(packed))
    _unlabelled(ckpt, packed)
    return QuantLayout(fp8, packed, markers)


def _unlabelled(ckpt: Checkpoint, packed: dict[str, PackedLayer]) -> None:
    """Integer weights no config explains: a quantised format we cannot identify, said as such (not 'another model')."""
    for key, info in ckpt.infos.items():
        layer = key[: -len(".weight")]
        if key.endswith(".weight") and info.dtype in (torch.int8, torch.uint8) and layer not in packed:
            extras = sorted(k[len(layer) + 1:] for k in ckpt.keys() if k.startswith(layer + ".") and k != key)
            raise CheckpointError(
                f"{ckpt.path}: layer {shown(layer)} stores its weight as {str(info.dtype).replace('torch.', '')} "
                f"{list(info.shape)}{' with ' + ', '.join(extras) if extras else ''} but the file has no quantisation "
                "config for it (no .comfy_quant tensor, no _quantization_metadata entry), so its format is unknown. "
                f"This pack reads ComfyUI's {', '.join(READABLE)} files and GGUF files; use one of those.")
