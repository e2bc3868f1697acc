"""Long videos in the real ComfyUI: context windows on the sampler, prompt travel, continuing a clip, bad input.

Sizes are tiny (64x48, 4 steps) but windowed: 17 frames (5 latent) in windows of 9 frames (3 latent) sharing 4.
"""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from harness.client import PromptFailed, PromptRejected, output_files
from nodes_testing import loads_in, log_mark, log_since, node_id_of, t2v_prompt, write_tiny_set

pytestmark = pytest.mark.comfy
WINDOWS = {"class_type": "WanMoEContextWindows", "inputs": {"window_frames": 9, "overlap_frames": 4, "fuse": "pyramid"}}


@pytest.fixture(scope="module")
def names(comfy_server) -> dict[str, str]:
    return write_tiny_set(comfy_server, "long")


def windowed(names: dict, prefix: str, *, length: int = 17, windows: dict | None = None, seed: int = 5,
             **kwargs) -> dict:
    """The tiny t2v prompt (to SaveLatent unless latent_only=False) with context windows on the sampler."""
    kwargs.setdefault("latent_only", True)
    prompt = t2v_prompt(names, length=length, steps=4, seed=seed, prefix=f"long/{prefix}", **kwargs)
    prompt["70"] = windows or WINDOWS
    prompt[node_id_of(prompt, "WanMoESampler")]["inputs"]["windows"] = ["70", 0]
    return prompt


def latent_and_text(comfy_server, comfy_client, prompt: dict):
    outputs = comfy_client.run(prompt, timeout=300)
    (entry,) = [f for f in output_files(outputs) if f["filename"].endswith(".latent")]
    return (load_file(str(comfy_server.output_path(entry)))["latent_tensor"],
            outputs[node_id_of(prompt, "WanMoESampler")]["text"])


def test_windowed_run_reports_its_windows_and_repeats_bit_for_bit(names, comfy_server, comfy_client):
    first, text = latent_and_text(comfy_server, comfy_client, windowed(names, "a"))
    other, _ = latent_and_text(comfy_server, comfy_client, windowed(names, "b", seed=6))  # ComfyUI's cache moves on
    again, _ = latent_and_text(comfy_server, comfy_client, windowed(names, "c"))  # so this runs the sampler again
    assert tuple(first.shape) == (1, 16, 5, 6, 8) and again.equal(first) and not other.equal(first)
    assert text[0].split("\n")[1] == ("2 context windows of 3 latent frames (9 px frames), overlap 1 (4), pyramid: latent frames "
                       "0-2, 2-4 of 5")


def test_overlap_not_below_the_window_is_rejected_at_queue_time(names, comfy_client):
    bad = {"class_type": "WanMoEContextWindows", "inputs": {"window_frames": 9, "overlap_frames": 12, "fuse": "linear"}}
    with pytest.raises(PromptRejected) as caught:
        comfy_client.queue(windowed(names, "bad_overlap", windows=bad))
    (errors,) = [e["errors"] for e in caught.value.node_errors.values()]
    assert any("overlap_frames (12) must be smaller than window_frames (9)" in e["details"] for e in errors)


def sampler_errors(caught, prompt: dict) -> list[str]:
    return [e["details"] for e in caught.value.node_errors[node_id_of(prompt, "WanMoESampler")]["errors"]]


def test_windows_longer_than_the_video_are_refused_at_queue_time(names, comfy_client):
    prompt = windowed(names, "short", length=5)  # 5 frames, 9-frame windows (both from widgets upstream)
    with pytest.raises(PromptRejected) as caught:
        comfy_client.queue(prompt)
    assert any(d.startswith("windows - the context windows (9 frames) are longer than the video (5 frames, 2 latent "
                            "frames)") for d in sampler_errors(caught, prompt))


def test_windows_longer_than_a_video_the_queue_cannot_see_fail_before_any_expert_loads(names, comfy_server,
                                                                                      comfy_client):
    prompt = windowed(names, "short_unseen", length=5)
    sampler = prompt[node_id_of(prompt, "WanMoESampler")]["inputs"]
    prompt["72"] = {"class_type": "RepeatLatentBatch", "inputs": {"samples": sampler["latent"], "amount": 1}}
    sampler["latent"] = ["72", 0]  # a node the queue-time check does not follow: the sampler refuses when it starts
    mark = log_mark(comfy_server)
    with pytest.raises(PromptFailed) as failed:
        comfy_client.run(prompt, timeout=300)
    assert failed.value.details["node_type"] == "WanMoESampler"
    assert ("the context windows (9 frames) are longer than the video (5 frames, 2 latent frames)"
            in failed.value.details["exception_message"])
    assert [name for kind, name in loads_in(log_since(comfy_server, mark)) if kind == "dit"] == []


def travel(prompt: dict, lines: list[str]) -> dict:
    """`prompt` with Wan2.2 Prompt Travel (one line per prompt) as the sampler's conditioning."""
    encoder = node_id_of(prompt, "WanMoETextEncoderLoader")
    prompt["71"] = {"class_type": "WanMoEPromptTravel", "inputs": {"text_encoder": [encoder, 0],
                                                                   "prompts": "\n".join(lines), "negative": ""}}
    sampler = prompt[node_id_of(prompt, "WanMoESampler")]["inputs"]
    sampler["positive"], sampler["negative"] = ["71", 0], ["71", 1]
    return prompt


