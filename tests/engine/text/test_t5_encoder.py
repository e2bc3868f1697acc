"""umT5 encoder parity with transformers' UMT5EncoderModel (keys renamed by the 10-rule table), fp32, CPU."""

from __future__ import annotations

import pytest
import torch

from wan_core.text.t5 import T5Config, T5Encoder, T5RelativeEmbedding, UMT5_XXL
from wan_core.text.encoder import hf_to_official, official_to_hf
from wan_core.testing.tiny.t5 import TINY_T5, random_official_state


CFG = T5Config(vocab=1000, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2)
TOL = 1e-5  # reference §13: measured <= 1.6e-6 on this size


def _hf_model(cfg: T5Config, seed: int = 0):
    from transformers import UMT5Config, UMT5EncoderModel

    hf_cfg = UMT5Config(vocab_size=cfg.vocab, d_model=cfg.dim, d_kv=cfg.head_dim, d_ff=cfg.dim_ffn, num_layers=cfg.num_layers,
                        num_heads=cfg.num_heads, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                        feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6,
                        tie_word_embeddings=False, is_encoder_decoder=False, use_cache=False)
    torch.manual_seed(seed)
    model = UMT5EncoderModel(hf_cfg).eval()
    with torch.no_grad():  # HF init leaves norms at 1 and bias tables tiny; randomize everything
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (p.shape[-1] ** -0.5 if p.dim() == 2 and p.shape[0] != cfg.vocab else 1.0))
    return model


@pytest.fixture(scope="module")
def pair():
    hf = _hf_model(CFG)
    sd = {hf_to_official(k): v for k, v in hf.state_dict().items() if hf_to_official(k) is not None}
    ours = T5Encoder(CFG).eval()
    ours.load_state_dict(sd, strict=True)
    return hf, ours


def test_rename_table_covers_every_key_both_ways(pair):
    hf, ours = pair
    hf_keys = {k for k in hf.state_dict() if k != "encoder.embed_tokens.weight"}
    assert {hf_to_official(k) for k in hf_keys} == set(ours.state_dict())
    assert {official_to_hf(k) for k in ours.state_dict()} == hf_keys
    assert set(UMT5_XXL.official_shapes()) == {f"blocks.{i}.{n}" for i in range(24) for n in (
        "norm1.weight", "attn.q.weight", "attn.k.weight", "attn.v.weight", "attn.o.weight", "norm2.weight",
        "ffn.gate.0.weight", "ffn.fc1.weight", "ffn.fc2.weight", "pos_embedding.embedding.weight")} | {"token_embedding.weight", "norm.weight"}
    assert len(UMT5_XXL.official_shapes()) == 242


@pytest.mark.parametrize("length", [12, 300])
def test_parity_single_prompt(pair, length):
    hf, ours = pair
    ids = torch.randint(3, CFG.vocab, (1, length), generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        out = ours(ids, torch.ones_like(ids))
    assert (out - ref).abs().max().item() <= TOL


def test_parity_padded_batch_real_tokens_only(pair):
    hf, ours = pair
    g = torch.Generator().manual_seed(1)
    lengths = [300, 137, 5]
    seqs = [torch.randint(3, CFG.vocab, (n,), generator=g).tolist() for n in lengths]
    outs = ours.encode_ids(seqs)
    assert [o.shape for o in outs] == [torch.Size([n, CFG.dim]) for n in lengths]
    batch = torch.zeros(3, 300, dtype=torch.long)
    mask = torch.zeros(3, 300, dtype=torch.long)
    for i, s in enumerate(seqs):
        batch[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    with torch.no_grad():
        ref = hf(input_ids=batch, attention_mask=mask).last_hidden_state
    for i, n in enumerate(lengths):
        assert (outs[i] - ref[i, :n]).abs().max().item() <= TOL
        # padding must not leak: the same prompt alone gives the same tokens
        alone = ours.encode_ids([seqs[i]])[0]
        assert (alone - outs[i]).abs().max().item() <= TOL


def test_relative_buckets_match_reference_values():
    rel = T5RelativeEmbedding(32, 4)
    b = rel.buckets(1, 300, torch.device("cpu"))[0]  # q at 0: rel = k
    assert b[1:8].tolist() == list(range(17, 24))  # |rel| < 8: exact, +16 for rel > 0
    assert b[0].item() == 0 and b[1].item() == 17 and b[7].item() == 23  # rel 0 -> 0; rel>0 -> +16
    assert b[128:].eq(31).all()  # beyond max_distance: last bucket
    back = rel.buckets(300, 1, torch.device("cpu"))[:, 0]  # rel = -q
    assert back[1].item() == 1 and back[200].item() == 15


def test_tiny_config_fits_the_dit_text_dim():
    assert TINY_T5.dim == 4096 and TINY_T5.num_layers == 2 and TINY_T5.num_heads * 64 == TINY_T5.dim_attn
    assert T5Config.from_shapes(TINY_T5.official_shapes()) == TINY_T5
    sd = random_official_state(T5Config(vocab=50, dim=16, dim_attn=16, dim_ffn=8, num_heads=2, num_layers=3), seed=3)
    assert T5Config.from_shapes({k: v.shape for k, v in sd.items()}).num_heads == 2


def test_fp16_clamp_keeps_outputs_finite():
    ours = T5Encoder(CFG).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn_like(p))
        ours.blocks[0].ffn.fc2.weight.mul_(1e4)  # force fp16 overflow in the residual
    ids = torch.randint(3, CFG.vocab, (1, 20))
    out = ours.half()(ids, torch.ones_like(ids))
    assert torch.isfinite(out).all()
