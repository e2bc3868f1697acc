"""Hostile model files for the loader fuzz suite: mutations of valid tiny files, hostile pickles, an inotify watch
that sees any open() of the files outside the model folder (from Python, C++ or Rust alike), and the check that a
refusal is our clear error.

Every generator is deterministic (seeded) and bounded: a category yields a fixed list of cases.
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import random
import re
import shutil
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

FUZZ_COUNTS: dict[str, dict[str, int]] = {}  # loader -> category -> cases tried this session (printed at the end)
SECRET = "SECRET-c0ffee-7d3a"  # planted in file contents; no message may echo it
OUTSIDE_SECRET = "OUTSIDE-5eed-91b2"  # in the file outside the model folder

# Raw exception names that must never be the message a user sees (ours say what, where and what to do).
RAW = re.compile(r"\b(KeyError|TypeError|IndexError|AttributeError|RecursionError|EOFError|JSONDecodeError|"
                 r"UnpicklingError|SafetensorError|UnicodeDecodeError|ZeroDivisionError|OverflowError|BadZipFile|"
                 r"struct\.error|Traceback|weights_only=False|re-run|Errno)\b")


# ------------------------------------------------------------------------------------------ watching opens

IN_ACCESS, IN_OPEN = 0x00000001, 0x00000020
_EVENT = struct.Struct("iIII")


class OpenWatch:
    """inotify on one folder: which of its files were opened or read since the last `take()` (any language, any
    library: the kernel reports the open itself)."""

    def __init__(self, folder: Path) -> None:
        self._libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if self._libc.inotify_add_watch(self.fd, str(folder).encode(), IN_OPEN | IN_ACCESS) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder} failed")

    def take(self) -> list[str]:
        """Names opened or read in the folder since the last call ('' for the folder itself)."""
        names: list[str] = []
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return names
            offset = 0
            while offset < len(data):
                _, _, _, length = _EVENT.unpack_from(data, offset)
                raw = data[offset + _EVENT.size: offset + _EVENT.size + length]
                names.append(raw.rstrip(b"\0").decode(errors="replace"))
                offset += _EVENT.size + length

    def close(self) -> None:
        os.close(self.fd)


# ------------------------------------------------------------------------------------------ safetensors bytes

def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    """(header dict, data section) of a safetensors file's bytes."""
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8: 8 + n]), data[8 + n:]


def join_safetensors(header: object, body: bytes, raw: bytes | None = None) -> bytes:
    """A safetensors file from a header (any JSON value, or `raw` header bytes) and a data section."""
    text = raw if raw is not None else json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + body


def _tensors(header: dict) -> list[str]:
    return sorted(k for k in header if k != "__metadata__")


