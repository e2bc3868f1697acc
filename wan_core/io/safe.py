"""The checks every file read goes through before anything in it is trusted: contained paths, bounded JSON, and
fully validated safetensors headers.

Model files come from anywhere. Nothing here echoes file contents in an error: messages name the file, what was
found (sizes, positions, counts, sanitised names) and what was expected. A path a file names (an index's shards,
a folder's config) must stay inside the folder the file came from; symlinks placed in that folder are followed,
as ComfyUI follows them in its model folders.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Mapping

import torch


class CheckpointError(ValueError):
    """A model file that cannot be used: the message says what was found, expected, and what to do."""


HEADER_LIMIT = 100_000_000  # bytes of a safetensors JSON header (the safetensors library's own limit)
JSON_LIMIT = 64 << 20  # bytes of a config.json / index.json we parse
NAME_LIMIT = 1000  # characters of a tensor name (real ones are < 200)
MAX_RANK = 8  # dimensions of a stored tensor (real ones have at most 5)
_SHOWN = 80


def shown(name: object, limit: int = _SHOWN) -> str:
    """A file-provided value as it may appear in a message: control characters escaped, at most `limit` characters,
    strings quoted."""
    text = name if isinstance(name, str) else repr(name)
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return repr(text) if isinstance(name, str) else text


def regular_file(path: Path, what: str = "model file") -> os.stat_result:
    """stat() of `path`, which must be a regular file (following symlinks); a CheckpointError otherwise."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such {what}. Check the path and the model folder it should be in.") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: the {what} cannot be read ({exc.strerror}). Check its permissions.") from None
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(f"{path}: this is a folder, but a {what} was expected here. Pick the file itself.")
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path}: this is not a regular file (a device, pipe or socket); expected a {what}.")
    return st


def contained(folder: Path, name: object, source: Path, what: str = "file") -> Path:
    """`folder / name` for a path `source` names (an index's shard): relative, no '..' out of `folder`."""
    if not isinstance(name, str) or not name or "\x00" in name or len(name) > 4096:
        raise CheckpointError(f"{source}: names {shown(name)} as a {what}; expected a file name inside {folder}.")
    posix = PurePosixPath(name.replace("\\", "/"))
    parts = posix.parts
    if posix.is_absolute() or (parts and (":" in parts[0])) or ".." in parts:
        raise CheckpointError(
            f"{source}: names the {what} {shown(name)}, which lies outside {folder}. A model folder's files may only "
            "name files inside that folder; this file was edited or built to read other files, so it is refused.")
    return folder.joinpath(*[p for p in parts if p not in ("", ".")])


def read_json(path: Path, what: str) -> object:
    """Parse a small JSON file (config, index): size-bounded, with a CheckpointError for anything that is not JSON."""
    st = regular_file(path, what)
    if st.st_size > JSON_LIMIT:
        raise CheckpointError(f"{path}: {st.st_size:,} bytes is too large for a {what} (at most {JSON_LIMIT:,}); "
                              "it is not the file it is named as.")
    with open(path, "rb") as f:
        raw = f.read(JSON_LIMIT + 1)
    return parse_json(raw, path, what)


def parse_json(raw: bytes, path: Path, what: str) -> object:
    """JSON from bytes, refusing invalid UTF-8, syntax errors, duplicate keys and absurd nesting with a clear message."""
    def unique(pairs: list[tuple[str, object]]) -> dict:
        out: dict = {}
        for key, value in pairs:
            if key in out:
                raise CheckpointError(f"{path}: the {what} names {shown(key)} twice; the file is corrupt or was edited.")
            out[key] = value
        return out

    def constant(name: str) -> float:
        raise CheckpointError(f"{path}: the {what} contains {name}, which is not a JSON value; the file is corrupt.")

    try:
        text = raw.decode("utf-8")
        return json.loads(text, object_pairs_hook=unique, parse_constant=constant)
    except CheckpointError:
        raise
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: the {what} is not UTF-8 text (bad byte at position {exc.start}); the file "
                              "is corrupt or not the format its name says. Download it again.") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: the {what} is not valid JSON ({exc.msg} at line {exc.lineno}, column "
                              f"{exc.colno}); the file is corrupt or truncated. Download it again.") from None
    except ValueError:  # e.g. an integer literal of thousands of digits
        raise CheckpointError(f"{path}: the {what} holds a number no real {what} has; the file is corrupt.") from None
    except RecursionError:
        raise CheckpointError(f"{path}: the {what} nests JSON too deeply to be a real {what}; the file is corrupt "
                              "or built to crash readers. It is refused.") from None


def json_object(value: object, path: Path, what: str) -> dict:
    """`value` if it is a JSON object, else a CheckpointError saying what was found instead."""
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: the {what} is a JSON {_json_kind(value)}, expected an object ({{...}}).")
    return value


def _json_kind(value: object) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null", int: "number",
            float: "number"}.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------------------------- safetensors


