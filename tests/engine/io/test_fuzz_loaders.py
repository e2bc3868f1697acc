"""Fuzz every loader with hostile files: each case must end in our clear error (file named, no raw exception, no
file contents echoed), open nothing outside the model folder (seen by inotify, not assumed) and run no code
(no marker file). Bounded: a fixed, seeded list of cases per category and a time limit per case; the counts per
category are printed.

LOADERS is the table of loaders under test, one row per loader: a LoRA or VACE loader is added with one
`Loader(...)` line (its seed writer, its load call and its layout: "safetensors", "pth", "gguf" or "folder"); every
category of its layout then runs against it, plus the format's own cases when the row names an `extra` generator.
The counts per loader and category are printed at the end of the session (tests/engine/io/conftest.py).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch
from safetensors.torch import save_file

from fuzz_testing import (FUZZ_COUNTS, OUTSIDE_SECRET, SECRET, Case, OpenWatch, copy_tree, gguf_mutations,
                          header_mutations, hostile_pickles, problem_with, quant_config_mutations, truncations,
                          write_bytes)
from wan_core.dit.loader import load_dit
from wan_core.dit.model import DiTConfig
from wan_core.io.checkpoint import CheckpointError
from wan_core.testing.tiny import dit as tiny_dit
from wan_core.testing.tiny import gguf as tiny_gguf
from wan_core.testing.tiny import lora as tiny_lora
from wan_core.lora.files import read_lora
from wan_core.testing.tiny import t5 as tiny_t5
from wan_core.testing.tiny import upscaler as tiny_upscaler
from wan_core.testing.tiny import vae as tiny_vae
from wan_core.text.encoder import load_text_encoder
from wan_core.upscale.loader import load_upscale_model
from wan_core.vae.loader import load_vae

CASE_SECONDS = 60  # per case; a hang (e.g. a header declaring a billion blocks) fails instead of blocking the suite
SMALL_DIT = DiTConfig(dim=128, ffn_dim=128, num_heads=1, num_layers=2, text_dim=32)
SMALL_T5 = tiny_t5.tiny_t5_config(dim=64, dim_attn=64, dim_ffn=64, num_heads=2, num_layers=2)


# ------------------------------------------------------------------------------------------ seeds (valid files)

def _dit_sd() -> dict[str, torch.Tensor]:
    return {k: v.half() for k, v in tiny_dit.random_state_dict(SMALL_DIT, seed=1).items()}


def seed_dit_single(folder: Path) -> Path:
    path = folder / "wan2.2_t2v_high_noise_14B_fp16.safetensors"
    save_file(_dit_sd(), str(path), metadata={"note": SECRET})
    return path


def seed_dit_gguf(folder: Path) -> Path:
    path = folder / "wan2.2_t2v_high_noise_14B_Q8_0.gguf"
    tiny_gguf.write_gguf(path, tiny_dit.random_state_dict(SMALL_DIT, seed=1), "Q8_0")
    return path


QUANT_LAYER = "blocks.0.ffn.0"  # a layer the quantised seed stores in fp8 with a weight_scale


def seed_dit_quant(folder: Path) -> Path:
    path = folder / "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"
    return tiny_dit.write_quant_metadata_file(path, tiny_dit.random_state_dict(SMALL_DIT, seed=1))


def quant_cases(seed: "Seed") -> Iterator[Case]:
    """The quantised DiT's own category: malformed or lying quantisation configs."""
    data = seed.path.read_bytes()
    for name, raw in quant_config_mutations(data, QUANT_LAYER):
        yield Case("quant config", name, _copy_then(seed, lambda f, p, raw=raw: p.write_bytes(raw)))


def seed_lora(folder: Path) -> Path:
    path = folder / "wan2.2_t2v_lightx2v_4steps_lora_v1.1_high_noise.safetensors"
    return tiny_lora.write_lora(path, tiny_lora.random_lora(SMALL_DIT, seed=3))


SMALL_VACE = replace(SMALL_DIT, vace_layers=1)
VACE_BASE = "wan2.2_t2v_high_noise_14B_fp16.safetensors"  # the plain expert a module file is attached to


