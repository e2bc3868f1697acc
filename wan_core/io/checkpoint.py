"""Lazy, memory-mapped access to checkpoint files: safetensors, sharded folders and .pth pickles.

Every loader in wan_core reads weights through `open_checkpoint`, which looks at headers only; a
tensor is read from disk when `Checkpoint.get` asks for it, so a loader can move each tensor to its
target device and dtype before reading the next one (no second full copy in RAM).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch


class CheckpointError(ValueError):
    """A model file that cannot be used: the message says what was found, expected, and what to do."""


_PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
INDEX_SUFFIX = ".safetensors.index.json"


@dataclass(frozen=True)
class TensorInfo:
    """Shape and dtype of a stored tensor, known without reading its data.

    For a packed tensor (GGUF's GGML block types) `shape` is the logical shape, `dtype` uint8, `packing` the
    format's name and `nbytes` the stored size; `Checkpoint.get` then returns the raw blocks.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    packing: str | None = None
    nbytes: int | None = None

    @property
    def stored_bytes(self) -> int:
        """Bytes the tensor takes as stored."""
        return self.nbytes if self.nbytes is not None else _numel(self.shape) * _itemsize(self.dtype)


@dataclass
class Checkpoint:
    """A state dict whose tensors are read on demand.

    `infos` has every key's shape/dtype; `get(key)` reads one tensor (CPU, stored dtype).
    `metadata` is the safetensors header metadata (merged over shards); `config` is an official
    folder's config.json, when there is one.
    """

    path: Path
    infos: dict[str, TensorInfo]
    _readers: dict[str, Callable[[], torch.Tensor]] = field(repr=False)
    metadata: dict[str, str] = field(default_factory=dict)
    config: dict | None = None
    prefix: str = ""

    def keys(self) -> list[str]:
        return list(self.infos)

    def __contains__(self, key: object) -> bool:
        return key in self.infos

    def __len__(self) -> int:
        return len(self.infos)

    def __iter__(self) -> Iterator[str]:
        return iter(self.infos)

    def get(self, key: str) -> torch.Tensor:
        """Read one tensor from disk (CPU, stored dtype)."""
        try:
            reader = self._readers[key]
        except KeyError:
            raise CheckpointError(f"{self.path}: tensor '{self.prefix}{key}' is not in this file.") from None
        try:
            return reader()
        except CheckpointError:
            raise
        except Exception as exc:  # a truncated file fails here, not at open
            raise CheckpointError(
                f"{self.path}: could not read tensor '{self.prefix}{key}' ({exc}). The file looks truncated or "
                "corrupt; download it again."
            ) from exc

    def strip_prefix(self, prefixes: Iterable[str]) -> "Checkpoint":
        """Return a view without the first prefix that every key (but marker keys) starts with."""
        for prefix in prefixes:
            keyed = [k for k in self.infos if k.startswith(prefix)]
            if keyed and len(keyed) >= len(self.infos) - 2:  # marker keys such as `scaled_fp8` may lack it
                infos = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in self.infos.items()}
                readers = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in self._readers.items()}
                return Checkpoint(self.path, infos, readers, self.metadata, self.config, self.prefix + prefix)
        return self

    def with_infos(self, infos: dict[str, TensorInfo]) -> "Checkpoint":
        """The same tensors described by `infos` (same keys): e.g. packed weights listed at their logical shape."""
        if set(infos) != set(self.infos):
            raise ValueError("with_infos must describe exactly the checkpoint's keys")
        return Checkpoint(self.path, infos, self._readers, self.metadata, self.config, self.prefix)

    def rename(self, mapping: Callable[[str], str | None]) -> "Checkpoint":
        """Return a view with keys renamed by `mapping` (None drops a key)."""
        infos, readers = {}, {}
        for key, info in self.infos.items():
            new = mapping(key)
            if new is not None:
                infos[new] = info
                readers[new] = self._readers[key]
        return Checkpoint(self.path, infos, readers, self.metadata, self.config, self.prefix)

    def weight_bytes(self, itemsize: int | None = None) -> int:
        """Bytes the tensors take once loaded: as stored, or at `itemsize` bytes per element (at least one byte each)."""
        if itemsize is None:
            return sum(i.stored_bytes for i in self.infos.values())
        return sum(max(1, _numel(i.shape)) * itemsize for i in self.infos.values())


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "F8_E8M0": torch.float8_e8m0fnu,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _read_safetensors_header(path: Path) -> tuple[dict, dict[str, str]]:
    """Parse a safetensors header and check that the file is long enough for every tensor."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: {size} bytes is too short to be a safetensors file; download it again.")
        n = int.from_bytes(head, "little")
        if n <= 0 or n > min(size - 8, 100_000_000):
            raise CheckpointError(
                f"{path}: not a valid safetensors file (header length {n} for a {size}-byte file). "
                "It is corrupt, truncated, or another format renamed to .safetensors; download it again."
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: the safetensors header is not valid JSON ({exc}); the file is corrupt.") from exc
    metadata = header.pop("__metadata__", None) or {}
    data_len = max((v["data_offsets"][1] for v in header.values()), default=0)
    if 8 + n + data_len > size:
        raise CheckpointError(
            f"{path}: the file is truncated: its header describes {8 + n + data_len:,} bytes but it has {size:,}. "
            "The download did not finish; download it again."
        )
    return header, metadata


def _open_safetensors(path: Path) -> tuple[dict[str, TensorInfo], dict[str, Callable[[], torch.Tensor]], dict[str, str]]:
    from safetensors import safe_open

    header, metadata = _read_safetensors_header(path)
    infos: dict[str, TensorInfo] = {}
    for key, entry in header.items():
        dtype = _ST_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise CheckpointError(f"{path}: tensor '{key}' has dtype {entry['dtype']}, which this pack cannot read.")
        infos[key] = TensorInfo(tuple(entry["shape"]), dtype)
    handle: list = []

    def reader(key: str) -> Callable[[], torch.Tensor]:
        def read() -> torch.Tensor:
            if not handle:
                handle.append(safe_open(str(path), framework="pt", device="cpu"))
            return handle[0].get_tensor(key)
        return read

    return infos, {k: reader(k) for k in infos}, dict(metadata)


def _open_pickle(path: Path) -> tuple[dict[str, TensorInfo], dict[str, Callable[[], torch.Tensor]]]:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc).lower() and "zip" not in str(exc).lower():
            raise CheckpointError(f"{path}: could not read this PyTorch file ({exc}); it may be truncated or corrupt.") from exc
        sd = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format cannot be mmapped
    except Exception as exc:  # weights_only refuses arbitrary pickles; say so plainly
        raise CheckpointError(
            f"{path}: could not read this file as a PyTorch state dict with weights_only=True ({exc}). "
            "Only plain tensor checkpoints are accepted, never arbitrary pickles."
        ) from exc
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, found a {type(sd).__name__}.")
    infos = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in sd.items()}
    return infos, {k: (lambda v=v: v) for k, v in sd.items()}


def _open_folder(path: Path) -> Checkpoint:
    config = None
    if (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
    indexes = sorted(path.glob("*" + INDEX_SUFFIX))
    infos: dict[str, TensorInfo] = {}
    readers: dict[str, Callable[[], torch.Tensor]] = {}
    metadata: dict[str, str] = {}
    if indexes:
        return _open_index(indexes[0], config)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(
            f"{path}: this folder has no .safetensors weights and no {INDEX_SUFFIX} index. "
            "Point at the folder that holds config.json and diffusion_pytorch_model*.safetensors."
        )
    for f in files:
        i, r, m = _open_safetensors(f)
        infos.update(i)
        readers.update(r)
        metadata.update(m)
    return Checkpoint(path, infos, readers, metadata, config)


def _open_index(index_path: Path, config: dict | None = None) -> Checkpoint:
    folder = index_path.parent
    if config is None and (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
    try:
        weight_map: dict[str, str] = json.loads(index_path.read_text())["weight_map"]
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{index_path}: not a valid safetensors index (no weight_map): {exc}") from exc
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not (folder / s).is_file()]
    if missing:
        raise CheckpointError(
            f"{index_path}: {len(missing)} of {len(shards)} shards are missing: {', '.join(missing)}. "
            f"Download every shard into {folder}."
        )
    infos: dict[str, TensorInfo] = {}
    readers: dict[str, Callable[[], torch.Tensor]] = {}
    metadata: dict[str, str] = {}
    for shard in shards:
        i, r, m = _open_safetensors(folder / shard)
        wanted = {k for k, s in weight_map.items() if s == shard}
        absent = wanted - set(i)
        if absent:
            raise CheckpointError(
                f"{folder / shard}: the index lists {len(absent)} tensors in this shard that it lacks "
                f"(e.g. '{sorted(absent)[0]}'); the shard is from another download. Download it again."
            )
        infos.update({k: i[k] for k in wanted})
        readers.update({k: r[k] for k in wanted})
        metadata.update(m)
    return Checkpoint(folder, infos, readers, metadata, config)


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open a weights file (safetensors, GGUF, .pth) or official folder lazily; raise CheckpointError with advice when it cannot be used."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or folder. Check the path and the model folder it should be in.")
    if p.is_dir():
        return _open_folder(p)
    name = p.name.lower()
    if name.endswith(INDEX_SUFFIX):
        return _open_index(p)
    if name.endswith(".safetensors") or name.endswith(".sft"):
        infos, readers, metadata = _open_safetensors(p)
        return Checkpoint(p, infos, readers, metadata)
    if name.endswith(_PICKLE_SUFFIXES):
        infos, readers = _open_pickle(p)
        return Checkpoint(p, infos, readers)
    if name.endswith(".gguf"):
        from .gguf import open_gguf

        infos, readers, metadata = open_gguf(p)
        return Checkpoint(p, infos, readers, metadata)
    raise CheckpointError(
        f"{p}: unsupported file type '{p.suffix}'. Expected .safetensors, .gguf, a sharded folder with "
        f"{INDEX_SUFFIX}, or a .pth/.pt state dict."
    )


def file_identity(path: str | os.PathLike) -> tuple[str, int, int]:
    """(resolved path, size, mtime_ns) of a file, or of a folder's newest weights file: a cache key part."""
    p = Path(path).resolve()
    if p.is_dir():
        files = sorted(list(p.glob("*.safetensors")) + list(p.glob("*.json")))
        return (str(p), sum(f.stat().st_size for f in files), max((f.stat().st_mtime_ns for f in files), default=0))
    st = p.stat()
    return (str(p), st.st_size, st.st_mtime_ns)
