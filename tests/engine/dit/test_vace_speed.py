"""The speed features on a VACE expert: the VACE blocks share the run's text keys/values, compile with the main
blocks, take fp8 matmuls and are converted once at load like the main blocks; the outputs stay those of the plain path."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from wan_core.dit.loader import load_dit
from wan_core.dit.model import CrossAttention, WanDiT
from wan_core.dit.vace import VaceInput
from wan_core.io.quant import Fp8Linear
from wan_core.sampling.placement import dit_expert_spec
from wan_core.testing.tiny import dit as tiny

CONFIG = tiny.TINY_VACE_CONFIG
LATENT = (1, 16, 2, 6, 8)


def probe(streams: int = 2):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(*LATENT, generator=g)
    control = VaceInput(tuple(torch.randn(1, 96, *LATENT[2:], generator=g) for _ in range(streams)),
                        tuple(torch.tensor([s]) for s in (0.9, 0.4)[:streams]))
    return x, [torch.randn(6, CONFIG.text_dim, generator=g)], control


@pytest.fixture(scope="module")
def model() -> WanDiT:
    m = WanDiT(CONFIG)
    m.load_state_dict(tiny.random_state_dict(CONFIG, seed=51), strict=True)
    return m.eval()


def test_vace_blocks_project_the_text_once_per_run_for_every_stream(model, monkeypatch):
    x, ctx, control = probe(streams=2)
    calls: list[int] = []
    real = CrossAttention.project_context
    monkeypatch.setattr(CrossAttention, "project_context", lambda self, c: (calls.append(1), real(self, c))[1])
    with torch.no_grad():
        model.forget_text()
        first = model(x, torch.tensor([900.0]), ctx, control=control)
        after_first = len(calls)
        second = model(x, torch.tensor([600.0]), ctx, control=control)
        model.forget_text()
        fresh = model(x, torch.tensor([600.0]), ctx, control=control)
    assert after_first == CONFIG.num_layers + CONFIG.vace_layers  # once per block, not once per stream
    assert len(calls) == 2 * after_first  # the second step projected nothing; the fresh run all again
    assert torch.equal(second, fresh) and not torch.equal(first, second)


def test_compiled_blocks_include_the_vace_blocks_and_match_eager(model):
    import torch._dynamo

    x, ctx, control = probe(streams=1)
    steps = (999.0, 500.0, 300.0)
    with torch.no_grad():
        eager = [model(x, torch.tensor([t]), ctx, control=control) for t in steps]
        model.compile_blocks(backend="eager")  # dynamo's tracing and guards, no C++ toolchain
        try:
            torch._dynamo.reset()
            torch._dynamo.utils.counters.clear()
            compiled = [model(x, torch.tensor([steps[0]]), ctx, control=control)]
            graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
            compiled += [model(x, torch.tensor([t]), ctx, control=control) for t in steps[1:]]
            later = torch._dynamo.utils.counters["stats"]["unique_graphs"]
            wrapped = all("_eager_forward" in b.__dict__ for b in model.vace_blocks)
        finally:
            model.compile_blocks(False)
        back = model(x, torch.tensor([steps[0]]), ctx, control=control)
    assert wrapped and later == graphs  # VACE blocks compiled too; later timesteps reuse the traced graphs
    assert all((a - b).abs().max().item() < 1e-5 for a, b in zip(eager, compiled))  # float32 op reordering
    assert torch.equal(back, eager[0]) and not any("_eager_forward" in b.__dict__ for b in model.vace_blocks)


def test_fp8_matmul_reaches_the_vace_linears(tmp_path):
    # The CPU's _scaled_mm is a slow reference kernel (about 20 ms per token row at 256 wide): few tokens, short text.
    config = replace(CONFIG, num_layers=2, vace_layers=1, text_dim=64)
    sd = tiny.random_state_dict(config, seed=52)
    path = tiny.write_scaled_fp8_file(tmp_path / "wan2.2_fun_vace_high_noise_14B_fp8_scaled.safetensors", sd)
    spec = dit_expert_spec(path, device="cpu", fp8_matmul=True)
    fast = spec.load(torch.device("cpu"))
    spec.configure(fast)
    slow = load_dit(path)
    for m in (fast, slow):  # the padded text length is not in a file (512 when loaded): 8 rows of text here
        m.config = replace(m.config, text_len=8)
    vace = [m for m in fast.vace_blocks.modules() if isinstance(m, Fp8Linear)]
    assert len(vace) == 10 and all(m.scaled_mm for m in vace)  # q, k, v, o of both attentions + the 2 FFN Linears
    g = torch.Generator().manual_seed(6)
    x, ctx = torch.randn(1, 16, 1, 4, 4, generator=g), [torch.randn(5, 64, generator=g)]
    control = VaceInput((torch.randn(1, 96, 1, 4, 4, generator=g),), (torch.tensor([1.0]),))
    with torch.no_grad():
        a, b = fast(x, torch.tensor([700.0]), ctx, control=control), slow(x, torch.tensor([700.0]), ctx, control=control)
    rel = ((a - b).norm() / b.norm()).item()
    assert 0 < rel < 0.05  # per-tensor e4m3 inputs (1.2% per matmul on random data), through 3 blocks


def test_an_fp16_vace_module_under_bf16_compute_is_converted_once_with_the_same_output(tmp_path):
    sd = {k: v.half() for k, v in tiny.random_state_dict(CONFIG, seed=53).items()}
    base, _ = tiny.split_vace(sd)
    expert = tiny.write_single_file(tmp_path / "wan2.2_t2v_high_noise_14B_fp16.safetensors", base)
    module = tiny.write_vace_module_file(tmp_path / "Wan2_2_Fun_VACE_module_A14B_HIGH_fp16.safetensors", sd,
                                         dtype=torch.float16)
    converted = load_dit(expert, compute_dtype="bf16", vace_module=module)
    per_call = load_dit(expert, compute_dtype="bf16", weight_dtype="fp16", vace_module=module)
    block = converted.vace_blocks[0]
    assert block.ffn[0].weight.dtype == block.after_proj.weight.dtype == block.before_proj.bias.dtype == torch.bfloat16
    assert converted.vace_patch_embedding.weight.dtype == torch.float16  # a float32 module: kept as stored
    assert block.modulation.dtype == torch.float16 and per_call.vace_blocks[0].ffn[0].weight.dtype == torch.float16
    x, ctx, control = probe(streams=1)
    with torch.no_grad():
        t = torch.tensor([500.0])
        assert torch.equal(converted(x, t, ctx, control=control), per_call(x, t, ctx, control=control))