def seed_vace_merged(folder: Path) -> Path:
    path = folder / "wan2.2_fun_vace_high_noise_14B_fp16.safetensors"
    save_file({k: v.half() for k, v in tiny_dit.random_state_dict(SMALL_VACE, seed=5).items()}, str(path))
    return path


def seed_vace_module(folder: Path) -> Path:
    plain, module = tiny_dit.split_vace(tiny_dit.random_state_dict(SMALL_VACE, seed=6))
    save_file({k: v.half() for k, v in plain.items()}, str(folder / VACE_BASE))
    path = folder / "Wan2_2_Fun_VACE_module_A14B_HIGH_bf16.safetensors"
    save_file({k: v.bfloat16() for k, v in module.items()}, str(path))
    return path


def load_vace_module(path: Path) -> object:
    return load_dit(path.parent / VACE_BASE, vace_module=path)


def seed_dit_folder(folder: Path) -> Path:
    tiny_dit.write_official_folder(folder / "high_noise_model", _dit_sd(), SMALL_DIT)
    return folder / "high_noise_model" / "diffusion_pytorch_model.safetensors.index.json"


def seed_t5_safetensors(folder: Path) -> Path:
    path = folder / "umt5_xxl_fp16.safetensors"
    save_file(tiny_t5.comfy_state(SMALL_T5, seed=2), str(path), metadata={"note": SECRET})
    return path


def seed_t5_pth(folder: Path) -> Path:
    return tiny_t5.write_official_pth(folder / "models_t5_umt5-xxl-enc-bf16.pth", SMALL_T5, seed=2)


def seed_t5_folder(folder: Path) -> Path:
    return tiny_t5.write_hf_folder(folder / "umt5-xxl", SMALL_T5, seed=2)


def seed_vae_safetensors(folder: Path) -> Path:
    return tiny_vae.write_comfy_safetensors(folder / "wan_2.1_vae.safetensors")


def seed_vae_pth(folder: Path) -> Path:
    return tiny_vae.write_official_pth(folder / "Wan2.1_VAE.pth")


def seed_upscale_pth(folder: Path) -> Path:
    return tiny_upscaler.write_comfy_file(folder / "RealESRGAN_x4plus.pth")


def seed_upscale_safetensors(folder: Path) -> Path:
    path = folder / "4x_tiny.safetensors"
    save_file(tiny_upscaler.random_state_dict(), str(path), metadata={"note": SECRET})
    return path


@dataclass(frozen=True)
class Loader:
    """A loader under test: how to write a valid file for it, how to load (on the CPU), and its file layout."""

    name: str
    seed: Callable[[Path], Path]
    load: Callable[[Path], object]
    layout: str  # "safetensors", "pth", "gguf" or "folder"
    error: type = CheckpointError
    tokenizer: bool = False  # reads a spiece.model next to the weights
    extra: Callable[["Seed"], Iterator[Case]] | None = None  # the format's own cases (e.g. quantisation configs)
    accepts: frozenset[str] = frozenset()  # case names the format defines as valid (they must load)


LOADERS = [
    Loader("dit_single", seed_dit_single, load_dit, "safetensors"),
    Loader("dit_folder", seed_dit_folder, load_dit, "folder"),
    Loader("dit_gguf", seed_dit_gguf, load_dit, "gguf"),
    Loader("dit_quant", seed_dit_quant, load_dit, "safetensors", extra=quant_cases),
    Loader("lora_safetensors", seed_lora, lambda path: read_lora(path, SMALL_DIT), "safetensors",
           accepts=frozenset({"shape with an extra dim (same bytes)"})),  # LoRA files store Linear factors as [r, in, 1, 1] too
    Loader("vace_merged", seed_vace_merged, load_dit, "safetensors"),
    Loader("vace_module", seed_vace_module, load_vace_module, "safetensors"),
    Loader("t5_safetensors", seed_t5_safetensors, load_text_encoder, "safetensors"),
    Loader("t5_pth", seed_t5_pth, load_text_encoder, "pth", tokenizer=True),
    Loader("t5_folder", seed_t5_folder, load_text_encoder, "folder", tokenizer=True),
    Loader("vae_safetensors", seed_vae_safetensors, load_vae, "safetensors"),
    Loader("vae_pth", seed_vae_pth, load_vae, "pth"),
    Loader("upscale_pth", seed_upscale_pth, load_upscale_model, "pth"),
    Loader("upscale_safetensors", seed_upscale_safetensors, load_upscale_model, "safetensors"),
]


