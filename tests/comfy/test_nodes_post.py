"""WanMoEFrameModerate, WanMoEFrameInterpolate and WanMoEColorGrade in the real ComfyUI, on frames from core LoadImage
(a textured PNG in the input folder), with a tiny classifier in models/classifiers and a LUT in models/luts."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from harness.client import PromptFailed, output_files

pytestmark = pytest.mark.comfy

CLASSIFIER = "wanmoe_post_test_classifier"  # this module's own files in the shared server's folders
LUT = "wanmoe_post_test_invert.cube"
IMAGES = ("wanmoe_post_test_a.png", "wanmoe_post_test_b.png", "wanmoe_post_test_reference.png")


def texture(seed: int, shift: int = 0, h: int = 48, w: int = 64) -> np.ndarray:
    """uint8 [h, w, 3]: smooth random colours (cut from a wider canvas, `shift` px to the left)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, h // 8, (w + 32) // 8, generator=g), size=(h, w + 32),
                                        mode="bicubic").clamp(0, 1)[0].permute(1, 2, 0)
    return (x[:, 16 - shift : 16 - shift + w].numpy() * 255).round().astype(np.uint8)


def bluish() -> np.ndarray:
    """Another texture with a blue cast (the colour-match reference)."""
    return (texture(1) * np.array([0.55, 0.75, 1.0])).round().astype(np.uint8)


@pytest.fixture(scope="module")
def post_files(comfy_server) -> None:
    from PIL import Image

    from wan_core.testing.tiny.classifier import write_classifier_folder

    for name, frame in zip(IMAGES, (texture(0), texture(0, shift=4), bluish())):
        Image.fromarray(frame).save(comfy_server.input_dir / name)
    if not (comfy_server.models_dir / "classifiers" / CLASSIFIER).exists():
        write_classifier_folder(comfy_server.models_dir / "classifiers" / CLASSIFIER, seed=3)
    luts = comfy_server.models_dir / "luts"
    luts.mkdir(exist_ok=True)
    rows = "\n".join(f"{1 - k % 2} {1 - k // 2 % 2} {1 - k // 4}" for k in range(8))  # red fastest: 1 - rgb
    (luts / LUT).write_text(f'TITLE "invert"\nLUT_3D_SIZE 2\n{rows}\n')


def frames_prompt(node: dict, *, repeat: int = 5, second: bool = False, extra: dict | None = None) -> dict:
    """LoadImage (x `repeat`, or two different images) -> `node` (its images input linked) -> SaveImage."""
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": IMAGES[0]}}}
    if second:
        prompt["2"] = {"class_type": "LoadImage", "inputs": {"image": IMAGES[1]}}
        prompt["3"] = {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}}
    else:
        prompt["3"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": repeat}}
    prompt["4"] = {"class_type": node["class_type"], "inputs": {"images": ["3", 0], **node["inputs"]}}
    prompt["5"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "post_test/frame"}}
    return prompt | (extra or {})


def saved_frames(comfy_server, outputs: dict) -> np.ndarray:
    from PIL import Image

    files = [f for f in output_files(outputs) if f["filename"].endswith(".png")]
    return np.stack([np.asarray(Image.open(io.BytesIO(comfy_server.output_path(f).read_bytes()))) for f in files])


def moderate(threshold: float, action: str) -> dict:
    return {"class_type": "WanMoEFrameModerate", "inputs": {"classifier": CLASSIFIER, "unsafe_labels": "nsfw",
                                                           "threshold": threshold, "action": action, "stride": 1}}


def test_moderation_blur_pixelates_flagged_frames(post_files, comfy_server, comfy_client):
    from wan_core.post.moderate import blur

    outputs = comfy_client.run(frames_prompt(moderate(0.0, "blur"), repeat=3), timeout=180)
    saved = saved_frames(comfy_server, outputs)
    frame = torch.from_numpy(texture(0)).float()[None] / 255
    expected = (blur(frame)[0].numpy() * 255).round()
    assert saved.shape == (3, 48, 64, 3)
    assert np.abs(saved.astype(float) - expected).max() <= 1  # rounding to 8 bits
    report = outputs["4"]["text"][0]
    assert f"classifier {CLASSIFIER}: score = P(nsfw), threshold 0, action blur" in report
    assert "3 frame(s) at or above the threshold, blurred: 0-2" in report


