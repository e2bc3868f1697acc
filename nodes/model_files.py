"""Model-file choices for the loader combos, from ComfyUI's model folders (diffusion_models, text_encoders, vae, diffusers,
and `vace` for VACE module files, registered here as models/vace).

Each dropdown lists what its loader reads, once:
  * single files ComfyUI lists in the folder (plus `.gguf` experts, which ComfyUI's own lists leave out);
  * model folders as one entry each, never their shards or other files: an official expert folder by its
    `diffusion_pytorch_model.safetensors.index.json` (the long-standing entry), a Hugging Face text-encoder
    folder (`config.json` of a (U)MT5 encoder + weights) by the folder itself;
  * a diffusers pipeline folder (`model_index.json`: `transformer/`, `transformer_2/`, `text_encoder/` with
    `tokenizer/` beside it, `vae/`) wherever it sits (diffusion_models/ or diffusers/): its experts in the expert
    dropdowns, `.../text_encoder` in the text-encoder dropdown, `.../vae` in the VAE dropdown, nothing else;
  * VACE module files: models/vace and the single files of diffusion_models, after 'none'.
A folder is told apart by its config.json (`_class_name` / `architectures`), not by its name.
"""

from __future__ import annotations

import json
import os
import re

import folder_paths

from ..wan_core import api

INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
NO_MODULE = "none"
VACE_FOLDER = "vace"  # where some users keep VACE module files (models/vace); diffusion_models is searched too
WEIGHT_EXTENSIONS = {".safetensors", ".sft", ".pth", ".pt"}
_SHARD = re.compile(r"-\d{5}-of-\d{5}\.safetensors$")
_WEIGHTS = (".safetensors", ".sft", ".bin", ".pth", ".gguf")
_KINDS = {"WanModel": "dit", "WanTransformer3DModel": "dit", "UMT5EncoderModel": "text_encoder",
          "T5EncoderModel": "text_encoder", "AutoencoderKLWan": "vae"}
FOLDER_OF = {"dit": "diffusion_models", "text_encoder": "text_encoders", "vae": "vae"}
KIND_OF = {folder: kind for kind, folder in FOLDER_OF.items()}
# Model folders that may hold a pipeline (or other folder models) of each kind, in search order.
_ROOTS = {"dit": ("diffusion_models", "diffusers"), "text_encoder": ("text_encoders", "diffusion_models", "diffusers"),
          "vae": ("vae", "diffusion_models", "diffusers")}


def _roots(folder: str) -> list[str]:
    try:
        return [p for p in folder_paths.get_folder_paths(folder) if os.path.isdir(p)]
    except KeyError:  # a model folder this ComfyUI does not register
        return []


def _folder_kind(path: str, files: list[str]) -> str | None:
    """'dit' / 'text_encoder' / 'vae' for a folder holding one model (config.json + weights), else None."""
    if INDEX_NAME in files and "config.json" not in files:
        return "dit"  # an expert folder without its config.json (the DiT loader reads the shapes)
    if "config.json" not in files or not any(f.endswith(_WEIGHTS) or f.endswith(".index.json") for f in files):
        return None
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    names = [config.get("_class_name")] + list(config.get("architectures") or []) if isinstance(config, dict) else []
    return next((_KINDS[n] for n in names if n in _KINDS), None)


def _entry(path: str, kind: str, root: str) -> str:
    """The dropdown name of a model folder: an expert folder by its index file when it has one, else the folder."""
    rel = os.path.relpath(path, root).replace(os.sep, "/")
    return f"{rel}/{INDEX_NAME}" if kind == "dit" and os.path.isfile(os.path.join(path, INDEX_NAME)) else rel


def _scan(root: str) -> tuple[dict[str, dict[str, str]], set[str]]:
    """Folder models under one root: kind -> {entry: absolute folder}, and every file path inside them."""
    found: dict[str, dict[str, str]] = {kind: {} for kind in FOLDER_OF}
    inside: set[str] = set()
    for path, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        kind = _folder_kind(path, files) if path != root else None
        if kind is None and "model_index.json" in files and path != root:  # a diffusers pipeline: its files are its parts'
            inside.update(os.path.join(path, f) for f in files)
            continue
        if kind is None:
            continue
        found[kind][_entry(path, kind, root)] = path
        for sub, _, sub_files in os.walk(path, followlinks=True):
            inside.update(os.path.join(sub, f) for f in sub_files)
        dirs[:] = []
    return found, inside