@dataclass(frozen=True)
class StoredTensor:
    """One tensor as a validated safetensors header describes it: dtype, shape and byte range in the data section."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """A safetensors file's validated header: its tensors, metadata and where the data section starts."""

    path: Path
    tensors: dict[str, StoredTensor]
    metadata: dict[str, str]
    data_start: int


def read_safetensors_header(path: Path, dtypes: Mapping[str, torch.dtype]) -> SafetensorsHeader:
    """Read and validate a safetensors header completely before any tensor is touched.

    Checked: the length field, UTF-8 JSON object, `__metadata__` a str -> str map, every entry an object with a
    known dtype, a shape of non-negative ints and two data offsets with element size x shape == byte length,
    offsets sorted, contiguous and covering exactly the data section (the format's own rules).
    """
    size = regular_file(path, "safetensors file").st_size
    if size < 8:
        raise CheckpointError(f"{path}: {size} bytes is too short to be a safetensors file (an empty or "
                              "interrupted download); download it again.")
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n < 2 or n > min(size - 8, HEADER_LIMIT):
            raise CheckpointError(
                f"{path}: not a valid safetensors file: its first 8 bytes do not give a header length that fits the "
                f"{size:,}-byte file. It is corrupt, truncated, or another format renamed to .safetensors; download "
                "it again.")
        raw = f.read(n)
    if len(raw) != n:
        raise CheckpointError(f"{path}: the file shrank while it was read; check that nothing is writing it.")
    header = json_object(parse_json(raw, path, "safetensors header"), path, "safetensors header")
    metadata = _metadata(header.pop("__metadata__", None), path)
    tensors = {name: _entry(name, entry, path, dtypes) for name, entry in header.items()}
    _check_layout(tensors, 8 + n, size, path)
    return SafetensorsHeader(path, tensors, metadata, 8 + n)


def _metadata(value: object, path: Path) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise CheckpointError(f"{path}: the safetensors '__metadata__' must map names to strings; found a "
                              f"{_json_kind(value)} with other values. The file is corrupt.")
    return dict(value)


def _entry(name: str, entry: object, path: Path, dtypes: Mapping[str, torch.dtype]) -> StoredTensor:
    label = shown(name)
    if len(name) > NAME_LIMIT or not name.isprintable():
        raise CheckpointError(f"{path}: a tensor name of {len(name)} characters with control characters or beyond "
                              f"{NAME_LIMIT} characters ({label}); no real model has one. The file is refused.")
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        keys = sorted(map(str, entry)) if isinstance(entry, dict) else _json_kind(entry)
        raise CheckpointError(f"{path}: tensor {label} is described by {shown(keys)}; expected an object with "
                              "exactly dtype, shape and data_offsets. The file is corrupt.")
    dtype = dtypes.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise CheckpointError(f"{path}: tensor {label} has dtype {shown(entry['dtype'])}, which this pack cannot read "
                              f"(known: {', '.join(dtypes)}).")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not _ints(shape) or len(shape) > MAX_RANK:
        raise CheckpointError(f"{path}: tensor {label} has shape {shown(shape)}; expected a list of at most "
                              f"{MAX_RANK} non-negative integers. The file is corrupt.")
    if not _ints(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise CheckpointError(f"{path}: tensor {label} has data_offsets {shown(offsets)}; expected [start, end] "
                              "with 0 <= start <= end. The file is corrupt.")
    nbytes = math.prod(shape) * dtype.itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise CheckpointError(
            f"{path}: tensor {label} is {entry['dtype']} of shape {list(shape)}, which takes {nbytes:,} bytes, but its "
            f"offsets span {offsets[1] - offsets[0]:,} bytes. The file is corrupt; download it again.")
    return StoredTensor(dtype, tuple(shape), offsets[0], offsets[1])


def _ints(value: object) -> bool:
    return isinstance(value, list) and all(type(v) is int and v >= 0 for v in value)


def _check_layout(tensors: dict[str, StoredTensor], data_start: int, size: int, path: Path) -> None:
    """Sorted, non-overlapping, no holes, exactly the data section: the safetensors format's layout rules."""
    position, previous, data_bytes = 0, None, size - data_start
    for name, t in sorted(tensors.items(), key=lambda item: (item[1].start, item[1].end)):
        if t.start < position:
            raise CheckpointError(f"{path}: tensors {shown(previous)} and {shown(name)} overlap in the data section "
                                  f"(bytes {t.start:,} to {position:,}); the file is corrupt or was built to alias "
                                  "weights. It is refused.")
        if t.start > position:
            raise CheckpointError(f"{path}: {t.start - position:,} bytes before tensor {shown(name)} belong to no "
                                  "tensor (the format allows no holes); the file is corrupt. Download it again.")
        position, previous = t.end, name
    if position > data_bytes:
        raise CheckpointError(
            f"{path}: the file is truncated: it has {size:,} bytes but its header describes {data_start + position:,}. "
            "The download did not finish; download it again.")
    if position < data_bytes:
        raise CheckpointError(f"{path}: {data_bytes - position:,} bytes after the last tensor belong to no tensor "
                              "(the format allows none); the file was appended to or is another format. Download "
                              "it again.")