def test_prompt_travel_gives_the_windows_their_prompts(names, comfy_server, comfy_client):
    one, _ = latent_and_text(comfy_server, comfy_client, travel(windowed(names, "one"), ["a fox in the snow"]))
    same, _ = latent_and_text(comfy_server, comfy_client,
                              travel(windowed(names, "same"), ["a fox in the snow", "a fox in the snow"]))
    two, text = latent_and_text(comfy_server, comfy_client,
                                travel(windowed(names, "two"), ["a fox in the snow", "a fox by the sea"]))
    assert same.equal(one) and not two.equal(one)
    assert text[0].split("\n")[1].startswith("2 context windows of 3 latent frames") and ", 2 prompts:" in text[0].split("\n")[1]


def test_more_prompts_than_windows_are_refused_at_queue_time(names, comfy_client):
    prompt = travel(windowed(names, "too_many"), ["one", "two", "three"])
    with pytest.raises(PromptRejected) as caught:
        comfy_client.queue(prompt)
    assert any(d.startswith("windows - 3 prompts for 2 context windows (17 frames in windows of 9, overlap 4); give "
                            "at most 2 prompts") for d in sampler_errors(caught, prompt))


def test_a_combined_prompt_list_longer_than_the_windows_is_refused_at_queue_time(names, comfy_client):
    prompt = windowed(names, "combined")
    text = node_id_of(prompt, "WanMoETextEncode")
    prompt["73"] = {**prompt[text], "inputs": {**prompt[text]["inputs"], "positive": "a fox by the sea"}}
    prompt["74"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["73", 0],
                                                                    "conditioning_2": [text, 0]}}
    prompt["75"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["74", 0],
                                                                    "conditioning_2": [text, 0]}}
    prompt[node_id_of(prompt, "WanMoESampler")]["inputs"]["positive"] = ["75", 0]  # 3 entries, 2 windows
    with pytest.raises(PromptRejected) as caught:
        comfy_client.queue(prompt)
    assert any(d.startswith("windows - 3 prompts for 2 context windows") for d in sampler_errors(caught, prompt))


def test_empty_prompt_travel_is_rejected_at_queue_time(names, comfy_client):
    with pytest.raises(PromptRejected) as caught:
        comfy_client.queue(travel(windowed(names, "empty"), ["", "  "]))
    (errors,) = [e["errors"] for e in caught.value.node_errors.values()]
    assert any("prompts is empty: write one prompt per line" in e["details"] for e in errors)


def test_extend_continues_a_clip_and_joins_it(names, comfy_server, comfy_client):
    import av

    prompt = t2v_prompt(names, length=9, steps=4, seed=5, prefix="long/extend")
    decode, sampler = node_id_of(prompt, "WanMoEVAEDecode"), node_id_of(prompt, "WanMoESampler")
    vae, model = node_id_of(prompt, "WanMoEVAELoader"), node_id_of(prompt, "WanMoEModelLoader")
    text = node_id_of(prompt, "WanMoETextEncode")
    second = dict(prompt[sampler], inputs={**prompt[sampler]["inputs"], "latent": ["60", 0], "seed": 6})
    prompt.update({
        "60": {"class_type": "WanMoEExtendLatent", "inputs": {"vae": [vae, 0], "images": [decode, 0],
                                                              "overlap_frames": 5, "length": 13}},
        "61": second,
        "62": {"class_type": "WanMoEVAEDecode", "inputs": {**prompt[decode]["inputs"], "samples": ["61", 0]}},
        "63": {"class_type": "WanMoEExtendJoin", "inputs": {"previous": [decode, 0], "new": ["62", 0],
                                                            "overlap_frames": 5, "color_match": True}},
        "64": {"class_type": "SaveLatent", "inputs": {"samples": ["60", 0], "filename_prefix": "long/extend_start"}},
        "65": {"class_type": "SaveLatent", "inputs": {"samples": ["61", 0], "filename_prefix": "long/extend_new"}},
    })
    prompt[node_id_of(prompt, "CreateVideo")]["inputs"]["images"] = ["63", 0]
    assert second["inputs"]["model"] == [model, 0] and second["inputs"]["positive"] == [text, 0]
    outputs = comfy_client.run(prompt, timeout=300)
    start, new = (load_file(str(comfy_server.output_path(f)))["latent_tensor"]
                  for node in ("64", "65") for f in output_files({node: outputs[node]}))
    assert tuple(start.shape) == tuple(new.shape) == (1, 16, 4, 6, 8)  # 13 frames; the first 2 from 5 encoded frames
    assert new[:, :, :2].equal(start[:, :, :2])  # kept exactly
    (video,) = [f for f in output_files(outputs) if f["filename"].endswith(".mp4")]
    with av.open(str(comfy_server.output_path(video))) as container:
        frames = list(container.decode(video=0))
        fps = float(container.streams.video[0].average_rate)
    assert (len(frames), frames[0].width, frames[0].height, fps) == (9 + 13 - 5, 64, 48, 16.0)


def test_extend_overlap_not_below_the_length_is_rejected_at_queue_time(names, comfy_client):
    prompt = t2v_prompt(names, length=9, steps=4, prefix="long/extend_bad")
    prompt["60"] = {"class_type": "WanMoEExtendLatent", "inputs": {
        "vae": [node_id_of(prompt, "WanMoEVAELoader"), 0], "images": [node_id_of(prompt, "WanMoEVAEDecode"), 0],
        "overlap_frames": 13, "length": 13}}
    prompt["61"] = {"class_type": "SaveLatent", "inputs": {"samples": ["60", 0], "filename_prefix": "long/x"}}
    for kind in ("CreateVideo", "SaveVideo"):  # the only output is the bad node's (ComfyUI runs the valid ones)
        del prompt[node_id_of(prompt, kind)]
    with pytest.raises(PromptRejected) as caught:
        comfy_client.queue(prompt)
    errors = caught.value.node_errors["60"]["errors"]
    assert any("overlap_frames (13) must be fewer than the new clip's length (13)" in e["details"] for e in errors)
