"""Lazy, memory-mapped access to checkpoint files: safetensors, sharded folders and .pth pickles.

Every loader in wan_core reads weights through `open_checkpoint`, which looks at headers only; a
tensor is read from disk when `Checkpoint.get` asks for it, so a loader can move each tensor to its
target device and dtype before reading the next one (no second full copy in RAM). Headers are validated
completely and index shards contained in their folder (`io.safe`) before anything is read; pickles load
with weights_only=True only.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from .safe import (NAME_LIMIT, CheckpointError, contained, json_object, read_json, read_safetensors_header,
                   regular_file, shown)

__all__ = ["CheckpointError", "Checkpoint", "TensorInfo", "INDEX_SUFFIX", "open_checkpoint", "file_identity",
           "read_index", "require_float", "unwrap_state_dict"]

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
            raise CheckpointError(f"{self.path}: tensor {shown(self.prefix + key)} is not in this file.") from None
        try:
            return reader()
        except CheckpointError:
            raise
        except Exception as exc:  # the file changed or was damaged since its header was read
            raise CheckpointError(
                f"{self.path}: could not read tensor {shown(self.prefix + key)}; the file changed since it was opened, "
                "or is damaged. Download it again."
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


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "F8_E8M0": torch.float8_e8m0fnu,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _open_safetensors(path: Path) -> tuple[dict[str, TensorInfo], dict[str, Callable[[], torch.Tensor]], dict[str, str]]:
    from safetensors import safe_open

    header = read_safetensors_header(path, SAFETENSORS_DTYPES)
    infos = {key: TensorInfo(t.shape, t.dtype) for key, t in header.tensors.items()}
    handle: list = []

    def reader(key: str) -> Callable[[], torch.Tensor]:
        def read() -> torch.Tensor:
            if not handle:
                handle.append(safe_open(str(path), framework="pt", device="cpu"))
            return handle[0].get_tensor(key)
        return read

    return infos, {k: reader(k) for k in infos}, header.metadata


# --------------------------------------------------------------------------------------------- .pth pickles

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80
# Containers a state dict is saved inside (the keys spandrel and ComfyUI unwrap), tried in this order.
WRAPPER_KEYS = ("model_state_dict", "state_dict", "params_ema", "params-ema", "params", "model", "net", "module")


def _torch_load(path: Path) -> object:
    """torch.load with weights_only=True (no code in the file ever runs); our own message for every failure."""
    size = regular_file(path, "PyTorch file").st_size
    with open(path, "rb") as f:
        head = f.read(4)
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty (an interrupted download); download it again.")
    is_zip = head == _ZIP_MAGIC
    if not is_zip and head[:1] != bytes([_PICKLE_PROTO]):
        raise CheckpointError(f"{path}: not a PyTorch file (neither torch.save's zip archive nor a pickle); it is "
                              "corrupt or another format renamed to .pth. Download it again.")
    if is_zip:
        _refuse_torchscript(path)
    try:
        # mmap keeps the tensors on disk until a loader reads them (zip archives only; the legacy format cannot).
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: this file stores Python objects besides tensors (a pickle that could run code when loaded). This "
            "pack loads only plain tensor state dicts and never runs code from model files, so it is refused. Use "
            "the .safetensors release of the model, or convert the file where you trust it.") from None
    except (RecursionError, MemoryError):
        raise CheckpointError(f"{path}: the file nests objects too deeply or claims absurd sizes; it is corrupt or "
                              "built to crash readers, and is refused.") from None
    except Exception:  # noqa: BLE001 - truncated/corrupt archives fail in many ways inside torch and zipfile
        raise CheckpointError(f"{path}: could not be read as a PyTorch state dict: the file is truncated or corrupt. "
                              "Download it again.") from None


def _refuse_torchscript(path: Path) -> None:
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()[:10_000]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise CheckpointError(f"{path}: the PyTorch zip archive is truncated or corrupt; download it again.") from None
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        raise CheckpointError(f"{path}: this is a TorchScript program, not a state dict of weights; it is not loaded "
                              "(it would run its own code). Use the plain .pth or .safetensors release.")


def unwrap_state_dict(obj: object) -> object:
    """The state dict inside the containers training code saves it in ({'params_ema': sd}, {'state_dict': sd}, ...)."""
    for _ in range(4):
        if not isinstance(obj, dict):
            return obj
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None and len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
            inner = next(iter(obj.values()))
        if inner is None:
            return obj
        obj = inner
    return obj


def _open_pickle(path: Path) -> tuple[dict[str, TensorInfo], dict[str, Callable[[], torch.Tensor]]]:
    sd = unwrap_state_dict(_torch_load(path))
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected a state dict (names -> tensors), found a {type(sd).__name__}.")
    for key, value in sd.items():
        if not isinstance(key, str) or len(key) > NAME_LIMIT or not key.isprintable():
            raise CheckpointError(f"{path}: the state dict has the entry name {shown(key)}; expected printable tensor "
                                  f"names of at most {NAME_LIMIT} characters. The file is corrupt.")
        if not isinstance(value, torch.Tensor) or value.layout != torch.strided or value.is_quantized:
            kind = type(value).__name__ if not isinstance(value, torch.Tensor) else f"{value.layout} tensor"
            raise CheckpointError(f"{path}: entry {shown(key)} is a {kind}, not a dense tensor; expected a state dict "
                                  "of weights only.")
    infos = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in sd.items()}
    return infos, {k: (lambda v=v: v) for k, v in sd.items()}


# --------------------------------------------------------------------------------------------- folders, indexes


def _config(folder: Path) -> dict | None:
    path = folder / "config.json"
    if not path.exists():
        return None
    return json_object(read_json(path, "config.json"), path, "config.json")


def _open_folder(path: Path) -> Checkpoint:
    config = _config(path)
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
            "Point at the folder that holds config.json and diffusion_pytorch_model*.safetensors.")
    for f in files:
        i, r, m = _open_safetensors(f)
        infos.update(i)
        readers.update(r)
        metadata.update(m)
    return Checkpoint(path, infos, readers, metadata, config)


def read_index(index_path: Path) -> dict[str, Path]:
    """An index's weight_map as tensor name -> shard path, every shard inside the index's folder (checked)."""
    index = json_object(read_json(index_path, "safetensors index"), index_path, "safetensors index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: not a valid safetensors index: 'weight_map' is "
                              f"{'missing' if weight_map is None else 'not a non-empty object'}. Download it again.")
    folder = index_path.parent
    shards: dict[object, Path] = {}
    out: dict[str, Path] = {}
    for key, shard in weight_map.items():
        if len(key) > NAME_LIMIT or not key.isprintable():
            raise CheckpointError(f"{index_path}: the index names the tensor {shown(key)}; expected printable names "
                                  f"of at most {NAME_LIMIT} characters. The file is corrupt.")
        if not isinstance(shard, str) or shard not in shards:  # contained() refuses a non-string before it is hashed
            shards[shard] = contained(folder, shard, index_path, "shard")
        out[key] = shards[shard]
    return out


def _open_index(index_path: Path, config: dict | None = None) -> Checkpoint:
    folder = index_path.parent
    if config is None:
        config = _config(folder)
    weight_map = read_index(index_path)
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not s.is_file()]
    if missing:
        raise CheckpointError(
            f"{index_path}: {len(missing)} of {len(shards)} shards are missing or not files: "
            f"{', '.join(shown(s.name) for s in missing[:5])}. Download every shard into {folder}.")
    infos: dict[str, TensorInfo] = {}
    readers: dict[str, Callable[[], torch.Tensor]] = {}
    metadata: dict[str, str] = {}
    for shard in shards:
        i, r, m = _open_safetensors(shard)
        wanted = {k for k, s in weight_map.items() if s == shard}
        absent = wanted - set(i)
        if absent:
            raise CheckpointError(
                f"{shard}: the index lists {len(absent)} tensors in this shard that it lacks "
                f"(e.g. {shown(sorted(absent)[0])}); the shard is from another download. Download it again.")
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


def require_float(ckpt: Checkpoint, keys: Iterable[str], what: str) -> None:
    """CheckpointError when a weight among `keys` is stored as integers or booleans: no model of this pack computes
    with them, and converting them would load garbage silently (fp8 layers are floating point and pass)."""
    for key in keys:
        info = ckpt.infos.get(key)
        if info is not None and not info.dtype.is_floating_point:
            count = sum(1 for k in keys if k in ckpt.infos and not ckpt.infos[k].dtype.is_floating_point)
            raise CheckpointError(
                f"{ckpt.path}: weight {shown(ckpt.prefix + key)} of the {what} is stored as "
                f"{str(info.dtype).removeprefix('torch.')} ({count} weights are integer); model weights must be "
                "floating point (fp32, bf16, fp16, or fp8 with its scales). The file is quantised in a format this "
                "pack does not read, or corrupt; use the fp16/bf16 or fp8_scaled release.")


def file_identity(path: str | os.PathLike) -> tuple:
    """What identifies a file's contents for the caches: (resolved path, size, mtime_ns, device, inode, ctime_ns).

    Replacing a file (cp -p, rsync -t, a new download renamed over it) changes its inode or ctime even when size and
    mtime are kept, and no tool can set ctime back; nothing is read, so this is cheap for 28 GB files. A folder's
    (or a sharded index's) identity covers each of its weights and JSON files the same way.
    """
    p = Path(path).resolve()
    if p.name.lower().endswith(INDEX_SUFFIX):
        p = p.parent  # a sharded expert is its folder: a replaced shard changes the identity too
    try:
        if p.is_dir():
            files = sorted(list(p.glob("*.safetensors")) + list(p.glob("*.json")))
            stats = [(f.name, _stat_identity(f.stat())) for f in files]
            digest = hashlib.sha256(repr(stats).encode()).hexdigest()[:16]
            return (str(p), sum(s[1][0] for s in stats), max((s[1][1] for s in stats), default=0), digest)
        return (str(p), *_stat_identity(p.stat()))
    except FileNotFoundError:
        raise CheckpointError(f"{p}: no such file or folder. Check the path and the model folder it should be in.") from None
    except OSError as exc:
        raise CheckpointError(f"{p}: cannot be read ({exc.strerror}). Check its permissions.") from None


def _stat_identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino, st.st_ctime_ns)
