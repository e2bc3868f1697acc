"""Template prompt enhancement (wan_core.prompting.template / enhance) and the change report, in English and Chinese."""

from __future__ import annotations

import pytest

from wan_core.prompting.changes import check_subject, detect_language, diff, subject_terms
from wan_core.prompting.enhance import enhance_template
from wan_core.prompting.template import FIELDS, expand

ALL = {"shot": "wide shot", "camera": "tracking", "lighting": "golden hour", "color": "warm", "style": "cinematic"}


def test_english_prompt_gets_the_fields_in_english_in_the_guidance_order():
    result = enhance_template("A red fox trots through fresh snow", "auto", ALL)
    assert result.language == "en"
    assert result.text == ("A red fox trots through fresh snow. Wide shot, the camera smoothly tracks the subject. "
                           "Warm golden-hour sunlight with long shadows. Warm colour tones. "
                           "Cinematic, film-like image with fine detail.")


def test_chinese_prompt_gets_the_fields_in_chinese():
    result = enhance_template("一只红狐狸在雪地里小跑", "auto", ALL, scene="白桦林中，阳光透过树枝")
    assert result.language == "zh"
    assert result.text == ("一只红狐狸在雪地里小跑。白桦林中，阳光透过树枝。全景镜头，镜头平稳跟随主体。"
                           "温暖的黄昏阳光，影子修长。暖色调。电影质感，画面细腻。")


def test_template_mode_is_deterministic_and_keeps_the_prompt_word_for_word():
    for prompt in ("A lighthouse at dusk, waves crashing", "黄昏时分的灯塔，海浪拍打着礁石"):
        first, second = enhance_template(prompt, "auto", ALL), enhance_template(prompt, "auto", ALL)
        assert first == second
        assert first.text.startswith(prompt)


def test_fields_the_prompt_already_covers_are_left_to_it():
    prompt = "A red fox in snow, the camera tracks it at eye level, soft golden morning light, cinematic"
    result = enhance_template(prompt, "en", ALL)
    assert result.text == prompt + ". Wide shot. Warm colour tones."
    assert "left camera to your prompt (it mentions 'camera')" in result.notes
    assert "left lighting to your prompt (it mentions 'light')" in result.notes
    assert "left style to your prompt (it mentions 'cinematic')" in result.notes
    zh = enhance_template("一只狐狸，镜头跟拍，柔和的晨光", "zh", ALL)
    assert zh.text == "一只狐狸，镜头跟拍，柔和的晨光。全景镜头。暖色调。电影质感，画面细腻。"
    every = expand(prompt, "en", ALL, skip_covered=False)
    assert set(every.added) == set(ALL) and every.skipped == {}


def test_none_fields_add_nothing_and_the_language_can_be_forced():
    assert enhance_template("A fox", "en", {k: "none" for k in FIELDS}).text == "A fox."
    assert enhance_template("A fox", "zh", {"shot": "close-up"}).text == "A fox。特写镜头。"


def test_unknown_choices_are_refused():
    with pytest.raises(ValueError, match="unknown template choices"):
        expand("A fox", "en", {"lighting": "moonbeam"})
    with pytest.raises(ValueError, match="language must be"):
        enhance_template("A fox", "fr", {})


def test_report_lists_the_additions_as_a_diff():
    result = enhance_template("A red fox in snow", "en", {"shot": "close-up", "style": "anime"})
    report = result.report()
    assert report.splitlines()[0] == "mode template, language en"
    assert "+ . Close-up shot. Japanese anime style." in report.splitlines()
    assert "added shot: Close-up shot" in report


@pytest.mark.parametrize("text, language", [
    ("A red fox", "en"), ("一只红狐狸", "zh"), ("Wan2.2 生成的视频，电影感", "zh"), ("A red fox, 狐", "en"), ("", "en")])
def test_language_detection(text, language):
    assert detect_language(text) == language


def test_diff_is_by_words_in_english_and_by_characters_in_chinese():
    assert diff("a red fox runs", "a red fox runs fast") == ["+ fast"]
    assert diff("a red fox runs", "a grey fox runs") == ["~ red -> grey"]
    assert diff("a red fox runs", "a fox runs") == ["- red"]
    assert diff("红狐狸在跑", "一只红狐狸在雪地里跑") == ["+ 一只", "+ 雪地里"]
    assert diff("same", "same") == []


def test_subject_check_named_subject_must_all_survive():
    check = check_subject("A red fox in snow", "A grey wolf in snow", subject="red fox, snow")
    assert not check.ok and check.missing == ["red fox"] and check.kept == ["snow"]
    assert check_subject("A red fox", "Two red foxes play; a red fox leads", subject="red fox").ok


def test_subject_check_without_a_named_subject_needs_two_thirds_of_the_first_clause():
    prompt = "A red fox trots through fresh snow in a birch forest, cinematic"
    assert subject_terms(prompt)[0] == ["red", "fox", "trots", "fresh", "snow", "birch", "forest"]
    kept = check_subject(prompt, "In a birch forest a red fox runs across fresh snow at dawn.")
    assert kept.ok and kept.missing == ["trots"]
    lost = check_subject(prompt, "A majestic eagle soars above snowy mountains at dawn.")
    assert not lost.ok and "LOST" in lost.summary()
    zh = check_subject("一只红狐狸在雪地里小跑，电影感", "清晨的白桦林里，一只红狐狸在雪地里奔跑，阳光洒落。")
    assert zh.terms == ["红狐", "狐狸", "雪地", "地里", "里小", "小跑"] and zh.ok and zh.missing == ["里小", "小跑"]
