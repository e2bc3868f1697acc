"""A LoRA changed between runs meets the speed paths' kept state: never stale, always what a fresh load gives.

The speed work keeps things across calls that a LoRA changes: the text embedding and cross-attention keys/values
(DiT `_text_cache`, dropped by `forget_text`), weights converted to the compute dtype at load, the fp8 matmul path
(`torch._scaled_mm`), the FFN's once-per-call dequantised weight (`dequantized_once`), blocks kept resident by the
BlockStreamer, and torch.compile of the blocks. Each test changes a strength between two forwards that share every
input tensor (so whatever is kept by tensor identity is kept) and compares with a fresh load at the new strength:
within 1e-5 where the changed tensors are fp32 (the one extra float32 rounding of an in-place strength change, see
lora/apply.py; fp8 experts merge the LoRA's norm and modulation diffs into their fp32 tensors), within one bf16
rounding for bf16 weights (the bound of test_lora_apply).
"""

from __future__ import annotations

import pytest
import torch

import wan_core.dit.model as dit_model
from conftest import dit_input
from wan_core.dit.loader import load_dit
from wan_core.io.quant.fp8 import use_fp8_matmul
from wan_core.lora import apply_stack
from wan_core.memory.budget import GiB, MemoryBudget
from wan_core.memory.cache import ModelCache
from wan_core.sampling.placement import dit_expert_spec
from wan_core.testing.tiny import dit as tiny_dit

INPUT = dit_input(seed=5)  # one set of tensors: the text cache keys on their identity


@pytest.fixture(scope="module")
def fp8_file(tmp_path_factory, base_sd):
    return tiny_dit.write_scaled_fp8_file(tmp_path_factory.mktemp("fp8s") / "expert_fp8_scaled.safetensors", base_sd,
                                          other_dtype=torch.float32)


@pytest.fixture(scope="module")
def fp16_file(tmp_path_factory, base_sd):
    sd = {k: v.half() for k, v in base_sd.items()}
    return tiny_dit.write_single_file(tmp_path_factory.mktemp("fp16") / "expert_fp16.safetensors", sd)


@torch.no_grad()
def run(model: torch.nn.Module) -> torch.Tensor:
    return model(*INPUT)


def loaded(path, stack, **load) -> torch.nn.Module:
    model = load_dit(path, **load)
    apply_stack(model, stack, base_path=path, weight_dtype=load.get("weight_dtype", "auto"))
    return model


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("which", ["merged fp32", "fp8 run-time"])
def test_kept_text_keys_values_follow_a_strength_change(expert_file, fp8_file, lora_files, which):
    path, lora = (expert_file if which == "merged fp32" else fp8_file), str(lora_files["diffusion_model"])
    model = loaded(path, [(lora, 1.0)])
    first = run(model)
    assert len(model._text_cache) == 1 and all(kv is not None for kv in next(iter(model._text_cache.values())).kv)
    apply_stack(model, [(lora, 0.5)], base_path=path)
    changed, fresh = run(model), run(loaded(path, [(lora, 0.5)]))
    assert max_diff(first, fresh) > 0.05  # the strength matters (the test could fail)
    assert max_diff(changed, fresh) <= 1e-5  # fp8 experts merge the LoRA's norm/modulation diffs too


def test_weights_converted_at_load_change_and_restore_as_loaded(fp16_file, lora_files):
    """fp16 file, bf16 compute, weight_dtype auto: the loader keeps the Linears in bf16 (converted once)."""
    load = dict(compute_dtype="bf16")
    lora = str(lora_files["kohya"])
    base = load_dit(fp16_file, **load)
    assert base.blocks[0].ffn[0].weight.dtype == torch.bfloat16
    base_out = run(base)
    model = loaded(fp16_file, [(lora, 1.0)], **load)
    run(model)
    apply_stack(model, [(lora, 0.5)], base_path=fp16_file)
    fresh = run(loaded(fp16_file, [(lora, 0.5)], **load))
    assert max_diff(run(model), fresh) <= 0.02 < max_diff(base_out, fresh)  # one bf16 rounding (test_lora_apply)
    apply_stack(model, [], base_path=fp16_file)  # large weights re-read from the fp16 file, converted as at load
    assert torch.equal(run(model), base_out)


