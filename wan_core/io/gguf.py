"""GGUF files (city96's and QuantStack's quantised Wan experts): header, tensor table, byte locations.

The `gguf` package parses the header (it memory-maps the file but only the header pages are touched); the
tensor bytes are later read with plain file reads, like safetensors. Names are the state-dict keys as the
converter found them (official Wan names, sometimes with a `model.diffusion_model.` prefix); GGUF lists
dimensions innermost first, so the torch shape is the reverse, unless a `comfy.gguf.orig_shape.<name>`
entry gives it (ComfyUI-GGUF's converter writes one for tensors it reshaped). Float tensors (F32, F16,
BF16) read as ordinary tensors; GGML block types read as raw uint8 blocks, [rows, row_bytes], with
`TensorInfo.packing` naming the type (see `quant.ggml`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import CheckpointError, TensorInfo, file_identity
from .quant.ggml import GGML_TYPES
from .safe import MAX_RANK, NAME_LIMIT, regular_file, shown

_FLOAT_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
SUPPORTED = tuple(_FLOAT_TYPES) + GGML_TYPES


@dataclass(frozen=True)
class GGUFTensor:
    """Where one tensor's bytes are and how to read them."""

    info: TensorInfo
    offset: int
    nbytes: int
    stored_shape: tuple[int, ...]  # what a read returns: the torch shape, or [rows, row_bytes] for GGML blocks


def _orig_shape(reader, name: str, path: Path) -> tuple[int, ...] | None:
    field = reader.get_field(f"comfy.gguf.orig_shape.{name}")
    if field is None:
        return None
    try:
        shape = tuple(int(v) for v in field.contents())
    except (TypeError, ValueError):
        shape = (-1,)
    if len(shape) > MAX_RANK or any(v < 0 for v in shape):
        raise CheckpointError(f"{path}: the comfy.gguf.orig_shape entry of tensor {shown(name)} is not a shape of at "
                              f"most {MAX_RANK} non-negative sizes; the file is corrupt. Download it again.")
    return shape


def _unsupported(path: Path, name: str, type_name: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: tensor {shown(name)} is stored as GGUF {type_name}, a quantisation type this pack cannot read. It reads "
        f"{', '.join(SUPPORTED)} (the Q8_0, Q6_K, Q5_K_M/S, Q4_K_M/S, Q4_0, Q3_K_S/M, F16 and BF16 files). "
        "Download one of those quantisations of the expert instead.")


def read_table(path: str | Path) -> tuple[dict[str, GGUFTensor], dict[str, str]]:
    """Tensor table and string metadata (e.g. general.architecture) of a GGUF file; CheckpointError if unreadable."""
    regular_file(Path(path), "GGUF file")
    return _read_table(file_identity(path))


