"""Reading checkpoint tensors straight into their final tensors on the target device, chunk by chunk.

Safetensors and GGUF tensors are read with plain file reads at their byte offsets (a memory map would keep
the whole file resident as page cache charged to the process); .pth sources are sliced from torch.load's mmap.
Conversions (dtype, fp8 scale, requantisation to fp8) go through one reusable staging buffer, so RAM holds the
final tensors plus a few chunk-sized temporaries, whatever the model size.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import BinaryIO, Iterator

import torch

from .checkpoint import INDEX_SUFFIX, SAFETENSORS_DTYPES, Checkpoint, CheckpointError, TensorInfo, read_index
from .safe import read_safetensors_header, shown


def byte_locations(path: Path) -> dict[str, tuple[Path, int, int]]:
    """Stored key -> (file, byte offset, byte length) of a safetensors file, folder or index, or of a GGUF file, from
    validated headers (shards contained in their folder, io.safe); {} for pickles, whose tensors come through torch."""
    if path.name.lower().endswith(".gguf"):
        from .gguf import locations

        return locations(path)
    if path.is_dir():
        indexes = sorted(path.glob("*" + INDEX_SUFFIX))
        if indexes:
            weight_map = read_index(indexes[0])
            files = sorted(set(weight_map.values()))
        else:
            weight_map, files = None, sorted(path.glob("*.safetensors"))
    elif path.name.lower().endswith(INDEX_SUFFIX):
        weight_map = read_index(path)
        files = sorted(set(weight_map.values()))
    elif path.name.lower().endswith((".safetensors", ".sft")):
        weight_map, files = None, [path]
    else:
        return {}
    locations = {}
    for file in files:
        header = read_safetensors_header(file, SAFETENSORS_DTYPES)
        for key, t in header.tensors.items():
            if weight_map is None or weight_map.get(key) == file:
                locations[key] = (file, header.data_start + t.start, t.end - t.start)
    return locations


_STAGING_BYTES = 4 << 20  # one reusable read buffer
_CHUNK_ELEMENTS = 1 << 20  # elements converted at a time: a 4 MiB float32 work buffer


class TensorReader:
    """Reads stored tensors with plain file reads (nothing mmapped stays resident), converting chunk by chunk
    through one reusable buffer, so RAM holds the final tensors plus at most a few chunk-sized temporaries.

    `ckpt` names tensors as the loader wants them; `source` maps those names to the keys stored in the file."""

    def __init__(self, ckpt: Checkpoint, source: dict[str, str], device: torch.device) -> None:
        self.ckpt, self.source, self.device = ckpt, source, device
        self.locations = byte_locations(Path(ckpt.path))
        self.files: dict[Path, BinaryIO] = {}
        self._staging: torch.Tensor | None = None
        self._work: torch.Tensor | None = None

    def info(self, key: str) -> TensorInfo:
        return self.ckpt.infos[key]

    def _read_bytes(self, key: str, offset: int, out: torch.Tensor) -> None:
        """Fill the uint8 tensor `out` with the stored bytes of `key` starting `offset` bytes into it."""
        stored = self.source[key]
        file, start, nbytes = self.locations[stored]
        try:
            handle = self.files.get(file) or self.files.setdefault(file, open(file, "rb"))
            handle.seek(start + offset)
            got = handle.readinto(out.numpy())
        except OSError as exc:
            raise CheckpointError(f"{file}: could not read tensor {shown(stored)} ({exc.strerror}). Check that the file is still "
                                  "there and readable.") from exc
        if got != out.numel():
            raise CheckpointError(f"{file}: tensor {shown(stored)} ends after {offset + got} of {nbytes} bytes; the file "
                                  "is truncated. Download it again.")

    def chunks(self, key: str) -> Iterator[tuple[int, torch.Tensor]]:
        """(element offset, flat chunk in the stored dtype on the device), valid until the next chunk."""
        info = self.info(key)
        numel = math.prod(info.shape)
        itemsize = info.dtype.itemsize
        step = min(_CHUNK_ELEMENTS, _STAGING_BYTES // itemsize)
        stored = self.source[key]
        if stored not in self.locations:  # .pth: slices of torch.load(mmap=True) views
            flat = self.ckpt.get(key).reshape(-1)
            for start in range(0, numel, step):
                yield start, flat[start:start + step].to(self.device)
            return
        nbytes = self.locations[stored][2]
        if nbytes != numel * itemsize:
            raise CheckpointError(f"{self.locations[stored][0]}: tensor {shown(stored)} stores {nbytes} bytes for shape "
                                  f"{list(info.shape)} {info.dtype}; the file is corrupt. Download it again.")
        if self._staging is None:
            self._staging = torch.empty(_STAGING_BYTES, dtype=torch.uint8, pin_memory=self.device.type == "cuda")
        for start in range(0, numel, step):
            count = min(step, numel - start)
            buffer = self._staging[: count * itemsize]
            self._read_bytes(key, start * itemsize, buffer)
            yield start, buffer.view(info.dtype).to(self.device)

    def read(self, key: str, dtype: torch.dtype | None = None, scale: torch.Tensor | None = None) -> torch.Tensor:
        """The whole tensor on the device as `dtype` (stored dtype if None), times `scale` (in float32) if given."""
        info = self.info(key)
        dtype = dtype or info.dtype
        out = torch.empty(info.shape, dtype=dtype, device=self.device)
        flat = out.view(-1)
        if scale is None and dtype == info.dtype and self.device.type == "cpu" \
                and self.source[key] in self.locations:
            if flat.numel():  # straight from the file into the final tensor
                self._read_bytes(key, 0, flat.view(torch.uint8))
            return out
        for start, chunk in self.chunks(key):
            flat[start:start + chunk.numel()].copy_(chunk if scale is None else self._scaled(chunk, scale))
        return out

    def _scaled(self, chunk: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        """chunk × scale in float32, in a reusable work buffer (no per-chunk allocations to fragment the heap)."""
        if self._work is None:
            self._work = torch.empty(_CHUNK_ELEMENTS, dtype=torch.float32, device=self.device)
        work = self._work[: chunk.numel()]
        work.copy_(chunk)
        return work.mul_(scale) if scale is not None else work

    def quantized(self, key: str, storage: torch.dtype, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-tensor scaled fp8 of (stored value × scale): quant.quantize_fp8's arithmetic, streamed in two passes."""
        amax = torch.zeros((), dtype=torch.float32, device=self.device)
        for _, chunk in self.chunks(key):
            if chunk.numel():
                amax = torch.maximum(amax, self._scaled(chunk, scale).abs_().amax())
        new_scale = amax.clamp(min=1e-12) / torch.finfo(storage).max
        out = torch.empty(self.info(key).shape, dtype=storage, device=self.device)
        flat = out.view(-1)
        for start, chunk in self.chunks(key):
            flat[start:start + chunk.numel()].copy_(self._scaled(chunk, scale).div_(new_scale))
        return out, new_scale.reshape(())

    def raw(self, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """The stored bytes of `key` as a `shape` `dtype` tensor on the device (packed formats, reinterpreted scales)."""
        stored = self.source[key]
        if stored not in self.locations:
            return self.ckpt.get(key).contiguous().view(torch.uint8).reshape(-1).view(dtype).reshape(shape).to(self.device)
        nbytes = self.locations[stored][2]
        if nbytes != math.prod(shape) * dtype.itemsize:
            raise CheckpointError(f"{self.locations[stored][0]}: tensor {shown(stored)} stores {nbytes} bytes; its format "
                                  f"needs {math.prod(shape) * dtype.itemsize} for {list(shape)} {dtype}. The file is "
                                  "corrupt; download it again.")
        out = torch.empty(nbytes, dtype=torch.uint8)
        if nbytes:
            self._read_bytes(key, 0, out)
        return out.view(dtype).reshape(shape).to(self.device)

    def scalar(self, key: str) -> torch.Tensor:
        """A one-value tensor (an fp8 scale) as a float32 scalar on the device."""
        return self.read(key, torch.float32).reshape(())

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()
        self.files.clear()
