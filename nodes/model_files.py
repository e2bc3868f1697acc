"""Model-file choices for the loader combos, from ComfyUI's model folders (diffusion_models, text_encoders, vae)."""

from __future__ import annotations

import os
import re

import folder_paths

INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
_SHARD = re.compile(r"-\d{5}-of-\d{5}\.safetensors$")


def _index_entries(folder: str) -> list[str]:
    """Official expert folders' `*/diffusion_pytorch_model.safetensors.index.json` under one model folder."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if INDEX_NAME in files:
            found.append(os.path.relpath(os.path.join(root, INDEX_NAME), folder).replace(os.sep, "/"))
    return found


def diffusion_model_choices() -> list[str]:
    """Single-file DiTs in diffusion_models (shards of official folders left out) plus official folders' index files."""
    files = [f for f in folder_paths.get_filename_list("diffusion_models") if not _SHARD.search(f)]
    indexes = {entry for folder in folder_paths.get_folder_paths("diffusion_models") for entry in _index_entries(folder)}
    return sorted(set(files) | indexes)


def file_choices(folder: str) -> list[str]:
    """Files ComfyUI lists in one model folder (text_encoders, vae)."""
    return folder_paths.get_filename_list(folder)


def full_path(folder: str, name: str) -> str:
    """Absolute path of a chosen file; a readable FileNotFoundError naming the folder when it is not there."""
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        where = ", ".join(folder_paths.get_folder_paths(folder)) or f"models/{folder}"
        raise FileNotFoundError(f"'{name}' is not in the {folder} model folder ({where}). Put the file there or pick another.")
    return path


def not_listed(folder: str, name: str, choices: list[str]) -> str | None:
    """A user-facing message when `name` is not among `choices`, else None."""
    if name in choices:
        return None
    where = ", ".join(folder_paths.get_folder_paths(folder)) or f"models/{folder}"
    if not choices:
        return f"no model files found in the {folder} folder ({where}); put '{name}' there and refresh (press R)"
    return f"'{name}' is not in the {folder} folder ({where}); download it there or pick one of the listed files"
