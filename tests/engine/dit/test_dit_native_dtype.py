"""weight_dtype auto keeps a file's precision but stores each matmul weight in a narrower compute dtype once, at load,
instead of casting it at every call: the same output bit for bit, and never more memory."""

from __future__ import annotations

import torch

from wan_core.dit.loader import load_dit
from wan_core.testing.tiny import dit as tiny


def fp16_file(tmp_path):
    sd = tiny.random_state_dict(tiny.TINY_DIT_CONFIG, seed=0)
    return tiny.write_single_file(tmp_path / "e.safetensors", {k: v.half() for k, v in sd.items()})


def test_fp16_file_under_bf16_compute_converts_the_matmul_weights_once(tmp_path):
    path = fp16_file(tmp_path)
    converted = load_dit(path, compute_dtype="bf16")
    per_call = load_dit(path, compute_dtype="bf16", weight_dtype="fp16")  # kept fp16, cast at every call
    block = converted.blocks[0]
    assert block.ffn[0].weight.dtype == block.self_attn.q.bias.dtype == torch.bfloat16
    assert converted.patch_embedding.weight.dtype == torch.bfloat16
    # norms, modulation and the float32 modules (time MLPs, head) keep the stored precision
    assert block.norm3.weight.dtype == block.modulation.dtype == converted.head.head.weight.dtype == torch.float16
    assert per_call.blocks[0].ffn[0].weight.dtype == torch.float16
    x, ctx = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(1)), [torch.randn(7, 4096)]
    with torch.no_grad():
        assert torch.equal(converted(x, torch.tensor([500.0]), ctx), per_call(x, torch.tensor([500.0]), ctx))


def test_a_wider_compute_dtype_never_widens_the_stored_weights(tmp_path):
    model = load_dit(fp16_file(tmp_path), compute_dtype="fp32")  # the CPU default
    assert model.blocks[0].ffn[0].weight.dtype == torch.float16