def test_fp8_matmul_path_carries_the_terms_and_their_strength(fp8_file, lora_files, content):
    """One block Linear of an fp8 expert on the torch._scaled_mm path (the CPU's kernel is slow: one layer, not the
    DiT): what the LoRA adds is its delta on the input, and a strength change in place equals a fresh load."""
    lora, name = str(lora_files["diffusion_model"]), "blocks.1.ffn.0"
    up, down, alpha = content.pairs[name]
    x = torch.randn(2, 12, down.shape[1], generator=torch.Generator().manual_seed(4))

    def layer(stack):
        model = loaded(fp8_file, stack, compute_dtype="bf16")
        assert use_fp8_matmul(model.get_submodule(name), True) == 1
        return model, model.get_submodule(name)

    with torch.no_grad():
        base = layer([])[1](x)
        model, changed = layer([(lora, 1.0)])
        changed(x)
        apply_stack(model, [(lora, 0.5)], base_path=fp8_file)
        out = changed(x)
        fresh = layer([(lora, 0.5)])[1](x)
    assert changed.scaled_mm  # no fallback was taken
    assert torch.equal(out, fresh)  # a run-time term's strength is all that changes
    expected = 0.5 * (alpha / down.shape[0]) * (x @ (up @ down).T)
    # bf16 compute: the term's two thin matmuls and the sum round in bf16 (8 bits): 2% of the term's size
    assert max_diff(out - base, expected) <= 0.02 * expected.abs().max().item()


def test_chunked_ffn_dequantising_once_still_adds_the_terms(fp8_file, lora_files, monkeypatch):
    lora = str(lora_files["diffusion_model"])
    whole = run(loaded(fp8_file, [(lora, 0.5)]))
    monkeypatch.setattr(dit_model, "FFN_CHUNK_BYTES", 5 * 4 * tiny_dit.TINY_DIT_CONFIG.ffn_dim)  # 5 tokens a chunk
    held: list[int] = []
    real = dit_model.dequantized_once

    def counting(*layers):
        held.append(len(layers))
        return real(*layers)

    monkeypatch.setattr(dit_model, "dequantized_once", counting)
    model = loaded(fp8_file, [(lora, 1.0)])
    run(model)
    apply_stack(model, [(lora, 0.5)], base_path=fp8_file)
    held.clear()
    chunked = run(model)
    assert held and max_diff(chunked, whole) <= 1e-5  # chunks change only the matmuls' float rounding
    assert max_diff(chunked, run(loaded(fp8_file, []))) > 0.05


def test_streaming_with_resident_blocks_serves_the_new_strength(expert_file, lora_files):
    lora = str(lora_files["official"])
    cache = ModelCache(MemoryBudget(vram_bytes=0, ram_bytes=4 * GiB))

    def streamed(strength):
        spec = dit_expert_spec(expert_file, device="cpu", loras=[(lora, strength)])
        module = cache.stream(spec.key, spec.load, size_bytes=spec.size_bytes, device="cpu", pin=False,
                              resident=1, reuse=spec.reuse)
        return module, cache._entries[spec.key].streamer

    model, streamer = streamed(1.0)
    assert streamer.resident == 1 and streamer.attached
    run(model)
    model, streamer = streamed(0.5)
    assert cache.stats().loads == 1 and cache.stats().reuses == 1 and streamer.attached
    assert max_diff(run(model), run(loaded(expert_file, [(lora, 0.5)]))) <= 1e-5


@pytest.mark.parametrize("which", ["merged fp32", "fp8 run-time"])
def test_compiled_blocks_see_a_lora_added_and_changed_after_compiling(expert_file, fp8_file, lora_files, which):
    import torch._dynamo

    path, lora = (expert_file if which == "merged fp32" else fp8_file), str(lora_files["diffusion_model"])
    model = load_dit(path)
    model.compile_blocks(backend="eager")  # dynamo's tracing and guards, without a C++ toolchain's compile time
    torch._dynamo.reset()
    try:
        run(model)
        outs = []
        for strength in (1.0, 0.5):
            apply_stack(model, [(lora, strength)], base_path=path)
            outs.append(run(model))
    finally:
        model.compile_blocks(False)
        torch._dynamo.reset()
    for out, strength in zip(outs, (1.0, 0.5)):
        assert max_diff(out, run(loaded(path, [(lora, strength)]))) <= 1e-5