# ------------------------------------------------------------------------------------------ cases per layout

@dataclass(frozen=True)
class Seed:
    """A written seed: its folder, and the path the loader takes relative to it."""

    root: Path
    entry: str

    @property
    def path(self) -> Path:
        return self.root / self.entry


def _copy_then(seed: Seed, mutate: Callable[[Path, Path], None]) -> Callable[[Path], Path]:
    """A builder: the seed copied into the case folder, then `mutate(case folder, copied entry path)`."""
    def build(folder: Path) -> Path:
        for child in seed.root.iterdir():
            copy_tree(child, folder / child.name)
        path = folder / seed.entry
        mutate(folder, path)
        return path
    return build


def _first_shard(entry: Path) -> Path:
    folder = entry if entry.is_dir() else entry.parent
    return sorted(folder.glob("*.safetensors"))[0]


def file_cases(seed: Seed, loader: Loader, marker: Path, rng: random.Random) -> Iterator[Case]:
    """Cases for a single-file loader: truncations, header mutations or hostile pickles, empty file, folder."""
    data = seed.path.read_bytes()
    for name, raw in truncations(data, rng):
        yield Case("truncation", name, _copy_then(seed, lambda f, p, raw=raw: p.write_bytes(raw)))
    if loader.layout in ("safetensors", "gguf"):
        mutations = header_mutations(data, rng) if loader.layout == "safetensors" else gguf_mutations(seed.path)
        for name, raw in mutations:
            yield Case("header", name, _copy_then(seed, lambda f, p, raw=raw: p.write_bytes(raw)))
    else:
        for name, raw in hostile_pickles(data, marker):
            yield Case("pickle", name, _copy_then(seed, lambda f, p, raw=raw: p.write_bytes(raw)))
    yield Case("empty", "zero-byte file", write_bytes(seed.entry, b""))
    yield Case("directory", "an empty folder named as the file", lambda f: _mkdir(f / seed.entry))
    yield Case("directory", "a folder of junk named as the file",
               lambda f: _junk_folder(f / seed.entry, seed.path.suffix))


def folder_cases(seed: Seed, outside: Path, rng: random.Random) -> Iterator[Case]:
    """Cases for a folder loader: a shard truncated or with a broken header, indexes naming files outside, malformed
    indexes and configs, empty folders and shards that are folders."""
    shard = _first_shard(seed.path)
    data = shard.read_bytes()
    rel = shard.relative_to(seed.root)
    for name, raw in truncations(data, rng):
        yield Case("truncation", f"shard {name}", _copy_then(seed, lambda f, p, raw=raw: (f / rel).write_bytes(raw)))
    for name, raw in header_mutations(data, rng):
        yield Case("header", f"shard {name}", _copy_then(seed, lambda f, p, raw=raw: (f / rel).write_bytes(raw)))
    yield from _index_cases(seed, outside)
    if (seed.path.parent / "config.json").is_file() and seed.path.name.endswith(".index.json"):
        yield from _config_cases(seed)
    yield Case("empty", "zero-byte shard", _copy_then(seed, lambda f, p: (f / rel).write_bytes(b"")))
    top, *rest = Path(seed.entry).parts
    yield Case("empty", "an empty folder", lambda f: _mkdir(f / top).joinpath(*rest))
    yield Case("directory", "a shard that is a folder", _copy_then(seed, lambda f, p: _replace_by_folder(f / rel)))


def _index_path(entry: Path) -> Path:
    folder = entry if entry.is_dir() else entry.parent
    found = sorted(folder.glob("*.safetensors.index.json"))
    return found[0] if found else folder / "model.safetensors.index.json"


