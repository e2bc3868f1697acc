"""Model folders the pre- and post-processing nodes read, registered with ComfyUI's folder_paths on import.

LLM (causal language models for prompt enhancement) and classifiers (image classifiers for frame moderation) hold
Hugging Face model folders (config.json + weights); safety_terms holds the user's term lists (.txt) and luts the
.cube LUTs (their files are listed and found with model_files.file_choices / full_path). Each is models/<name> by default, and extra_model_paths.yaml can add more places as for any folder.
"""

from __future__ import annotations

import os

import folder_paths

FOLDERS = {"LLM": set(), "classifiers": set(), "safety_terms": {".txt"}, "luts": {".cube"}}
NONE = "none"


def register_folders() -> None:
    """Make every folder of FOLDERS known to ComfyUI (a default path under models/; extensions it lists)."""
    for name, extensions in FOLDERS.items():
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name), is_default=False)
        paths, known = folder_paths.folder_names_and_paths[name]
        if extensions:
            folder_paths.folder_names_and_paths[name] = (paths, set(known) - {""} | extensions)


def model_folders(folder: str) -> list[str]:
    """Hugging Face model folders (with a config.json) under each path of a ComfyUI folder, as relative names."""
    found = set()
    for root in folder_paths.get_folder_paths(folder):
        for here, dirs, files in os.walk(root, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            if "config.json" in files and here != root:
                found.add(os.path.relpath(here, root).replace(os.sep, "/"))
                dirs[:] = []  # a model folder's subfolders are its own
    return sorted(found)


def model_folder_path(folder: str, name: str) -> str:
    """Absolute path of a model folder chosen from `model_folders`; a FileNotFoundError naming the folder otherwise."""
    for root in folder_paths.get_folder_paths(folder):
        path = os.path.join(root, name)
        if os.path.isfile(os.path.join(path, "config.json")):
            return path
    where = ", ".join(folder_paths.get_folder_paths(folder)) or f"models/{folder}"
    raise FileNotFoundError(f"'{name}' is not a model folder (with config.json) in the {folder} folder ({where}). "
                            "Download the model's folder there (e.g. with huggingface-cli download ... --local-dir) "
                            "and refresh (press R).")


def folder_not_listed(folder: str, name: str) -> str | None:
    """A user-facing message when `name` is not one of `model_folders(folder)`, else None."""
    if name in model_folders(folder):
        return None
    where = ", ".join(folder_paths.get_folder_paths(folder)) or f"models/{folder}"
    return (f"'{name}' is not a model folder (with config.json) in the {folder} folder ({where}); download it there "
            "and refresh (press R), or pick a listed one")


register_folders()
