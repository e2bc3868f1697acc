"""Prompt-embedding cache: in-memory LRU plus an optional on-disk safetensors store.

Keys are (encoder identity, cleaned prompt), where the identity (`text_encoder.encoder_identity`: file identity,
requested dtype, tokenizer file) is known without loading the encoder; the encoder is loaded only on a miss,
through the `load_encoder` callable. Disk entries are safetensors files (never pickles) named by a hash of the key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Sequence

import torch

from .encoder import EncodeResult, TextEncoder
from .tokenizer import clean_prompt

log = logging.getLogger(__name__)

CacheKey = tuple[tuple, str]


def cache_key(identity: tuple, prompt: str) -> CacheKey:
    """Key of one prompt: the encoder identity and the cleaned prompt."""
    return (tuple(identity), clean_prompt(prompt))


def key_hash(key: CacheKey) -> str:
    """Stable hex digest of a key (names the on-disk entry)."""
    return hashlib.sha256(json.dumps(key, default=str, ensure_ascii=False).encode("utf-8")).hexdigest()


class PromptCache:
    """LRU of prompt embeddings (float32 CPU [L, dim] + dropped-token count), bounded by entries and bytes."""

    def __init__(self, max_entries: int = 64, max_bytes: int = 1 << 30, disk_dir: str | os.PathLike | None = None) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        self._mem: OrderedDict[CacheKey, tuple[torch.Tensor, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._mem)

    def clear(self) -> None:
        """Forget every in-memory entry (disk entries stay)."""
        with self._lock:
            self._mem.clear()

    def _disk_path(self, key: CacheKey) -> Path | None:
        return self.disk_dir / f"{key_hash(key)}.safetensors" if self.disk_dir is not None else None

    def get(self, key: CacheKey) -> tuple[torch.Tensor, int] | None:
        """(embedding, dropped) for a key from memory, then disk; None on a miss."""
        with self._lock:
            if key in self._mem:
                self._mem.move_to_end(key)
                return self._mem[key]
        path = self._disk_path(key)
        if path is not None and path.is_file():
            try:
                from safetensors import safe_open

                with safe_open(str(path), framework="pt", device="cpu") as f:
                    meta = f.metadata() or {}
                    if meta.get("key") == json.dumps(key, default=str, ensure_ascii=False):
                        value = (f.get_tensor("context"), int(meta.get("dropped", "0")))
                        self._remember(key, value)
                        return value
            except Exception as exc:  # a damaged cache file is a miss, never an error
                log.warning("ignoring unreadable prompt-cache file %s (%s)", path, exc)
        return None

    def _remember(self, key: CacheKey, value: tuple[torch.Tensor, int]) -> None:
        with self._lock:
            self._mem[key] = value
            self._mem.move_to_end(key)
            total = sum(v[0].numel() * v[0].element_size() for v in self._mem.values())
            while self._mem and (len(self._mem) > self.max_entries or total > self.max_bytes) and len(self._mem) > 1:
                _, old = self._mem.popitem(last=False)
                total -= old[0].numel() * old[0].element_size()

    def put(self, key: CacheKey, embedding: torch.Tensor, dropped: int = 0) -> None:
        """Store an embedding in memory and, when a disk directory is set, as a safetensors file."""
        value = (embedding.detach().to("cpu", torch.float32).contiguous(), int(dropped))
        self._remember(key, value)
        path = self._disk_path(key)
        if path is not None:
            from safetensors.torch import save_file

            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            meta = {"key": json.dumps(key, default=str, ensure_ascii=False), "dropped": str(value[1])}
            save_file({"context": value[0]}, str(tmp), metadata=meta)
            os.replace(tmp, path)

    def encode_prompts(self, prompts: Sequence[str], identity: tuple,
                       load_encoder: Callable[[], TextEncoder]) -> EncodeResult:
        """Embeddings of prompts, running (and loading) the encoder only for the ones not cached."""
        keys = [cache_key(identity, p) for p in prompts]
        found = {k: v for k in dict.fromkeys(keys) if (v := self.get(k)) is not None}
        todo = [k for k in dict.fromkeys(keys) if k not in found]
        self.hits += len(keys) - sum(1 for k in keys if k in todo)
        self.misses += len(todo)
        if todo:
            encoder = load_encoder()
            raw = {}
            for k, p in zip(keys, prompts):  # the raw text: cleaning is not idempotent (triple-escaped HTML)
                raw.setdefault(k, p)
            result = encoder.encode([raw[k] for k in todo])
            for k, emb, dropped in zip(todo, result.embeddings, result.dropped):
                self.put(k, emb, dropped)
                found[k] = (emb, dropped)
        return EncodeResult([found[k][0] for k in keys], [found[k][1] for k in keys], [k[1] for k in keys])


DEFAULT_CACHE = PromptCache()
