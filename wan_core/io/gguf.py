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

from .checkpoint import CheckpointError, TensorInfo
from .quant.ggml import GGML_TYPES

_FLOAT_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
SUPPORTED = tuple(_FLOAT_TYPES) + GGML_TYPES


@dataclass(frozen=True)
class GGUFTensor:
    """Where one tensor's bytes are and how to read them."""

    info: TensorInfo
    offset: int
    nbytes: int
    stored_shape: tuple[int, ...]  # what a read returns: the torch shape, or [rows, row_bytes] for GGML blocks


def _orig_shape(reader, name: str) -> tuple[int, ...] | None:
    field = reader.get_field(f"comfy.gguf.orig_shape.{name}")
    return tuple(int(v) for v in field.contents()) if field is not None else None


def _unsupported(path: Path, name: str, type_name: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: tensor '{name}' is stored as GGUF {type_name}, a quantisation type this pack cannot read. It reads "
        f"{', '.join(SUPPORTED)} (the Q8_0, Q6_K, Q5_K_M/S, Q4_K_M/S, Q4_0, Q3_K_S/M, F16 and BF16 files). "
        "Download one of those quantisations of the expert instead.")


def read_table(path: str | Path) -> tuple[dict[str, GGUFTensor], dict[str, str]]:
    """Tensor table and string metadata (e.g. general.architecture) of a GGUF file; CheckpointError if unreadable."""
    st = Path(path).stat()
    return _read_table(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=16)
def _read_table(name: str, size: int, mtime_ns: int) -> tuple[dict[str, GGUFTensor], dict[str, str]]:
    """`read_table` per file identity: a 14B expert's header is parsed once, not at every inspect and load."""
    path = Path(name)
    try:
        from gguf import GGUFReader
        reader = GGUFReader(str(path))
    except ImportError as exc:
        raise CheckpointError(f"{path}: reading GGUF files needs the 'gguf' package (pip install gguf).") from exc
    except Exception as exc:  # truncated or foreign files fail inside the parser with assorted errors
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc}). It is truncated or "
                              "corrupt; download it again.") from exc
    table: dict[str, GGUFTensor] = {}
    for t in reader.tensors:
        type_name = t.tensor_type.name
        if type_name not in SUPPORTED:
            raise _unsupported(path, t.name, type_name)
        shape = _orig_shape(reader, t.name) or tuple(int(v) for v in reversed(t.shape.tolist()))
        if type_name in _FLOAT_TYPES:
            info, stored = TensorInfo(shape, _FLOAT_TYPES[type_name]), shape
        else:
            info = TensorInfo(shape, torch.uint8, packing=type_name, nbytes=int(t.n_bytes))
            rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
            stored = (rows, int(t.n_bytes) // max(rows, 1))
        if t.data_offset + t.n_bytes > size:
            raise CheckpointError(f"{path}: the file is truncated: tensor '{t.name}' ends at byte "
                                  f"{t.data_offset + t.n_bytes:,} but the file has {size:,}. Download it again.")
        table[t.name] = GGUFTensor(info, int(t.data_offset), int(t.n_bytes), stored)
    metadata = {}
    for key in ("general.architecture", "general.file_type", "general.name"):
        field = reader.get_field(key)
        if field is not None:
            metadata[key] = str(field.contents())
    return table, metadata


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
