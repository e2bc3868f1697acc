"""Prompt-embedding cache: hits skip the encoder (and its loading); file or dtype changes miss; disk store is safetensors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from wan_core.text.prompt_cache import PromptCache, cache_key, key_hash
from wan_core.text.t5 import T5Config
from wan_core.text.encoder import TextEncoder, encoder_identity, load_text_encoder
from wan_core.testing.tiny import t5 as tiny

SMALL = T5Config(vocab=tiny.SPM_VOCAB, dim=32, dim_attn=16, dim_ffn=24, num_heads=2, num_layers=1)


class Counting:
    """Loads the encoder on first call and counts loads and encoder runs."""

    def __init__(self, path: Path, dtype: str = "auto") -> None:
        self.path, self.dtype = path, dtype
        self.loads = self.runs = 0
        self.encoder: TextEncoder | None = None

    def __call__(self) -> TextEncoder:
        self.loads += 1
        if self.encoder is None:
            self.encoder = load_text_encoder(self.path, dtype=self.dtype)
            real = self.encoder.encode

            def counted(prompts):
                self.runs += 1
                return real(prompts)

            self.encoder.encode = counted  # type: ignore[method-assign]
        return self.encoder

    @property
    def identity(self) -> tuple:
        return encoder_identity(self.path, self.dtype)


@pytest.fixture()
def encoder_file(tmp_path) -> Path:
    return tiny.write_comfy(tmp_path / "umt5_xxl_fp16.safetensors", SMALL, seed=0, dtype=torch.float32)


def test_second_encode_does_not_run_or_load_the_encoder(encoder_file):
    cache, enc = PromptCache(), Counting(encoder_file)
    first = cache.encode_prompts(["A cat walks in the garden", "一只猫"], enc.identity, enc)
    assert (enc.loads, enc.runs) == (1, 1)
    again = cache.encode_prompts(["A cat walks in the garden", "  A cat walks  in the garden\n"], enc.identity, enc)
    assert (enc.loads, enc.runs) == (1, 1)  # same cleaned prompt: a hit, the loader is not even called
    assert torch.equal(again.embeddings[0], first.embeddings[0]) and torch.equal(again.embeddings[1], first.embeddings[0])
    mixed = cache.encode_prompts(["一只猫", "a new prompt"], enc.identity, enc)
    assert (enc.loads, enc.runs) == (2, 2) and torch.equal(mixed.embeddings[0], first.embeddings[1])
    assert cache.hits == 3 and cache.misses == 3
    assert enc.encoder is not None and enc.identity == enc.encoder.identity


def test_changing_file_or_dtype_misses(encoder_file, tmp_path):
    cache = PromptCache()
    a = Counting(encoder_file)
    cache.encode_prompts(["a cat"], a.identity, a)
    b = Counting(encoder_file, dtype="bf16")
    out_b = cache.encode_prompts(["a cat"], b.identity, b)
    assert b.runs == 1
    other = tiny.write_comfy(tmp_path / "other.safetensors", SMALL, seed=1, dtype=torch.float32)
    c = Counting(other)
    out_c = cache.encode_prompts(["a cat"], c.identity, c)
    assert c.runs == 1
    assert not torch.equal(out_b.embeddings[0], out_c.embeddings[0])
    # the same path rewritten (new size/mtime) is another file
    os.utime(encoder_file, ns=(1, 1))
    d = Counting(encoder_file)
    cache.encode_prompts(["a cat"], d.identity, d)
    assert d.runs == 1


def test_lru_eviction_and_keys(encoder_file):
    cache, enc = PromptCache(max_entries=2), Counting(encoder_file)
    for p in ("one", "two", "three"):
        cache.encode_prompts([p], enc.identity, enc)
    assert len(cache) == 2 and cache.get(cache_key(enc.identity, "one")) is None
    assert cache.get(cache_key(enc.identity, "three")) is not None
    assert cache_key(enc.identity, "Tom &amp;amp; Jerry ") == cache_key(enc.identity, "Tom & Jerry")
    assert key_hash(cache_key(enc.identity, "x")) != key_hash(cache_key(enc.identity, "y"))


def test_disk_cache_is_safetensors_and_survives_a_new_process(encoder_file, tmp_path):
    disk = tmp_path / "prompt_cache"
    enc = Counting(encoder_file)
    long_prompt = " ".join(["a cat walks in the sunny garden"] * 80)
    first = PromptCache(disk_dir=disk).encode_prompts(["a cat", long_prompt], enc.identity, enc)
    assert first.dropped[0] == 0 and first.dropped[1] > 0
    files = sorted(disk.iterdir())
    assert len(files) == 2 and all(f.suffix == ".safetensors" for f in files)
    assert all(f.read_bytes()[8:9] == b"{" for f in files)  # safetensors header, not a pickle
    fresh, enc2 = PromptCache(disk_dir=disk), Counting(encoder_file)
    second = fresh.encode_prompts(["a cat", long_prompt], enc2.identity, enc2)
    assert enc2.loads == 0
    assert all(torch.equal(x, y) for x, y in zip(first.embeddings, second.embeddings))
    assert second.dropped == first.dropped and second.warnings() and "dropped" in second.warnings()[0]
    files[0].write_bytes(b"garbage")  # a damaged entry is a miss, never an error
    third, enc3 = PromptCache(disk_dir=disk), Counting(encoder_file)
    third.encode_prompts(["a cat", long_prompt], enc3.identity, enc3)
    assert enc3.runs == 1


def test_embeddings_match_direct_encode(encoder_file):
    cache, enc = PromptCache(), Counting(encoder_file)
    got = cache.encode_prompts(["a cat", "熊猫吃竹子"], enc.identity, enc)
    direct = load_text_encoder(encoder_file).encode(["a cat", "熊猫吃竹子"])
    assert all(torch.equal(x, y) for x, y in zip(got.embeddings, direct.embeddings))
    assert all(e.dtype == torch.float32 and e.device.type == "cpu" and e.shape[1] == 32 for e in got.embeddings)
