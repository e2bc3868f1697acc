"""Frame moderation (wan_core.post.moderate) end to end with a tiny random ViT classifier folder written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wan_core.post.moderate import (ModerationBlocked, ModerationReport, act, blur, load_classifier, score_frames,
                                    scored_frames)
from wan_core.testing.tiny.classifier import write_classifier_folder


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    return write_classifier_folder(tmp_path_factory.mktemp("classifiers") / "nsfw_image_detection", seed=3)


@pytest.fixture(scope="module")
def classifier(classifier_dir):
    return load_classifier(classifier_dir)


def smooth_frames(n: int = 8, h: int = 48, w: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(n, 3, h // 4, w // 4, generator=g), size=(h, w), mode="bicubic")
    return x.clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def moderated(classifier, frames, threshold, action):
    scores, scored = score_frames(classifier, frames, classifier.label_indices(["nsfw"], "test"))
    report = ModerationReport("nsfw_image_detection", ["nsfw"], threshold, action, scores, scored)
    return report, (lambda: act(frames, report))


def test_scores_act_per_threshold_blur_block_and_pass(classifier):
    frames = smooth_frames()
    scores, _ = score_frames(classifier, frames, classifier.label_indices(["NSFW"], "test"))
    ranked = sorted(scores)
    assert ranked[0] < ranked[-1]  # the random classifier tells these frames apart
    threshold = (ranked[4] + ranked[5]) / 2  # three frames above it
    flagged = [i for i, s in enumerate(scores) if s >= threshold]
    assert len(flagged) == 3

    report, run = moderated(classifier, frames, threshold, "blur")
    out = run()
    assert report.flagged == flagged
    for i in range(len(frames)):
        if i in flagged:
            assert torch.equal(out[i], blur(frames[i : i + 1])[0])
        else:
            assert torch.equal(out[i], frames[i])

    _, run = moderated(classifier, frames, threshold, "block")
    with pytest.raises(ModerationBlocked, match=rf"3 frame\(s\) scored at or above {threshold:g} for nsfw") as err:
        run()
    assert all(f"{i} ({scores[i]:.2f})" in str(err.value) for i in flagged)

    _, run = moderated(classifier, frames, threshold, "pass")
    assert run() is frames
    _, run = moderated(classifier, frames, ranked[-1] + 1e-3, "block")  # above every score: nothing to block
    assert run() is frames


def test_scores_are_the_models_softmax_on_its_own_processor_input(classifier, classifier_dir):
    from PIL import Image
    from transformers import AutoImageProcessor

    frames = (smooth_frames(4, 96, 128, seed=1) * 255).round() / 255  # 8-bit, as PIL sees them
    processor = AutoImageProcessor.from_pretrained(classifier_dir, local_files_only=True)
    images = [Image.fromarray((f.numpy() * 255).round().astype(np.uint8)) for f in frames]
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    # Resizing with torch's antialiased bilinear vs PIL's bilinear: measured max 0.0066 (normalised units, 0.8/255).
    assert (classifier.preprocess(frames) - pixel_values).abs().max() < 0.02
    with torch.no_grad():
        reference = torch.softmax(classifier.model(pixel_values=pixel_values).logits, dim=-1)
    # That input difference through the tiny model (a deliberately steep head): measured 0.0036 in probability.
    assert (classifier.probabilities(frames) - reference).abs().max() < 0.01


def test_multi_label_models_use_sigmoid(tmp_path):
    folder = write_classifier_folder(tmp_path / "multi", labels=("porn", "hentai", "neutral"), multi_label=True)
    model = load_classifier(folder)
    frames = smooth_frames(2)
    with torch.no_grad():
        logits = model.model(pixel_values=model.preprocess(frames)).logits
    assert torch.allclose(model.probabilities(frames), torch.sigmoid(logits), atol=1e-6)
    scores, _ = score_frames(model, frames, model.label_indices(["porn", "hentai"], "multi"))
    expected = torch.sigmoid(logits)[:, :2].sum(-1).clamp(0, 1)
    assert np.allclose(scores, expected.tolist(), atol=1e-6)


def test_stride_scores_every_nth_and_the_last_frame_and_fills_with_the_higher_neighbour(classifier):
    frames = smooth_frames(8, seed=2)
    full, _ = score_frames(classifier, frames, [1])
    strided, scored = score_frames(classifier, frames, [1], stride=3)
    assert scored == scored_frames(8, 3) == [0, 3, 6, 7]
    for i in scored:
        assert strided[i] == pytest.approx(full[i], abs=1e-6)
    assert strided[1] == strided[2] == pytest.approx(max(full[0], full[3]), abs=1e-6)
    assert strided[4] == strided[5] == pytest.approx(max(full[3], full[6]), abs=1e-6)


def test_labels_the_model_does_not_have_are_named_with_its_labels(classifier):
    with pytest.raises(ValueError, match=r"none of the labels \['unsafe'\] .* its labels are \['normal', 'nsfw'\]"):
        classifier.label_indices(["unsafe"], "nsfw_image_detection")


def test_a_folder_without_config_says_what_it_needs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="classifier folder 'empty' has no config.json"):
        load_classifier(tmp_path / "empty")


def test_blur_removes_detail_and_keeps_the_mean_colour():
    frames = torch.rand(2, 64, 96, 3, generator=torch.Generator().manual_seed(5))
    out = blur(frames)
    detail = lambda x: (x[:, 1:] - x[:, :-1]).abs().mean().item()  # noqa: E731
    assert detail(out) < 0.05 * detail(frames)
    assert torch.allclose(out.mean(dim=(1, 2)), frames.mean(dim=(1, 2)), atol=0.01)


def test_report_summary_names_the_flagged_frames_as_ranges():
    report = ModerationReport("clf", ["nsfw"], 0.5, "blur", [0.9, 0.8, 0.1, 0.2, 0.7], [0, 1, 2, 3, 4])
    text = report.summary()
    assert "threshold 0.5, action blur" in text and "highest 0.900 at frame 0" in text
    assert "3 frame(s) at or above the threshold, blurred: 0-1, 4" in text
