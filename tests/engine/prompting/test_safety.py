"""Sensitive-term filter (wan_core.prompting.safety) on multilingual prompts, with the shipped and user term lists."""

from __future__ import annotations

import pytest

from wan_core.prompting.safety import (PromptBlocked, TermList, check_prompt, compile_term, default_term_files,
                                       find_terms)

CLEAN = ("A red fox trots through fresh snow in a sunlit birch forest, its breath steaming in the cold air; the camera "
         "tracks it at eye level, shallow depth of field, soft golden morning light, cinematic.")


@pytest.fixture(scope="module")
def defaults() -> TermList:
    terms = TermList()
    for path in default_term_files():
        terms.add_file(path)
    return terms


def found(prompt: str, terms: TermList) -> list[tuple[str, str]]:
    return [(m.term, m.source) for m in find_terms(prompt, terms)]


def test_the_shipped_lists_are_english_and_chinese_and_small(defaults):
    assert [p.name for p in default_term_files()] == ["en.txt", "zh.txt"]
    assert 20 <= len(defaults.terms) <= 60
    assert {t.source for t in defaults.terms} == {"en.txt", "zh.txt"}


def test_every_shipped_term_is_found_inside_a_sentence(defaults):
    for term in defaults.terms:
        word = term.text.rstrip("*")
        sentence = f"画面里有{word}的场景" if term.unspaced else f"a scene with {word} in it"
        assert (term.text, term.source) in found(sentence, defaults), term.text


@pytest.mark.parametrize("prompt, expected", [
    ("A knight stands in the GORE of battle", [("gore", "en.txt")]),
    ("Ａ ｐｏｒｎ film set", [("porn*", "en.txt")]),  # full-width letters
    ("pornographic imagery", [("porn*", "en.txt"), ("pornographic", "en.txt")]),
    ("The general was decapitated at dawn", [("decapitat*", "en.txt")]),
    ("child-porn", [("child porn*", "en.txt"), ("porn*", "en.txt")]),
    ("g\u200bore everywhere", [("gore", "en.txt")]),  # a zero-width space inside the word
    ("画面中充满血腥的场面", [("血腥", "zh.txt")]),
    ("色 情 电影", [("色情", "zh.txt")]),  # spaces between the characters
    ("一张nsfw的图片", [("nsfw", "en.txt")]),  # an English term between Chinese characters
])
def test_terms_are_found_through_case_width_spacing_and_script(defaults, prompt, expected):
    assert found(prompt, defaults) == expected


@pytest.mark.parametrize("prompt", [
    CLEAN,
    "Edward Gorey style illustration of a gorgeous gorge",  # 'gore' only as part of other words
    "一只红狐狸在雪地里小跑，电影质感",
    "A sexton rings the church bell",  # 'sex' is not a term, and 'sex scene' needs both words
])
def test_clean_prompts_pass(defaults, prompt):
    assert found(prompt, defaults) == []


def test_block_mode_names_every_matched_term_and_its_list(defaults):
    with pytest.raises(PromptBlocked) as err:
        check_prompt("A gore-soaked battlefield, 血腥 and beheading", defaults, "block")
    message = str(err.value)
    assert "'gore' (en.txt), 'beheading' (en.txt), '血腥' (zh.txt)" in message
    assert "Rephrase the prompt, or edit the term lists" in message


def test_warn_mode_returns_the_matches_and_a_warning(defaults):
    matches, report = check_prompt("Slow-motion gore", defaults, "warn")
    assert [m.term for m in matches] == ["gore"] and matches[0].found == "gore"
    assert report.startswith("warning: the prompt contains sensitive terms: 'gore' (en.txt)")
    matches, report = check_prompt(CLEAN, defaults, "block")
    assert matches == [] and report == f"no sensitive terms found ({len(defaults.terms)} terms from en.txt, zh.txt)"


def test_user_files_in_other_languages(tmp_path):
    (tmp_path / "mine.txt").write_text("# my list\nBlutbad\nрезня\n流血\nmassacre*\n\n", encoding="utf-8")
    terms = TermList()
    terms.add_file(tmp_path / "mine.txt")
    assert found("Ein Blutbad im Schnee", terms) == [("Blutbad", "mine.txt")]
    assert found("Кровавая резня на улице", terms) == [("резня", "mine.txt")]
    assert found("戦場で流血する兵士", terms) == [("流血", "mine.txt")]
    assert found("the massacred village", terms) == [("massacre*", "mine.txt")]
    assert found("Blutbader", terms) == []  # whole words only without '*'


def test_extra_lines_are_a_list_of_their_own():
    terms = TermList()
    terms.add_lines(["dragon", "  ", "# not a term"], "extra_terms")
    assert [t.text for t in terms.terms] == ["dragon"] and terms.sources == ["extra_terms"]
    _, report = check_prompt("a dragon", terms, "warn")
    assert "'dragon' (extra_terms)" in report


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="term list 'latin1.txt' is not UTF-8 text"):
        TermList().add_file(tmp_path / "latin1.txt")


def test_comments_blank_lines_and_bare_wildcards_are_not_terms():
    assert compile_term("# comment", "x") is None and compile_term("   ", "x") is None and compile_term("*", "x") is None


def test_unknown_mode_is_refused(defaults):
    with pytest.raises(ValueError, match="mode must be one of"):
        check_prompt(CLEAN, defaults, "redact")
