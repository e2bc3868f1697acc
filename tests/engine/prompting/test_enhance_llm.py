"""LLM prompt enhancement (wan_core.prompting.llm / enhance) end to end with a tiny random causal LM written here.

The random model's words are not judged; what is: the model really runs under our system prompt and chat template,
its reply is what transformers itself generates for that input, the subject check decides what is used, and the
report shows the rewrite and its diff against the user's prompt.
"""

from __future__ import annotations

import socket

import pytest
import torch

from wan_core.prompting.changes import diff
from wan_core.prompting.enhance import SubjectLost, enhance_llm
from wan_core.prompting.llm import SYSTEM_PROMPTS, chat_text, clean_reply, generate, load_causal_lm
from wan_core.testing.tiny.llm import write_llm_folder

PROMPT = "A red fox trots through fresh snow in a birch forest"
SAMPLING = dict(max_new_tokens=24, temperature=1.0, seed=7)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return write_llm_folder(tmp_path_factory.mktemp("LLM") / "Qwen2.5-3B-Instruct", seed=1)


@pytest.fixture(scope="module")
def lm(lm_dir):
    return load_causal_lm(lm_dir)


def transformers_reply(lm_dir, prompt: str, language: str, *, max_new_tokens: int, temperature: float, seed: int) -> str:
    """The same request made directly with transformers: chat template, generate, decode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(lm_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(lm_dir, local_files_only=True).eval()
    messages = [{"role": "system", "content": SYSTEM_PROMPTS[language]}, {"role": "user", "content": prompt}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    torch.manual_seed(seed)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=True, temperature=temperature, top_p=0.9, top_k=0, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_the_reply_is_what_transformers_generates_for_our_chat_input(lm, lm_dir):
    ours = generate(lm, PROMPT, "en", **SAMPLING)
    assert ours  # the sampled random model says something
    assert ours == clean_reply(transformers_reply(lm_dir, PROMPT, "en", **SAMPLING))


def test_the_chat_template_carries_our_system_prompt(lm):
    text = chat_text(lm.tokenizer, SYSTEM_PROMPTS["zh"], "一只红狐狸")
    assert text == f"<|im_start|>system\n{SYSTEM_PROMPTS['zh']}<|im_end|>\n<|im_start|>user\n一只红狐狸<|im_end|>\n<|im_start|>assistant\n"


def test_a_tokenizer_without_chat_template_gets_a_plain_transcript(tmp_path):
    plain = load_causal_lm(write_llm_folder(tmp_path / "plain", chat_template=False))
    assert chat_text(plain.tokenizer, "S", "U") == "System: S\n\nUser: U\n\nAssistant:"
    assert isinstance(generate(plain, PROMPT, "en", **SAMPLING), str)


def test_a_rewrite_that_drops_the_subject_is_not_used_and_is_shown(lm):
    result = enhance_llm(lm, PROMPT, "auto", **SAMPLING)
    assert result.language == "en" and result.proposed and not result.subject.ok
    assert result.text == PROMPT
    report = result.report().splitlines()
    assert report[:3] == ["mode llm, language en", "model Qwen2.5-3B-Instruct",
                          "the rewrite dropped your subject; your prompt is used unchanged"]
    shown = report.index("the enhancer proposed (not used):")
    assert report[shown + 1] == result.proposed
    assert report[shown + 3 : shown + 3 + len(diff(PROMPT, result.proposed))] == diff(PROMPT, result.proposed)
    assert report[-1] == "(none: the output is your prompt)"


def test_use_enhanced_passes_the_rewrite_on_flagged_with_its_diff(lm):
    result = enhance_llm(lm, PROMPT, "en", on_subject_lost="use enhanced", **SAMPLING)
    assert result.text == result.proposed == generate(lm, PROMPT, "en", **SAMPLING)
    report = result.report()
    assert "WARNING: the rewrite dropped your subject and is used anyway" in report
    assert report.endswith("changes to your prompt in the output:\n" + "\n".join(diff(PROMPT, result.text)))


def test_error_mode_stops_with_the_missing_subject_terms(lm):
    with pytest.raises(SubjectLost, match=r"dropped your subject \(missing: .*fox.*\)"):
        enhance_llm(lm, PROMPT, "en", on_subject_lost="error", **SAMPLING)


def test_chinese_prompts_get_the_chinese_system_prompt(lm):
    zh = "一只红狐狸在雪地里小跑"
    result = enhance_llm(lm, zh, "auto", on_subject_lost="use enhanced", **SAMPLING)
    assert result.language == "zh"
    assert result.proposed == generate(lm, zh, "zh", **SAMPLING) != generate(lm, zh, "en", **SAMPLING)


def test_seeds_reproduce_and_differ(lm):
    assert generate(lm, PROMPT, "en", **SAMPLING) == generate(lm, PROMPT, "en", **SAMPLING)
    others = {generate(lm, PROMPT, "en", **dict(SAMPLING, seed=s)) for s in range(4)}
    assert len(others) > 1


def test_loading_and_generating_need_no_network(lm_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network used")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    offline = load_causal_lm(lm_dir)
    assert generate(offline, PROMPT, "en", **SAMPLING) == generate(offline, PROMPT, "en", **SAMPLING)


def test_a_folder_that_is_not_a_model_is_named(tmp_path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(FileNotFoundError, match="language model folder 'notes' has no config.json"):
        load_causal_lm(tmp_path / "notes")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="language model folder 'broken' could not be loaded"):
        load_causal_lm(tmp_path / "broken")


@pytest.mark.parametrize("raw, clean", [
    ('  "A fox runs."  ', "A fox runs."), ("Prompt: A fox\n runs", "A fox runs"), ("提示词：一只狐狸", "一只狐狸"),
    ("A fox\ufffd\x0e", "A fox"), ("a\tb\nc", "a b c")])
def test_reply_cleaning(raw, clean):
    assert clean_reply(raw) == clean
