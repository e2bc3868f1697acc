"""Visual moderation of decoded frames with an image classifier the user supplies; no network, no bundled model.

The classifier is a Hugging Face image-classification folder (config.json + model.safetensors, optionally
preprocessor_config.json), loaded with transformers' AutoModelForImageClassification from local files only.
Each scored frame gets an "unsafe" score: the summed probability of the labels the user names (softmax, or
sigmoid for multi-label models). Frames are resized and normalised as the folder's preprocessor config says,
in torch (bilinear with antialiasing, where Hugging Face's processors use PIL's bilinear filter on 8-bit
images; the difference is within a few 1/255). With `stride` s only every s-th frame (and the last) is run,
and each other frame takes the higher score of the two scored frames around it.

Actions on frames scoring at or above the threshold: "block" raises ModerationBlocked (nothing downstream
runs), "blur" pixelates them to 16 blocks on the long side and smooths the blocks, "pass" changes nothing;
every action reports the scores.
"""

from __future__ import annotations

import bisect
import json
import os
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIONS = ("block", "blur", "pass")
BLUR_BLOCKS = 16  # blocks along the long side of a blurred frame
BATCH = 16  # frames per classifier call

ProgressFn = Callable[[int, int], None]


class ModerationBlocked(RuntimeError):
    """Frames scored at or above the threshold with action "block"; the message lists them with their scores."""


@dataclass(frozen=True)
class Preprocess:
    """How the classifier wants its input: size (h, w), optional centre crop (h, w), mean and std per channel."""

    size: tuple[int, int]
    crop: tuple[int, int] | None = None
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    shortest_edge: int | None = None

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """IMAGE [B, H, W, 3] 0..1 -> pixel values [B, 3, h, w] for the model."""
        x = frames.permute(0, 3, 1, 2).float()
        size = self.size
        if self.shortest_edge:
            h, w = x.shape[-2:]
            scale = self.shortest_edge / min(h, w)
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        if self.crop:
            top, left = (x.shape[-2] - self.crop[0]) // 2, (x.shape[-1] - self.crop[1]) // 2
            x = x[..., top : top + self.crop[0], left : left + self.crop[1]]
        mean = torch.tensor(self.mean, device=x.device)[:, None, None]
        std = torch.tensor(self.std, device=x.device)[:, None, None]
        return (x - mean) / std


def _hw(value: object, default: int) -> tuple[int, int]:
    if isinstance(value, dict) and "height" in value:
        return int(value["height"]), int(value["width"])
    if isinstance(value, int):
        return value, value
    return default, default


def read_preprocess(folder: str | os.PathLike, image_size: int) -> Preprocess:
    """The folder's preprocessor_config.json as a Preprocess (ViT-style defaults at `image_size` without one)."""
    path = os.path.join(folder, "preprocessor_config.json")
    if not os.path.isfile(path):
        return Preprocess((image_size, image_size))
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    size = cfg.get("size", image_size)
    shortest = size.get("shortest_edge") if isinstance(size, dict) else None
    crop = _hw(cfg.get("crop_size"), image_size) if cfg.get("do_center_crop") else None
    normalize = cfg.get("do_normalize", True)
    return Preprocess(
        size=_hw(size, image_size), crop=crop, shortest_edge=shortest,
        mean=tuple(cfg.get("image_mean", (0.5,) * 3)) if normalize else (0.0,) * 3,
        std=tuple(cfg.get("image_std", (0.5,) * 3)) if normalize else (1.0,) * 3,
    )


class FrameClassifier(nn.Module):
    """An image classifier with its labels and preprocessing: frames in, label probabilities out."""

    def __init__(self, model: nn.Module, labels: list[str], preprocess: Preprocess, multi_label: bool) -> None:
        super().__init__()
        self.model, self.labels, self.preprocess, self.multi_label = model, labels, preprocess, multi_label

    @torch.inference_mode()
    def probabilities(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, H, W, 3] 0..1 -> [B, labels] float32: softmax (or sigmoid for a multi-label model) of the logits."""
        device = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        logits = self.model(pixel_values=self.preprocess(frames.to(device)).to(dtype)).logits.float()
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)

    def label_indices(self, names: list[str], source: str) -> list[int]:
        """Indices of the labels named (case-insensitive); a ValueError listing the model's labels when none match."""
        wanted = {n.strip().lower() for n in names if n.strip()}
        found = [i for i, label in enumerate(self.labels) if label.lower() in wanted]
        if not found:
            raise ValueError(f"none of the labels {sorted(wanted)} is a label of the classifier {source}; its labels "
                             f"are {self.labels}. Put the names of its unsafe labels in unsafe_labels.")
        return found


