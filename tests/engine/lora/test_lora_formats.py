"""Every LoRA layout users download gives the merge by definition: W + strength * (alpha / rank * up @ down + diff).

The reference is computed in the test (wan_core.testing.tiny.lora.merged_state_dict) and run through a plain WanDiT;
ours loads the file with load_dit and applies the LoRA with wan_core.lora.apply_stack. fp32 throughout: 1e-5 bounds
the round-off of summing the same deltas in another order. PEFT files are also compared with diffusers' own
`load_lora_adapter` on its WanTransformer3DModel.
"""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import CONFIG, dit_input, forward, model_from
from diffusers_testing import reference_model, sinusoid_float64
from wan_core.dit.loader import load_dit
from wan_core.lora import apply_stack, read_lora
from wan_core.testing.tiny import lora as tiny_lora


_outputs: dict = {}


def ours(expert_file, path, strength: float) -> torch.Tensor:
    """Our forward after applying `path` at `strength` to a freshly loaded expert (computed once per file)."""
    key = (str(path), strength)
    if key not in _outputs:
        model = load_dit(expert_file)
        apply_stack(model, [(str(path), strength)], base_path=expert_file)
        _outputs[key] = forward(model)
    return _outputs[key]


# Every layout at 0.5; 1.0 and -1.0 on two of them (ComfyUI parity covers all three strengths: tests/comfy/test_lora_core).
CASES = [(layout, 0.5) for layout in tiny_lora.LAYOUTS] + [("official", 1.0), ("peft", -1.0)]


@pytest.mark.parametrize("layout, strength", CASES)
def test_each_layout_gives_the_merge_by_definition(base_sd, expert_file, content, lora_files, layout, strength):
    expected = forward(model_from(tiny_lora.merged_state_dict(base_sd, content, strength)))
    got = ours(expert_file, lora_files[layout], strength)
    assert (got - expected).abs().max().item() <= 1e-5
    assert (got - forward(model_from(base_sd))).abs().max().item() > 1e-2  # the LoRA does change the output


def test_every_layout_maps_every_tensor_and_alpha(content, lora_files):
    expected = {m + ".weight" for m in content.pairs} | set(content.diffs)
    for layout, path in lora_files.items():
        lora = read_lora(path, CONFIG)
        assert {p.target for p in lora.patches} == expected, layout
        assert lora.unmatched == (), layout
        with_alpha = [p for p in lora.patches if p.family == "lora" and p.alpha]
        assert len(with_alpha) == (0 if layout == "peft" else len(content.pairs)), layout


def test_all_layouts_describing_one_delta_give_one_output(expert_file, lora_files):
    first = ours(expert_file, lora_files["diffusion_model"], 0.5)
    for layout, path in lora_files.items():
        # PEFT stores alpha / rank folded into lora_B: one more rounding of the same product (measured ~1e-7)
        diff = (ours(expert_file, path, 0.5) - first).abs().max().item()
        assert diff <= (1e-6 if layout == "peft" else 0.0), layout


def loha_lokr_files(tmp_path, content):
    """A LoHa and a LoKr file on the attention Linears, and the deltas they define (by ComfyUI's formulas)."""
    gen = torch.Generator().manual_seed(5)
    loha, lokr, deltas = {}, {}, {}
    for module in list(content.pairs)[:4]:
        out, inner = CONFIG.dim, CONFIG.dim
        w = [torch.randn(out, 3, generator=gen) * 0.3, torch.randn(3, inner, generator=gen) / 16,
             torch.randn(out, 3, generator=gen), torch.randn(3, inner, generator=gen) / 16]
        for name, t in zip(("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"), w):
            loha[f"diffusion_model.{module}.{name}"] = t
        loha[f"diffusion_model.{module}.alpha"] = torch.tensor(1.5)
        deltas.setdefault("loha", {})[module] = (w[0] @ w[1]) * (w[2] @ w[3]) * (1.5 / 3)
        w1 = torch.randn(16, 16, generator=gen) * 0.1
        w2a, w2b = torch.randn(16, 2, generator=gen), torch.randn(2, 16, generator=gen) * 0.1
        lokr.update({f"diffusion_model.{module}.lokr_w1": w1, f"diffusion_model.{module}.lokr_w2_a": w2a,
                     f"diffusion_model.{module}.lokr_w2_b": w2b, f"diffusion_model.{module}.alpha": torch.tensor(4.0)})
        deltas.setdefault("lokr", {})[module] = torch.kron(w1, w2a @ w2b) * (4.0 / 2)
    from safetensors.torch import save_file

    save_file(loha, str(tmp_path / "loha.safetensors"))
    save_file(lokr, str(tmp_path / "lokr.safetensors"))
    return {"loha": tmp_path / "loha.safetensors", "lokr": tmp_path / "lokr.safetensors"}, deltas


@pytest.mark.parametrize("family", ["loha", "lokr"])
def test_loha_and_lokr_give_their_definition(tmp_path, base_sd, expert_file, content, family):
    files, deltas = loha_lokr_files(tmp_path, content)
    sd = {k: v.clone() for k, v in base_sd.items()}
    for module, d in deltas[family].items():
        sd[module + ".weight"] += 0.7 * d
    model = load_dit(expert_file)
    apply_stack(model, [(str(files[family]), 0.7)], base_path=expert_file)
    got, expected = forward(model), forward(model_from(sd))
    assert (got - expected).abs().max().item() <= 1e-5
    assert (got - forward(model_from(base_sd))).abs().max().item() > 1e-2


def test_keys_that_match_nothing_are_named_in_one_warning(tmp_path, content, caplog):
    extra = {f"lora_te_text_model_encoder_layers_{i}_mlp_fc1.lora_up.weight": torch.zeros(4, 2) for i in range(12)}
    extra["blocks.0.img_attn.q.lora_up.weight"] = torch.zeros(4, 2)
    path = tiny_lora.write_lora(tmp_path / "with_extras.safetensors", content, extra=extra)
    with caplog.at_level(logging.WARNING, logger="wan_core.lora"):
        lora = read_lora(path, CONFIG)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and len(lora.unmatched) == 13
    message = warnings[0]
    assert "with_extras.safetensors: 13 of" in message and "and 3 more" in message
    assert sum(key in message for key in lora.unmatched) == 10


# --- PEFT against diffusers' own loader --------------------------------------------------------------------------
@torch.no_grad()
def test_peft_lora_matches_diffusers_load_lora_adapter(tmp_path, base_sd, expert_file, monkeypatch):
    from diffusers.models import embeddings
    from safetensors.torch import load_file

    monkeypatch.setattr(embeddings, "get_timestep_embedding", sinusoid_float64)
    pairs_only = tiny_lora.random_lora(CONFIG, rank=4, alpha=None, seed=2, diffs=False)
    path = tiny_lora.write_lora(tmp_path / "peft.safetensors", pairs_only, "peft")
    reference = reference_model(CONFIG, base_sd)
    reference.load_lora_adapter(load_file(str(path)), prefix="transformer", adapter_name="tiny")
    x, t, context = dit_input()
    padded = torch.zeros(1, 512, CONFIG.text_dim)
    padded[0, :7] = context[0]
    expected = reference(x, t, padded, return_dict=False)[0]
    model = load_dit(expert_file)
    apply_stack(model, [(str(path), 1.0)], base_path=expert_file)
    got = model(x, t, context)
    # 5e-5: the base models' own parity bound (tests/engine/dit/test_dit_parity.py, float64 sinusoid)
    assert (got - expected).abs().max().item() <= 5e-5
    assert (got - forward(model_from(base_sd))).abs().max().item() > 1e-2
