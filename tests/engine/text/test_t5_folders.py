"""umT5 from folders: a sharded Hugging Face folder, and a diffusers pipeline's text_encoder/ with tokenizer/ beside it."""

from __future__ import annotations

import pytest
import torch

from wan_core.io.checkpoint import CheckpointError
from wan_core.testing.tiny import t5 as tiny
from wan_core.text.encoder import load_text_encoder
from wan_core.text.t5 import T5Config, T5Encoder
from wan_core.text.tokenizer import Tokenizer

SMALL = T5Config(vocab=tiny.SPM_VOCAB, dim=64, dim_attn=32, dim_ffn=48, num_heads=4, num_layers=2)
PROMPTS = ["A red fox runs through fresh snow at dawn.", "一只狐狸在雪地里奔跑"]
SEED = 9


@pytest.fixture(scope="module")
def reference() -> list[torch.Tensor]:
    model = T5Encoder(SMALL).eval()
    model.load_state_dict(tiny.random_official_state(SMALL, SEED), strict=True)
    tok = Tokenizer(spm_bytes=tiny.tiny_spm_bytes())
    return model.encode_ids([tok.encode(p).ids for p in PROMPTS])


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_a_sharded_hf_folder_loads_as_one_encoder(tmp_path, reference):
    folder = tiny.write_hf_folder(tmp_path / "umt5-xxl", SMALL, SEED, max_shard_size="20KB")
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) > 2 and (folder / "model.safetensors.index.json").is_file()
    encoder = load_text_encoder(folder, dtype="fp32")
    assert encoder.layout == "hf" and encoder.tokenizer.source == str(folder / "spiece.model")
    assert same(encoder.encode(PROMPTS).embeddings, reference)


def test_a_pipeline_text_encoder_reads_the_tokenizer_beside_it(tmp_path, reference):
    pipeline = tmp_path / "Wan2.2-T2V-A14B-Diffusers"
    folder = tiny.write_hf_folder(pipeline / "text_encoder", SMALL, SEED, max_shard_size="20KB", tokenizer=False)
    with pytest.raises(CheckpointError, match=r"found no umT5 tokenizer.*a diffusers pipeline's tokenizer/ beside it"):
        load_text_encoder(folder, dtype="fp32")
    (pipeline / "tokenizer").mkdir()
    (pipeline / "tokenizer" / "spiece.model").write_bytes(tiny.tiny_spm_bytes())
    encoder = load_text_encoder(folder, dtype="fp32")
    assert encoder.tokenizer.source == str(pipeline / "tokenizer" / "spiece.model")
    assert same(encoder.encode(PROMPTS).embeddings, reference)