def _index_cases(seed: Seed, outside: Path) -> Iterator[Case]:
    def weight_map(entry: Path) -> dict[str, str]:
        index = _index_path(entry)
        if index.is_file():
            return json.loads(index.read_text())["weight_map"]
        from safetensors import safe_open

        shard = _first_shard(entry)
        with safe_open(str(shard), "pt") as f:
            return {k: shard.name for k in f.keys()}

    def pointing(make_name: Callable[[Path], str]) -> Callable[[Path, Path], None]:
        def mutate(_folder: Path, entry: Path) -> None:
            index = _index_path(entry)
            wm = weight_map(entry)
            first = sorted(wm)[0]
            wm[first] = make_name(index.parent)
            index.write_text(json.dumps({"metadata": {}, "weight_map": wm}))
        return mutate

    def raw_index(content: bytes) -> Callable[[Path, Path], None]:
        return lambda _folder, entry: _index_path(entry).write_bytes(content)

    rel = lambda d: os.path.relpath(outside, d)  # noqa: E731
    for name, make in [
        ("a shard named ../../ outside the folder", rel),
        ("a shard named by its absolute path outside", lambda d: str(outside)),
        ("a shard named sub/../../ outside", lambda d: "sub/" + rel(d)),
        ("a shard named with backslashes outside", lambda d: rel(d).replace("/", "\\")),
        ("a shard named C:\\ (a Windows drive)", lambda d: "C:\\Windows\\secret.safetensors"),
        ("a shard named with a NUL byte", lambda d: "shard\x00.safetensors"),
    ]:
        yield Case("index", name, _copy_then(seed, pointing(make)))
    for name, content in [
        ("index a JSON array", b"[1, 2, 3]"),
        ("index without weight_map", json.dumps({"metadata": {"x": SECRET}}).encode()),
        ("weight_map an array", b'{"weight_map": ["a", "b"]}'),
        ("weight_map values not strings", b'{"weight_map": {"patch_embedding.weight": 5}}'),
        ("weight_map values objects", b'{"weight_map": {"patch_embedding.weight": {"a": 1}}}'),
        ("weight_map empty", b'{"weight_map": {}}'),
        ("index nesting 100000 deep", b'{"weight_map": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        ("index not UTF-8", b'{"weight_map": {"\xff\xfe": "x"}}'),
        ("index empty", b""),
        ("index truncated", b'{"weight_map": {"patch_embedding.weight": "diffusion_'),
    ]:
        yield Case("index", name, _copy_then(seed, raw_index(content)))


def _config_cases(seed: Seed) -> Iterator[Case]:
    valid = json.loads((seed.path.parent / "config.json").read_text())
    for name, content in [
        ("config a JSON array", b"[]"),
        ("config nesting 100000 deep", b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        ("config not UTF-8", b'{"\xff": 1}'),
        ("config empty", b""),
        ("num_heads a string", json.dumps({**valid, "num_heads": "forty"}).encode()),
        ("num_heads a list", json.dumps({**valid, "num_heads": [40]}).encode()),
        ("num_heads not dividing the width", json.dumps({**valid, "num_heads": 3}).encode()),
        ("text_len 10**12", json.dumps({**valid, "text_len": 10**12}).encode()),
        ("eps negative", json.dumps({**valid, "eps": -1.0}).encode()),
    ]:
        yield Case("config", name, _copy_then(seed, lambda f, p, c=content: (p.parent / "config.json").write_bytes(c)))


def tokenizer_cases(seed: Seed) -> Iterator[Case]:
    """Cases for loaders that read spiece.model next to the weights."""
    def spiece(entry: Path) -> Path:
        base = entry if entry.is_dir() else entry.parent
        return next(p for p in (base / "spiece.model", base / "google" / "umt5-xxl" / "spiece.model") if p.exists())

    for name, mutate in [
        ("spiece.model garbage", lambda f, p: spiece(p).write_bytes(SECRET.encode() * 50)),
        ("spiece.model empty", lambda f, p: spiece(p).write_bytes(b"")),
        ("spiece.model truncated", lambda f, p: spiece(p).write_bytes(spiece(p).read_bytes()[:100])),
        ("spiece.model a folder", lambda f, p: _replace_by_folder(spiece(p))),
    ]:
        yield Case("tokenizer", name, _copy_then(seed, mutate))


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _junk_folder(path: Path, suffix: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / f"junk{suffix}").write_bytes(SECRET.encode() * 3)
    return path


def _replace_by_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


# ------------------------------------------------------------------------------------------ running

@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise TimeoutError in the test if the block takes longer than `seconds` (a hang becomes a failure)."""
    def expire(_signum, _frame):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def arena(tmp_path_factory) -> dict[str, Path]:
    """Seeds, the folder outside the model folders (a valid safetensors file there, watched) and marker paths."""
    root = tmp_path_factory.mktemp("fuzz")
    outside_dir = root / "outside"
    outside_dir.mkdir()
    save_file({"patch_embedding.weight": torch.zeros(2)}, str(outside_dir / "secret.safetensors"),
              metadata={"note": OUTSIDE_SECRET})
    torch.save({"weight": torch.zeros(2)}, outside_dir / "secret.pth")
    return {"root": root, "outside": outside_dir / "secret.safetensors", "markers": _mkdir(root / "markers")}


def cases_for(loader: Loader, seed: Seed, arena: dict[str, Path]) -> list[Case]:
    rng = random.Random(f"fuzz-{loader.name}")
    marker = arena["markers"] / f"{loader.name}.marker"
    cases = list(folder_cases(seed, arena["outside"], rng) if loader.layout == "folder"
                 else file_cases(seed, loader, marker, rng))
    if loader.tokenizer:
        cases += list(tokenizer_cases(seed))
    if loader.extra is not None:
        cases += list(loader.extra(seed))
    return cases


@pytest.mark.parametrize("loader", LOADERS, ids=[l.name for l in LOADERS])
def test_every_hostile_file_gets_our_clear_error_and_touches_nothing_outside(loader: Loader, arena):
    seed_root_dir = _mkdir(arena["root"] / f"seed_{loader.name}")
    seed = Seed(seed_root_dir, str(loader.seed(seed_root_dir).relative_to(seed_root_dir)))
    loader.load(seed.path)  # the seed itself loads: every failure below comes from its mutation
    watch = OpenWatch(arena["outside"].parent)
    marker = arena["markers"] / f"{loader.name}.marker"
    counts: Counter[str] = Counter()
    failures: list[str] = []
    try:
        for i, case in enumerate(cases_for(loader, seed, arena)):
            folder = _mkdir(arena["root"] / "models" / f"{loader.name}_{i:03d}")
            path = case.build(folder)
            watch.take()
            problem = _outcome(loader, path, folder)
            if case.name in loader.accepts:
                problem = None if problem == "loaded without an error" else f"a valid file was refused: {problem}"
            opened = watch.take()
            if opened:
                problem = f"opened {sorted(set(opened))} outside the model folder"
            if marker.exists():
                problem = "a pickle ran code (the marker file appeared)"
                marker.unlink()
            counts[case.category] += 1
            if problem:
                failures.append(f"[{case.category}] {case.name}: {problem}")
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        watch.close()
    FUZZ_COUNTS[loader.name] = dict(counts)
    print(f"\n{loader.name}: " + ", ".join(f"{c} {n}" for c, n in sorted(counts.items())) + f" ({sum(counts.values())} cases)")
    assert failures == [], "\n".join(failures)
    expected = {"safetensors": {"truncation", "header", "empty", "directory"},
                "gguf": {"truncation", "header", "empty", "directory"},
                "pth": {"truncation", "pickle", "empty", "directory"},
                "folder": {"truncation", "header", "index", "empty", "directory"}}[loader.layout]
    assert expected <= set(counts) and (loader.extra is None or len(set(counts) - expected - {"tokenizer"}) == 1)


def _outcome(loader: Loader, path: Path, folder: Path) -> str | None:
    try:
        with time_limit(CASE_SECONDS):
            loader.load(path)
    except Exception as exc:  # noqa: BLE001 - classifying what the loader raised is the point
        return problem_with(str(exc), exc, folder, loader.error)
    return "loaded without an error"


def test_the_open_watch_sees_opens_from_python_and_from_rust(arena):
    """The 'nothing outside was opened' check above is real: inotify reports opens from Python, Rust and C++."""
    from safetensors import safe_open

    watch = OpenWatch(arena["outside"].parent)
    try:
        assert watch.take() == []
        with open(arena["outside"], "rb"):
            pass
        assert "secret.safetensors" in watch.take()
        with safe_open(str(arena["outside"]), "pt") as f:
            list(f.keys())
        assert "secret.safetensors" in watch.take()
        torch.load(arena["outside"].with_suffix(".pth"), weights_only=True, mmap=True)  # opened by C++
        assert "secret.pth" in watch.take()
    finally:
        watch.close()