def _folder_models(kind: str) -> tuple[dict[str, str], set[str]]:
    """Entries of `kind` from every root that may hold them, and the files inside any folder model."""
    entries: dict[str, str] = {}
    inside: set[str] = set()
    for folder in dict.fromkeys(_ROOTS[kind] + (FOLDER_OF[kind],)):
        for root in _roots(folder):
            found, files = _scan(root)
            inside |= files
            for entry, path in found[kind].items():
                entries.setdefault(entry, path)
    return entries, inside


def _single_files(folder: str) -> dict[str, str]:
    """File entries ComfyUI lists in `folder`, plus .gguf files (ComfyUI's lists leave them out): entry -> path."""
    out: dict[str, str] = {}
    for name in folder_paths.get_filename_list(folder):
        path = folder_paths.get_full_path(folder, name)
        if path is not None:
            out.setdefault(name, path)
    if folder == "diffusion_models":
        for root in _roots(folder):
            for path, dirs, files in os.walk(root, followlinks=True):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                for f in files:
                    if f.lower().endswith(".gguf"):
                        out.setdefault(os.path.relpath(os.path.join(path, f), root).replace(os.sep, "/"), os.path.join(path, f))
    return out


def model_entries(folder: str) -> dict[str, str]:
    """Dropdown entry -> absolute path for one loader's folder (diffusion_models, text_encoders, vae)."""
    kind = KIND_OF.get(folder)
    if kind is None:
        return _single_files(folder)
    entries, inside = _folder_models(kind)
    inside = {os.path.abspath(p) for p in inside}
    for name, path in _single_files(folder).items():
        if not _SHARD.search(name) and os.path.abspath(path) not in inside:
            entries.setdefault(name, path)
    return dict(sorted(entries.items()))


def diffusion_model_choices() -> list[str]:
    """Expert dropdown: single-file DiTs (.safetensors, .gguf, ...) and expert folders, shards and other parts left out."""
    return list(model_entries("diffusion_models"))


def file_choices(folder: str) -> list[str]:
    """Dropdown of one model folder (text_encoders, vae, upscale_models ...): files and folder models."""
    return list(model_entries(folder))


def full_path(folder: str, name: str) -> str:
    """Absolute path of a chosen entry; a readable FileNotFoundError naming the folder when it is not there."""
    path = model_entries(folder).get(name) or folder_paths.get_full_path(folder, name)
    if path is None:
        where = ", ".join(folder_paths.get_folder_paths(folder)) or f"models/{folder}"
        raise FileNotFoundError(f"'{name}' is not in the {folder} model folder ({where}). Put the file there or pick another.")
    return path


def fingerprint(folder: str, name: object) -> object:
    """What identifies the chosen file's contents (api.file_identity: path, size, mtime, inode, ctime), so ComfyUI
    re-runs a loader and everything after it when the file was replaced, even by one with equal size and mtime."""
    path = folder_paths.get_full_path(folder, name) if isinstance(name, str) else None
    if path is None:
        return name  # not there: validation or execute reports it
    try:
        return api.file_identity(path)
    except ValueError:
        return name


def not_listed(folder: str, name: str, choices: list[str]) -> str | None:
    """A user-facing message when `name` is not among `choices`, else None."""
    if name in choices:
        return None
    where = ", ".join(folder_paths.get_folder_paths(folder)) or f"models/{folder}"
    if not choices:
        return f"no model files found in the {folder} folder ({where}); put '{name}' there and refresh (press R)"
    return f"'{name}' is not in the {folder} folder ({where}); download it there or pick one of the listed files"


def lora_choices() -> list[str]:
    """"None" (no LoRA on that expert) and the files in ComfyUI's loras folders."""
    from ..wan_core.config import NO_LORA

    return [NO_LORA] + folder_paths.get_filename_list("loras")


def _vace_folder() -> str:
    """Register models/vace with ComfyUI (once) and return the folder name."""
    if VACE_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(VACE_FOLDER, os.path.join(folder_paths.models_dir, VACE_FOLDER))
        paths, _ = folder_paths.folder_names_and_paths[VACE_FOLDER]
        folder_paths.folder_names_and_paths[VACE_FOLDER] = (paths, set(WEIGHT_EXTENSIONS))
    return VACE_FOLDER


def vace_module_choices() -> list[str]:
    """'none', then the files of models/vace and the single-file DiTs of models/diffusion_models."""
    files = set(folder_paths.get_filename_list(_vace_folder()))
    files |= {f for f in folder_paths.get_filename_list("diffusion_models") if not _SHARD.search(f)}
    return [NO_MODULE] + sorted(files)


def vace_module_path(name: str) -> str:
    """The full path of a chosen VACE module file ("" for none): models/vace first, then diffusion_models."""
    if name == NO_MODULE:
        return ""
    return folder_paths.get_full_path(_vace_folder(), name) or full_path("diffusion_models", name)