def header_mutations(data: bytes, rng: random.Random) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of a safetensors file whose header breaks one rule of the format (or is well-formed but lies)."""
    header, body = split_safetensors(data)
    names = _tensors(header)
    pick = names[rng.randrange(len(names))]
    floats = [k for k in names if header[k]["dtype"] in ("F32", "F16", "BF16")]
    wide = next((k for k in floats if header[k]["dtype"] == "F32"), floats[0])

    def edit(key: str, field: str, value: object) -> bytes:
        h = json.loads(json.dumps(header))
        h[key][field] = value
        return join_safetensors(h, body)

    s, e = header[pick]["data_offsets"]
    other = next(k for k in names if k != pick and header[k]["data_offsets"][1] > header[k]["data_offsets"][0])
    yield "dtype unknown", edit(pick, "dtype", "F99")
    yield "dtype not a string", edit(pick, "dtype", 7)
    yield "dtype with another element size", edit(pick, "dtype", "F64")
    yield "integer dtype of the same size", edit(wide, "dtype", "I32")
    yield "shape negative", edit(pick, "shape", [-1] + header[pick]["shape"][1:])
    yield "shape of floats", edit(pick, "shape", [1.5])
    yield "shape a string", edit(pick, "shape", "12")
    yield "shape nested", edit(pick, "shape", [header[pick]["shape"]])
    yield "shape huge", edit(pick, "shape", [2**40, 2**40])
    yield "shape with an extra dim (same bytes)", edit(pick, "shape", header[pick]["shape"] + [1])
    yield "shape of rank 40", edit(pick, "shape", [1] * 40)
    yield "offsets negative", edit(pick, "data_offsets", [-8, e])
    yield "offsets reversed", edit(pick, "data_offsets", [e, s])
    yield "offsets overlapping another tensor", edit(pick, "data_offsets", header[other]["data_offsets"])
    yield "offsets beyond the end", edit(pick, "data_offsets", [s + len(body), e + len(body)])
    yield "offsets not integers", edit(pick, "data_offsets", [float(s), float(e)])
    yield "three offsets", edit(pick, "data_offsets", [s, e, e])
    yield "entry not an object", join_safetensors({**header, pick: [1, 2, 3]}, body)
    yield "entry with an extra field", join_safetensors({**header, pick: {**header[pick], "x": 1}}, body)
    yield "metadata not strings", join_safetensors({**header, "__metadata__": {"a": {"b": SECRET}}}, body)
    yield "nesting depth 100000", join_safetensors(None, body, raw=b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    yield "header a JSON array", join_safetensors([1, 2, SECRET], body)
    yield "header a JSON string", join_safetensors(SECRET, body)
    yield "header a JSON number", join_safetensors(12345, body)
    yield "header null", join_safetensors(None, body)
    yield "header not UTF-8", join_safetensors(None, body, raw=b'{"\xff\xfe' + SECRET.encode() + b'": 1}')
    yield "header with NaN", join_safetensors(None, body, raw=b'{"__metadata__": {"a": NaN}}')
    yield "header with a 10000-digit number", join_safetensors(None, body, raw=b'{"a": ' + b"9" * 10_000 + b"}")
    yield "duplicate tensor name", join_safetensors(None, body, raw=_duplicate(header, pick))
    yield "control characters in a name", join_safetensors({**{k: v for k, v in header.items() if k != pick},
                                                            pick + "\x1b[2J\n": header[pick]}, body)
    yield "name of 5000 characters", join_safetensors({**{k: v for k, v in header.items() if k != pick},
                                                       pick + "x" * 5000: header[pick]}, body)
    n = int.from_bytes(data[:8], "little")
    huge = (2**63 + 12345).to_bytes(8, "little")
    yield "header length 2**63", huge + data[8:]
    yield "header length beyond the file", (len(data)).to_bytes(8, "little") + data[8:]
    yield "header length 1", (1).to_bytes(8, "little") + data[8:]
    yield "header length 0", (0).to_bytes(8, "little") + data[8:]
    yield "header length cuts the JSON", (n - 9).to_bytes(8, "little") + data[8:]
    yield "bytes appended after the data", data + SECRET.encode() * 4
    yield "a hole before the last tensor", _with_hole(header, body)


def _duplicate(header: dict, key: str) -> bytes:
    text = json.dumps(header)
    entry = json.dumps({key: header[key]})[1:-1]
    return ("{" + entry + ", " + text[1:]).encode()


def _with_hole(header: dict, body: bytes) -> bytes:
    h = json.loads(json.dumps(header))
    last = max(_tensors(h), key=lambda k: h[k]["data_offsets"][1])
    s, e = h[last]["data_offsets"]
    h[last]["data_offsets"] = [s + 8, e + 8]
    return join_safetensors(h, body[:s] + b"\0" * 8 + body[s:])


# ------------------------------------------------------------------------------------------ GGUF bytes

def _gguf_tensor_fields(path: Path) -> list[tuple[str, list[int]]]:
    """(name, byte offsets of [name length, name, n_dims, dims, type, data offset]) of each tensor info in a GGUF."""
    import gguf

    out = []
    for t in gguf.GGUFReader(str(path)).tensors:
        offsets, position = [], t.field.offset
        for part in t.field.parts:
            offsets.append(position)
            position += part.nbytes
        out.append((t.name, offsets))
    return out


def gguf_mutations(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of a GGUF file with one header field broken: magic, version, counts, string lengths, a tensor's
    dims, type, data offset or name."""
    data = path.read_bytes()
    fields = _gguf_tensor_fields(path)

    def put(offset: int, raw: bytes) -> bytes:
        return data[:offset] + raw + data[offset + len(raw):]

    u32, u64 = (lambda v: struct.pack("<I", v)), (lambda v: struct.pack("<Q", v))
    name, (_, name_at, ndims_at, dims_at, type_at, offset_at) = fields[0]
    second = next((n, f) for n, f in fields if n.startswith("blocks.1."))
    key_length = struct.unpack_from("<Q", data, 24)[0]
    yield "magic not GGUF", put(0, b"GGUX")
    yield "version 99", put(4, u32(99))
    yield "tensor count 2**62", put(8, u64(2**62))
    yield "metadata count 2**62", put(16, u64(2**62))
    yield "first key length 2**62", put(24, u64(2**62))
    yield "first value of type 99", put(24 + 8 + key_length, u32(99))
    yield "a tensor of 1000 dimensions", put(ndims_at, u32(1000))
    yield "a tensor dimension of 2**40", put(dims_at, u64(2**40))
    yield "a tensor dimension of 0", put(dims_at, u64(0))
    yield "a tensor type id 999", put(type_at, u32(999))
    yield "a tensor type of another block size (Q4_K)", put(type_at, u32(12))
    yield "a tensor's data offset beyond the end", put(offset_at, u64(2**40))
    yield "a tensor's data offset unaligned", put(offset_at, u64(struct.unpack_from("<Q", data, offset_at)[0] + 3))
    yield "a tensor name with control characters", put(name_at, b"\x1b[2J")
    yield "a tensor name not UTF-8", put(name_at, b"\xff\xfe")
    yield "a tensor name repeated", put(second[1][1], b"blocks.0.")
    yield "a tensor renamed to one no DiT has", put(name_at, b"SECRET")
    yield "bytes of another file after the magic", data[:4] + SECRET.encode() * 8