def test_moderation_pass_and_a_threshold_above_every_score_change_nothing(post_files, comfy_server, comfy_client):
    for node in (moderate(0.0, "pass"), moderate(1.0, "block")):
        saved = saved_frames(comfy_server, comfy_client.run(frames_prompt(node, repeat=2), timeout=180))
        assert np.array_equal(saved, np.stack([texture(0)] * 2))


def test_moderation_block_stops_the_run_naming_the_frames(post_files, comfy_client):
    with pytest.raises(PromptFailed) as caught:
        comfy_client.run(frames_prompt(moderate(0.0, "block"), repeat=2), timeout=180)
    assert caught.value.details["node_type"] == "WanMoEFrameModerate"
    message = caught.value.details["exception_message"]
    assert message.startswith(f"frame moderation blocked the clip: 2 frame(s) scored at or above 0 for nsfw with "
                              f"{CLASSIFIER}: frames 0 (")


def test_interpolation_makes_n_minus_1_times_k_plus_1_frames_and_multiplies_fps(post_files, comfy_server,
                                                                               comfy_client):
    node = {"class_type": "WanMoEFrameInterpolate", "inputs": {"factor": 3, "fps": 16.0, "method": "dis",
                                                              "scene_threshold": 0.5, "flow_resolution": "auto"}}
    fps = {"6": {"class_type": "PreviewAny", "inputs": {"source": ["4", 1]}}}
    outputs = comfy_client.run(frames_prompt(node, second=True, extra=fps), timeout=180)
    saved = saved_frames(comfy_server, outputs)
    assert saved.shape[0] == 4 and outputs["6"]["text"] == ["48.0"]
    assert np.array_equal(saved[0], texture(0)) and np.array_equal(saved[3], texture(0, shift=4))
    # The new frames lie between the originals along the 4 px shift: closer to the texture shifted by the nearest
    # whole pixel (1 and 3 px for 1.33 and 2.67) than to the first frame (measured mean 3.1/255 vs 12.5 and 24.8).
    for j, frame in ((1, saved[1]), (2, saved[2])):
        true = texture(0, shift=round(4 * j / 3))
        assert np.abs(frame.astype(int) - true).mean() < np.abs(frame.astype(int) - saved[0]).mean()
    assert outputs["4"]["text"][0].startswith("2 -> 4 frames (x3, dis flow at 1x); scene cuts held, not blended: none")


def test_color_grade_applies_the_lut_from_models_luts(post_files, comfy_server, comfy_client):
    node = {"class_type": "WanMoEColorGrade", "inputs": {"match_strength": 1.0, "exposure": 0.0, "contrast": 1.0,
                                                        "saturation": 1.0, "temperature": 0.0, "tint": 0.0,
                                                        "lut": LUT, "lut_strength": 1.0}}
    saved = saved_frames(comfy_server, comfy_client.run(frames_prompt(node, repeat=2), timeout=180))
    assert np.abs(saved.astype(int) - (255 - texture(0).astype(int))).max() <= 1


def test_color_grade_matches_a_reference_image(post_files, comfy_server, comfy_client):
    from wan_core.post.grade import lab_stats

    node = {"class_type": "WanMoEColorGrade", "inputs": {"reference": ["7", 0], "match_strength": 1.0,
                                                        "exposure": 0.0, "contrast": 1.0, "saturation": 1.0,
                                                        "temperature": 0.0, "tint": 0.0, "lut": "none",
                                                        "lut_strength": 1.0}}
    reference = {"7": {"class_type": "LoadImage", "inputs": {"image": IMAGES[2]}}}
    saved = saved_frames(comfy_server, comfy_client.run(frames_prompt(node, repeat=2, extra=reference), timeout=180))
    before = lab_stats(torch.from_numpy(texture(0)).float()[None] / 255)
    got = lab_stats(torch.from_numpy(saved).float() / 255)
    want = lab_stats(torch.from_numpy(bluish()).float()[None] / 255)
    assert (before.mean - want.mean).norm() > 10
    # 8-bit output and the gamut clamp leave a little: measured 0.65 Lab units from the reference's mean.
    assert (got.mean - want.mean).abs().max() < 1.0
