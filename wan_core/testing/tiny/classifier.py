"""A tiny random ViT image classifier in the layout of a Hugging Face image-classification folder.

Public NSFW detectors such as `Falconsai/nsfw_image_detection` are ViT folders (config.json, model.safetensors,
preprocessor_config.json) with the labels {0: "normal", 1: "nsfw"}; this writes the same files at a 32x32 input,
2 layers and 32 features (~100 kB), so the moderation node loads it exactly like the real one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

PUBLIC_NAME = "nsfw_image_detection"  # the folder name users give Falconsai/nsfw_image_detection in models/classifiers
LABELS = ("normal", "nsfw")


def write_classifier_folder(path: str | os.PathLike, *, seed: int = 0, labels: tuple[str, ...] = LABELS,
                            image_size: int = 32, multi_label: bool = False) -> Path:
    """Write config.json, model.safetensors and preprocessor_config.json of a random tiny ViT classifier."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(image_size=image_size, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_labels=len(labels), id2label=dict(enumerate(labels)),
                       label2id={label: i for i, label in enumerate(labels)},
                       problem_type="multi_label_classification" if multi_label else "single_label_classification")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ViTForImageClassification(config)
        with torch.no_grad():  # a head with a real spread of scores between images (default init is near zero)
            model.classifier.weight.normal_(0.0, 2.0)
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(path)
    return path
