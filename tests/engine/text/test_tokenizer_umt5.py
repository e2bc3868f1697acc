"""umT5 tokenizer: parity with reference SentencePiece tokenizers on an in-process trained model, cleaning, truncation."""

from __future__ import annotations

import logging

import pytest
import torch

from wan_core.io.checkpoint import CheckpointError
from wan_core.testing.tiny.t5 import SPM_VOCAB, tiny_spm_bytes
from wan_core.text.tokenizer import Tokenizer, clean_prompt, find_tokenizer_near, load_tokenizer

PROMPTS = {
    "en": "A red sports car drives along a coastal road at sunset, waves crash on the rocks.",
    "zh": "一辆红色跑车在日落时沿着海岸公路行驶，海浪拍打着岩石。",
    "ja": "夕焼けの海岸道路を赤いスポーツカーが走り、波が岩に打ち寄せる。",
    "ko": "해질녘 해안 도로를 빨간 스포츠카가 달리고 파도가 바위에 부딪힌다.",
    "mixed": "A panda eats bamboo 熊猫吃竹子 パンダが竹を食べる 판다가 대나무를 먹는다 2025!",
    "unseen": "Zebra quokka 鹦鹉 ワニ 기린 ✨",
}


@pytest.fixture(scope="module")
def spm_bytes() -> bytes:
    return tiny_spm_bytes()


@pytest.fixture(scope="module")
def ours(spm_bytes) -> Tokenizer:
    return Tokenizer(spm_bytes=spm_bytes)


@pytest.fixture(scope="module")
def hf_reference(spm_bytes):
    """transformers' T5Tokenizer built from (piece, score) pairs (reference pitfall 5: vocab_file= silently fails)."""
    import transformers
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_proto=spm_bytes)
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    return transformers.T5Tokenizer(vocab=vocab, extra_ids=0)


def test_tiny_model_is_deterministic_and_sized(spm_bytes):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_proto=spm_bytes)
    assert sp.get_piece_size() == SPM_VOCAB
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2)  # umT5's special ids


@pytest.mark.parametrize("lang", sorted(PROMPTS))
def test_ids_match_sentencepiece_and_transformers(ours, spm_bytes, hf_reference, lang):
    import sentencepiece

    text = PROMPTS[lang]
    got = ours.encode(text)
    sp = sentencepiece.SentencePieceProcessor(model_proto=spm_bytes)
    assert got.ids == sp.encode(clean_prompt(text)) + [1]
    assert got.ids == hf_reference(clean_prompt(text), add_special_tokens=True)["input_ids"]
    assert got.ids[-1] == 1 and got.dropped == 0 and len(got.ids) > 5


def test_tokenizer_json_source_matches(ours, hf_reference, tmp_path):
    hf_reference.save_pretrained(str(tmp_path))
    assert (tmp_path / "tokenizer.json").is_file() and not (tmp_path / "spiece.model").exists()
    fast = load_tokenizer(tmp_path)
    assert fast.serialized() is None and fast.eos_id == 1
    for text in PROMPTS.values():
        assert fast.encode(text).ids == ours.encode(text).ids


@pytest.mark.parametrize("raw, cleaned", [
    ("Tom &amp; Jerry", "Tom & Jerry"),
    ("Tom &amp;amp; Jerry", "Tom & Jerry"),  # double-escaped: unescaped twice
    ("a &lt;b&gt; c &quot;d&quot; &#39;e&#39;", "a <b> c \"d\" 'e'"),
    ("a<b>&amp;amp;</b>", "a<b>&</b>"),  # tags present: ftfy leaves entities, the two html.unescape passes remove them
    ("The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.", "The Mona Lisa doesn't have eyebrows."),  # mojibake
    ("cafÃ© crÃ¨me", "café crème"),
    ("  a \t\n b   c  \r\n", "a b c"),  # whitespace runs collapse, ends stripped
    ("x\u3000\u3000y", "x y"),  # ideographic spaces are whitespace too
    ("", ""),
])
def test_cleaning_as_official(raw, cleaned):
    assert clean_prompt(raw) == cleaned


def test_cleaning_changes_ids_like_official(ours):
    assert ours.encode("  Tom &amp;amp; Jerry\n\n").ids == ours.encode("Tom & Jerry").ids


def test_truncation_to_512_reports_dropped(ours, caplog):
    text = " ".join([PROMPTS["en"]] * 40)
    n = len(ours.raw_ids(clean_prompt(text)))
    assert n > 511
    with caplog.at_level(logging.WARNING, logger="wan_core.text.tokenizer"):
        got = ours.encode(text)
    assert len(got.ids) == 512 and got.ids[-1] == 1
    assert got.ids[:511] == ours.raw_ids(clean_prompt(text))[:511]
    assert got.dropped == n - 511
    assert f"{n - 511} token(s)" in got.warning() and "dropped" in caplog.text
    exact = ours.encode("a")
    assert exact.dropped == 0 and exact.warning() is None


def test_sources_file_folder_safetensors(spm_bytes, tmp_path):
    (tmp_path / "google" / "umt5-xxl").mkdir(parents=True)
    (tmp_path / "google" / "umt5-xxl" / "spiece.model").write_bytes(spm_bytes)
    weights = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    weights.write_bytes(b"")
    assert find_tokenizer_near(weights) == tmp_path / "google" / "umt5-xxl" / "spiece.model"
    from safetensors.torch import save_file

    save_file({"spiece_model": torch.frombuffer(bytearray(spm_bytes), dtype=torch.uint8)}, str(tmp_path / "t.safetensors"))
    a = load_tokenizer(tmp_path / "google" / "umt5-xxl")
    b = load_tokenizer(tmp_path / "t.safetensors")
    assert a.serialized() == b.serialized() == spm_bytes
    assert a.encode(PROMPTS["mixed"]).ids == b.encode(PROMPTS["mixed"]).ids
    with pytest.raises(CheckpointError, match="neither spiece.model nor tokenizer.json"):
        load_tokenizer(tmp_path / "google")
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="not a valid SentencePiece model"):
        load_tokenizer(tmp_path / "bad.model")