def truncations(data: bytes, rng: random.Random, count: int = 8) -> Iterator[tuple[str, bytes]]:
    """The file cut at fixed interesting lengths plus random ones (never the whole file)."""
    size = len(data)
    n = int.from_bytes(data[:8], "little") if data[:1] != b"P" else 0
    cuts = {1, 7, 8, 9, max(1, size // 2), size - 1}
    if 16 < n + 8 < size:
        cuts |= {8 + n // 2, 8 + n, 8 + n + 1}
    while len(cuts) < count + 6:
        cuts.add(rng.randrange(1, size))
    for cut in sorted(c for c in cuts if 0 < c < size):
        yield f"cut at {cut} of {size}", data[:cut]


def _with_metadata(data: bytes, key: str, value: str) -> bytes:
    header, body = split_safetensors(data)
    header.setdefault("__metadata__", {})[key] = value
    return join_safetensors(header, body)


def _with_tensor(data: bytes, name: str, dtype: str, raw: bytes) -> bytes:
    """The file with one more tensor appended at the end of the data section."""
    header, body = split_safetensors(data)
    header[name] = {"dtype": dtype, "shape": [len(raw) // {"U8": 1, "F32": 4}[dtype]],
                    "data_offsets": [len(body), len(body) + len(raw)]}
    return join_safetensors(header, body + raw)


def quant_config_mutations(data: bytes, layer: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of a ComfyUI-quantised safetensors file whose quantisation config (the _quantization_metadata
    header entry, a `<layer>.comfy_quant` tensor) is malformed or names what the file does not hold; `layer` is one
    of its quantised layers."""
    meta = lambda value: _with_metadata(data, "_quantization_metadata", value)  # noqa: E731
    layers = lambda conf: meta(json.dumps({"format_version": "1.0", "layers": {layer: conf}}))  # noqa: E731
    deep = "[" * 100_000 + "]" * 100_000
    yield "metadata nesting 100000 deep", meta('{"layers": ' + deep + "}")
    yield "metadata a JSON array", meta("[1, 2]")
    yield "metadata not JSON", meta(SECRET)
    yield "layers a list", meta(json.dumps({"layers": [layer]}))
    yield "a layer format no one defines", layers({"format": "int3_blockwise"})
    yield "a layer format a number", layers({"format": 7})
    yield "nvfp4 without its second scale", layers({"format": "nvfp4"})
    yield "convrot group size a string", layers({"format": "int8_tensorwise", "convrot": True,
                                                 "convrot_groupsize": "256"})
    quant = lambda raw, dtype="U8": _with_tensor(data, layer + ".comfy_quant", dtype, raw)  # noqa: E731
    yield "comfy_quant nesting 100000 deep", quant(('{"format": ' + deep + "}").encode())
    yield "comfy_quant not UTF-8", quant(b'{"format": "\xff\xfe"}')
    yield "comfy_quant not JSON", quant(SECRET.encode())
    yield "comfy_quant a JSON array", quant(b"[1]")
    yield "comfy_quant stored as float32", quant(struct.pack("<4f", 1, 2, 3, 4), "F32")


# ------------------------------------------------------------------------------------------ hostile pickles

class _Marker:
    """Unpickling this object would create the marker file (open(path, 'w')): it must never happen."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


class _System:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def hostile_pickles(valid: bytes, marker: Path) -> Iterator[tuple[str, bytes]]:
    """Pickles that would run code (or crash a naive reader) when loaded without weights_only."""
    import io

    import torch

    legacy = pickle.dumps({"weight": _Marker(marker)}, protocol=2)
    yield "legacy pickle calling open()", legacy
    yield "legacy pickle calling os.system", pickle.dumps([_System(marker)], protocol=2)
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buffer)
    yield "torch zip whose data.pkl calls open()", _replace_member(buffer.getvalue(), "data.pkl",
                                                                 pickle.dumps({"w": _Marker(marker)}, protocol=2))
    yield "torch zip whose data.pkl calls os.system", _replace_member(buffer.getvalue(), "data.pkl",
                                                                    pickle.dumps(_System(marker), protocol=2))
    yield "pickle nesting 100000 lists", _deep_pickle()
    yield "a state dict of plain numbers", pickle.dumps({"weight": 1.5, "note": SECRET}, protocol=2)
    yield "a list, not a dict", pickle.dumps([1, 2, 3], protocol=2)
    yield "a valid zip with data.pkl removed", _replace_member(valid, "data.pkl", None)
    yield "not a pickle at all", SECRET.encode() * 10
    yield "a TorchScript archive", _torchscript()


def _deep_pickle() -> bytes:
    # 100000 EMPTY_LISTs, then APPENDs folding each into the one below: lists nested 100000 deep.
    depth = 100_000
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def _replace_member(archive: bytes, suffix: str, content: bytes | None) -> bytes:
    import io

    src = zipfile.ZipFile(io.BytesIO(archive))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            if info.filename.endswith(suffix):
                if content is not None:
                    dst.writestr(info, content)
            else:
                dst.writestr(info, src.read(info))
    return out.getvalue()


def _torchscript() -> bytes:
    import io
    import warnings

    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; such files still circulate
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buffer)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ cases and checks

@dataclass(frozen=True)
class Case:
    """One hostile input: its category, a name, and how to lay it out in an empty case folder (returns the path
    the loader is given)."""

    category: str
    name: str
    build: Callable[[Path], Path]


def write_bytes(relative: str, data: bytes) -> Callable[[Path], Path]:
    """A builder that writes `data` at folder/relative and returns that path."""
    def build(folder: Path) -> Path:
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path
    return build


def copy_tree(source: Path, target: Path) -> None:
    """Copy a seed (file or folder) into a case folder."""
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def problem_with(message: str, exc: BaseException, case_folder: Path, expected_type: type) -> str | None:
    """Why a refusal is not our clear error (None when it is): our type, the file named, no raw type, no contents."""
    if not isinstance(exc, expected_type):
        return f"raised {type(exc).__name__}, not {expected_type.__name__}: {message[:300]}"
    if str(case_folder) not in message:
        return f"the message does not name the file: {message[:300]}"
    if RAW.search(message):
        return f"the message carries a raw error: {message[:300]}"
    if SECRET in message or OUTSIDE_SECRET in message:
        return f"the message echoes file contents: {message[:300]}"
    return None