def load_classifier(folder: str | os.PathLike, *, device: torch.device | str = "cpu") -> FrameClassifier:
    """A Hugging Face image-classification folder as a FrameClassifier on `device`, from local files only."""
    from transformers import AutoConfig, AutoModelForImageClassification

    name = os.path.basename(os.path.normpath(folder))
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"classifier folder '{name}' has no config.json; it must be a Hugging Face "
                                "image-classification model folder (config.json + model.safetensors)")
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    try:
        model = AutoModelForImageClassification.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"classifier folder '{name}' could not be loaded as an image classifier "
                         f"({type(exc).__name__}); it needs config.json and model.safetensors") from None
    labels = [str(config.id2label[i]) for i in range(config.num_labels)]
    image_size = getattr(config, "image_size", 224)
    preprocess = read_preprocess(folder, image_size if isinstance(image_size, int) else 224)
    multi = getattr(config, "problem_type", None) == "multi_label_classification"
    return FrameClassifier(model.eval(), labels, preprocess, multi).to(device)


@dataclass
class ModerationReport:
    """Scores per frame, which frames reached the threshold, and what was done about them."""

    classifier: str
    labels: list[str]
    threshold: float
    action: str
    scores: list[float] = field(default_factory=list)
    scored: list[int] = field(default_factory=list)  # frames the classifier actually ran on

    @property
    def flagged(self) -> list[int]:
        return [i for i, s in enumerate(self.scores) if s >= self.threshold]

    def summary(self) -> str:
        """A few lines for the node's text output."""
        top = max(range(len(self.scores)), key=self.scores.__getitem__) if self.scores else None
        lines = [f"classifier {self.classifier}: score = P({' + '.join(self.labels)}), threshold {self.threshold:g}, "
                 f"action {self.action}",
                 f"{len(self.scores)} frames, {len(self.scored)} scored; highest {self.scores[top]:.3f} at frame {top}"
                 if top is not None else "no frames"]
        flagged = self.flagged
        done = {"block": "blocked", "blur": "blurred", "pass": "passed unchanged"}[self.action]
        lines.append(f"{len(flagged)} frame(s) at or above the threshold, {done}: {_ranges(flagged)}" if flagged
                     else "no frame reached the threshold; frames passed unchanged")
        return "\n".join(lines)


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    parts, start = [], None
    for k, i in enumerate(indices):
        start = i if start is None else start
        if k + 1 == len(indices) or indices[k + 1] != i + 1:
            parts.append(f"{start}-{i}" if i > start else f"{i}")
            start = None
    return ", ".join(parts)


def scored_frames(count: int, stride: int) -> list[int]:
    """Frames the classifier runs on: every `stride`-th and the last."""
    return sorted(set(range(0, count, max(1, stride))) | ({count - 1} if count else set()))


def score_frames(classifier: FrameClassifier, frames: torch.Tensor, label_indices: list[int], *, stride: int = 1,
                 progress: ProgressFn | None = None) -> tuple[list[float], list[int]]:
    """Unsafe score of every frame (unscored frames: the higher of their scored neighbours), and the scored frames."""
    chosen = scored_frames(frames.shape[0], stride)
    found: dict[int, float] = {}
    for start in range(0, len(chosen), BATCH):
        batch = chosen[start : start + BATCH]
        probs = classifier.probabilities(frames[batch])[:, label_indices].sum(-1).clamp(0, 1)
        found.update(zip(batch, probs.tolist()))
        if progress is not None:
            progress(min(start + BATCH, len(chosen)), len(chosen))
    scores = []
    for i in range(frames.shape[0]):
        k = bisect.bisect_left(chosen, i)  # chosen[k] is the first scored frame at or after i (the last is scored)
        scores.append(found[i] if chosen[k] == i else max(found[chosen[k - 1]], found[chosen[k]]))
    return scores, chosen


def blur(frames: torch.Tensor) -> torch.Tensor:
    """Frames [B, H, W, 3] pixelated to BLUR_BLOCKS blocks on the long side, blocks smoothed into each other."""
    x = frames.permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    scale = BLUR_BLOCKS / max(h, w)
    small = F.interpolate(x, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="area")
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).permute(0, 2, 3, 1).to(frames.dtype)


def act(frames: torch.Tensor, report: ModerationReport) -> torch.Tensor:
    """Apply the report's action to its flagged frames: raise (block), blur them (blur) or pass the clip."""
    flagged = report.flagged
    if not flagged or report.action == "pass":
        return frames
    if report.action == "block":
        worst = ", ".join(f"{i} ({report.scores[i]:.2f})" for i in flagged[:8]) + (" ..." if len(flagged) > 8 else "")
        raise ModerationBlocked(f"frame moderation blocked the clip: {len(flagged)} frame(s) scored at or above "
                                f"{report.threshold:g} for {'/'.join(report.labels)} with {report.classifier}: "
                                f"frames {worst}. Change the prompt, or set action to 'blur' or 'pass'.")
    out = frames.clone()
    out[flagged] = blur(frames[flagged].float()).to(frames.dtype)
    return out