@lru_cache(maxsize=16)
def _read_table(identity: tuple) -> tuple[dict[str, GGUFTensor], dict[str, str]]:
    """`read_table` per file identity: a 14B expert's header is parsed once, not at every inspect and load."""
    path, size = Path(identity[0]), identity[1]
    if size < 24:
        raise CheckpointError(f"{path}: {size} bytes is too short to be a GGUF file (an empty or interrupted "
                              "download); download it again.")
    try:
        from gguf import GGUFReader
    except ImportError as exc:
        raise CheckpointError(f"{path}: reading GGUF files needs the 'gguf' package (pip install gguf).") from exc
    try:
        reader = GGUFReader(str(path))
        tensors = list(reader.tensors)
    except Exception:  # noqa: BLE001 - truncated or foreign files fail inside the parser in many ways
        raise CheckpointError(f"{path}: not a readable GGUF file (a header of a version the gguf package cannot read, "
                              "or truncated or corrupt; download it again).") from None
    table: dict[str, GGUFTensor] = {}
    for t in tensors:
        type_name = t.tensor_type.name
        if len(t.name) > NAME_LIMIT or not t.name.isprintable():
            raise CheckpointError(f"{path}: a tensor name with control characters or beyond {NAME_LIMIT} characters "
                                  f"({shown(t.name)}); no real model has one. The file is refused.")
        if type_name not in SUPPORTED:
            raise _unsupported(path, t.name, type_name)
        if t.name in table:
            raise CheckpointError(f"{path}: names the tensor {shown(t.name)} twice; the file is corrupt or was edited.")
        shape = _orig_shape(reader, t.name, path) or tuple(int(v) for v in reversed(t.shape.tolist()))
        if math.prod(shape) != int(t.n_elements):
            raise CheckpointError(f"{path}: tensor {shown(t.name)} holds {int(t.n_elements):,} values but its shape "
                                  f"{list(shape)} has {math.prod(shape):,}; the file is corrupt. Download it again.")
        if type_name in _FLOAT_TYPES:
            info, stored = TensorInfo(shape, _FLOAT_TYPES[type_name]), shape
        else:
            info = TensorInfo(shape, torch.uint8, packing=type_name, nbytes=int(t.n_bytes))
            rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
            stored = (rows, int(t.n_bytes) // max(rows, 1))
        if (int(t.data_offset) - reader.data_offset) % reader.alignment:
            raise CheckpointError(f"{path}: tensor {shown(t.name)} starts at byte {int(t.data_offset):,}, off the "
                                  f"file's {reader.alignment}-byte alignment (the format requires it); the file is "
                                  "corrupt. Download it again.")
        if t.data_offset + t.n_bytes > size:
            raise CheckpointError(f"{path}: the file is truncated: tensor {shown(t.name)} ends at byte "
                                  f"{t.data_offset + t.n_bytes:,} but the file has {size:,}. Download it again.")
        table[t.name] = GGUFTensor(info, int(t.data_offset), int(t.n_bytes), stored)
    _check_disjoint(table, path)
    return table, _metadata(reader)


def _check_disjoint(table: dict[str, GGUFTensor], path: Path) -> None:
    """No two tensors share bytes (a file built to alias weights, or a corrupt tensor table)."""
    end, previous = 0, None
    for name, entry in sorted(table.items(), key=lambda item: item[1].offset):
        if entry.offset < end:
            raise CheckpointError(f"{path}: tensors {shown(previous)} and {shown(name)} overlap in the data section; "
                                  "the file is corrupt or was built to alias weights. It is refused.")
        end, previous = max(end, entry.offset + entry.nbytes), name


def _metadata(reader) -> dict[str, str]:
    """The few header strings worth showing (architecture, file type, name); unreadable ones are left out."""
    metadata = {}
    for key in ("general.architecture", "general.file_type", "general.name"):
        field = reader.get_field(key)
        try:
            if field is not None:
                metadata[key] = str(field.contents())
        except (UnicodeDecodeError, ValueError, IndexError, TypeError):
            continue
    return metadata


def open_gguf(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, Callable[[], torch.Tensor]], dict[str, str]]:
    """(infos, readers, metadata) for `Checkpoint`: each reader returns one tensor as stored (CPU)."""
    path = Path(path)
    table, metadata = read_table(path)

    def reader(entry: GGUFTensor) -> Callable[[], torch.Tensor]:
        def read() -> torch.Tensor:
            out = torch.empty(entry.nbytes, dtype=torch.uint8)
            with open(path, "rb") as f:
                f.seek(entry.offset)
                got = f.readinto(out.numpy())
            if got != entry.nbytes:
                raise CheckpointError(f"{path}: a tensor ends after {got} of {entry.nbytes} bytes; the file is truncated.")
            dtype = torch.uint8 if entry.info.packing else entry.info.dtype
            return out.view(dtype).reshape(entry.stored_shape)
        return read

    return ({k: e.info for k, e in table.items()}, {k: reader(e) for k, e in table.items()}, metadata)


def locations(path: str | Path) -> dict[str, tuple[Path, int, int]]:
    """Tensor name -> (file, byte offset, byte length), for loaders that read straight into their tensors."""
    path = Path(path)
    return {k: (path, e.offset, e.nbytes) for k, e in read_table(path)[0].items()}
