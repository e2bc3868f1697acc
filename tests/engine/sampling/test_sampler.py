"""MoE sampling loop: parity with diffusers' WanPipeline, expert switching, CFG batching, seeds, denoise, cancel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

import wan_core.memory.budget as budget
from wan_core.dit.model import DiTConfig, WanDiT
from wan_core.dit.keys import diffusers_to_official
from wan_core.sampling.experts import ResidentExperts
from wan_core.sampling.sampler import _use_cfg_batch, cfg_batch_bytes, make_noise, sample_moe, sample_schedule
from wan_core.sampling.schedule import base_grid, build_schedule
from wan_core.testing.tiny.dit import perturbed_dit

SHAPE = (1, 16, 2, 8, 8)  # 2 latent frames of 8x8 -> 32 tokens
STEPS, SHIFT = 4, 5.0  # t 999, 937 high-noise; 833, 624 low-noise
PARITY_STEPS = 8  # 4 high-noise steps (t 999-892), 4 low-noise (833-416)


def tiny_diffusers(seed: int) -> WanTransformer3DModel:
    """A tiny diffusers Wan DiT with 128-wide heads and 4096-wide text, weights perturbed so nothing is trivial."""
    torch.manual_seed(seed)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128, in_channels=16,
                                  out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=512, num_layers=2,
                                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def ours_from(reference: WanTransformer3DModel) -> WanDiT:
    model = WanDiT(DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2))
    model.load_state_dict({diffusers_to_official(k): v for k, v in reference.state_dict().items()}, strict=True)
    return model.eval()


class RecordingExperts:
    """ExpertSource over two resident experts that records requests, forward calls and releases."""

    def __init__(self, high: WanDiT, low: WanDiT) -> None:
        self.inner = ResidentExperts(high, low)
        self.requests: list[str] = []
        self.calls: list[tuple[str, int, list[float]]] = []  # (expert, batch, timesteps) per forward
        self.first_x: torch.Tensor | None = None
        self.releases = 0
        self.handles = [model.register_forward_pre_hook(self._hook(name), with_kwargs=True)
                        for name, model in (("high", high), ("low", low))]

    def _hook(self, name: str):
        def hook(module, args, kwargs):
            if self.first_x is None:
                self.first_x = args[0].clone()
            t = args[1]
            assert t.dtype == torch.float32 and t.shape == (args[0].shape[0],)
            self.calls.append((name, args[0].shape[0], t.tolist()))
        return hook

    def expert(self, name: str) -> WanDiT:
        self.requests.append(name)
        return self.inner.expert(name)

    def release(self) -> None:
        self.releases += 1

    def reset(self) -> None:
        self.requests, self.calls, self.first_x = [], [], None


@pytest.fixture(scope="module")
def parity_models() -> dict:
    hi, lo = tiny_diffusers(1), tiny_diffusers(2)
    return {"ref_high": hi, "ref_low": lo, "high": ours_from(hi), "low": ours_from(lo)}


@pytest.fixture(scope="module")
def models() -> dict:
    return {"high": perturbed_dit(1), "low": perturbed_dit(2)}


@pytest.fixture()
def experts(models: dict) -> RecordingExperts:
    source = RecordingExperts(models["high"], models["low"])
    yield source
    for handle in source.handles:
        handle.remove()


def contexts(dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(7, dim, generator=g), torch.randn(5, dim, generator=g)


@pytest.fixture(scope="module")
def text() -> tuple[torch.Tensor, torch.Tensor]:
    return contexts(64)


def per_step(calls: list[tuple[str, int, list[float]]]) -> list[tuple[str, int]]:
    """(expert, timestep) per step from forward records (cond and uncond passes of a step share t)."""
    steps: list[tuple[str, int]] = []
    for name, _batch, ts in calls:
        if not steps or steps[-1][1] != int(ts[0]):
            steps.append((name, int(ts[0])))
    return steps


def run(experts, text, **kwargs) -> torch.Tensor:
    params = dict(seed=42, steps=STEPS, shift=SHIFT, shape=SHAPE)
    params.update(kwargs)
    with torch.no_grad():
        return sample_moe(experts, [text[0]], [text[1]], **params)


def test_matches_diffusers_wan_pipeline(parity_models: dict) -> None:
    models = parity_models
    text = positive, negative = contexts(4096)
    noise = make_noise(SHAPE, 42)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=SHIFT)
    # The pipeline calls set_timesteps(num_inference_steps) only; feed it the official *unshifted* UniPC grid as a
    # numpy array (diffusers applies flow_shift to passed sigmas, giving exactly the official shifted grid).
    set_timesteps = scheduler.set_timesteps
    scheduler.set_timesteps = lambda num_inference_steps=None, device=None, **kw: set_timesteps(
        device=device, sigmas=base_grid("unipc", PARITY_STEPS))
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler,
                       transformer=models["ref_high"], transformer_2=models["ref_low"], boundary_ratio=0.875)
    reference_calls: list[tuple[str, int, list[float]]] = []
    hooks = [m.register_forward_pre_hook(
        lambda mod, args, kw, name=name: reference_calls.append((name, 1, kw["timestep"].tolist())), with_kwargs=True)
        for name, m in (("high", models["ref_high"]), ("low", models["ref_low"]))]

    def padded(c: torch.Tensor) -> torch.Tensor:  # the pipeline's prompt embeds are zero-padded to 512 tokens
        return torch.cat([c, c.new_zeros(512 - c.shape[0], c.shape[1])])[None]
    try:
        with torch.no_grad():
            reference = pipe(prompt_embeds=padded(positive), negative_prompt_embeds=padded(negative), height=64,
                             width=64, num_frames=5, num_inference_steps=PARITY_STEPS, guidance_scale=4.0,
                             guidance_scale_2=3.0, latents=noise.clone(), output_type="latent",
                             ).frames
    finally:
        for hook in hooks:
            hook.remove()

    schedule = build_schedule(PARITY_STEPS, SHIFT)
    expected = list(zip(schedule.experts, schedule.timesteps))
    assert per_step(reference_calls) == expected
    assert schedule.count("high") == 4 and schedule.count("low") == 4  # crosses the boundary mid-run

    results = {}
    experts = RecordingExperts(models["high"], models["low"])
    try:
        for mode in ("off", "on"):
            experts.reset()
            results[mode] = run(experts, text, cfg_batch=mode, steps=PARITY_STEPS)  # unpadded: our DiT pads to 512
            assert per_step(experts.calls) == expected
            assert experts.requests == list(schedule.experts)
            # measured 1.1e-5 (diffusers computes the time sinusoid in fp32, the official code and ours in fp64)
            assert (results[mode] - reference).abs().max().item() <= 5e-5
    finally:
        for handle in experts.handles:
            handle.remove()
    assert reference.abs().max().item() > 1.0
    assert (results["on"] - results["off"]).abs().max().item() <= 1e-5


def test_noise_is_comfyui_prepare_noise(experts: RecordingExperts, text) -> None:
    state = torch.random.get_rng_state()
    try:
        comfy = torch.randn(SHAPE, dtype=torch.float32, generator=torch.manual_seed(1234), device="cpu")
    finally:
        torch.random.set_rng_state(state)
    assert torch.equal(make_noise(SHAPE, 1234), comfy)
    run(experts, text, seed=1234, steps=2)
    assert torch.equal(experts.first_x[:1], comfy)  # denoise 1 starts from the noise itself (official loop)


def test_same_seed_twice_is_bitwise_identical(experts: RecordingExperts, text) -> None:
    a, b = run(experts, text, seed=7), run(experts, text, seed=7)
    assert torch.equal(a, b)
    assert not torch.equal(a, run(experts, text, seed=8))
    assert experts.releases == 3


@pytest.mark.parametrize("solver", ["unipc", "dpm++", "euler"])
def test_batched_cfg_equals_sequential(experts: RecordingExperts, text, solver: str) -> None:
    batched = run(experts, text, solver=solver, cfg_batch="on")
    assert {batch for _, batch, _ in experts.calls} == {2}
    experts.reset()
    sequential = run(experts, text, solver=solver, cfg_batch="off")
    assert {batch for _, batch, _ in experts.calls} == {1} and len(experts.calls) == 2 * STEPS
    assert (batched - sequential).abs().max().item() <= 1e-5
    assert torch.isfinite(batched).all()


def test_cfg_batch_auto_follows_free_memory_on_an_accelerator_and_never_batches_on_the_cpu(
        experts: RecordingExperts, text, monkeypatch) -> None:
    monkeypatch.setattr(budget, "free_bytes", lambda device: 1 << 50)
    run(experts, text, steps=2)
    assert {batch for _, batch, _ in experts.calls} == {1}  # the CPU: a batch of 2 is no faster, twice the memory
    model, x = experts.expert("high"), torch.empty(SHAPE, device="meta")
    assert _use_cfg_batch("auto", model, x, torch.device("cuda"))
    assert _use_cfg_batch("on", model, x, torch.device("cpu"))
    monkeypatch.setattr(budget, "free_bytes", lambda device: 2 * cfg_batch_bytes(model, x) // 2)
    assert not _use_cfg_batch("auto", model, x, torch.device("cuda"))  # twice a pass does not fit 70% of it
    # A14B at 1280x720x81 (21x90x160 latent, 75 600 tokens): tens of GB per pass, so 24 GB cards run sequentially.
    a14b = torch.nn.Module()
    a14b.config = DiTConfig.a14b()
    assert 10e9 < cfg_batch_bytes(a14b, torch.empty(1, 16, 21, 90, 160, device="meta")) < 40e9
    with pytest.raises(ValueError, match="cfg_batch"):
        run(experts, text, cfg_batch="maybe")


def test_guidance_one_skips_unconditional_pass(experts: RecordingExperts, text) -> None:
    run(experts, text, cfg_high=4.0, cfg_low=1.0, cfg_batch="off")
    high = [c for c in experts.calls if c[0] == "high"]
    low = [c for c in experts.calls if c[0] == "low"]
    assert len(high) == 2 * 2 and len(low) == 2  # low-noise steps: conditional pass only
    experts.reset()
    with torch.no_grad():
        out = sample_moe(experts, [text[0]], None, seed=1, steps=3, shape=SHAPE, cfg_high=1.0, cfg_low=1.0)
    assert len(experts.calls) == 3 and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="negative text conditioning is missing"):
        sample_moe(experts, [text[0]], None, seed=1, steps=3, shape=SHAPE)


def test_timesteps_fed_to_the_dit_are_truncated_integers(experts: RecordingExperts, text) -> None:
    latent = torch.zeros(SHAPE)
    run(experts, text, steps=40, shift=12.0, denoise=0.4, latent=latent, cfg_high=1.0, cfg_low=1.0)  # last 16 steps
    fed = [t for _, _, ts in experts.calls for t in ts]
    official = build_schedule(40, 12.0).timesteps[24:]
    assert per_step(experts.calls) == list(zip(build_schedule(40, 12.0).experts[24:], official))
    assert fed == [float(t) for t in official]  # one conditional pass per step at cfg 1
    sigmas = build_schedule(40, 12.0).sigmas[24:40]
    assert all(int(s * 1000) == t and s * 1000 != t for s, t in zip(sigmas, official))  # truncated, not rounded


def test_euler_feeds_the_lightning_timesteps_untruncated(experts: RecordingExperts, text) -> None:
    run(experts, text, steps=4, shift=5.0, solver="euler", cfg_high=1.0, cfg_low=1.0)
    assert [(name, ts) for name, _, ts in experts.calls] == [
        ("high", [1000.0]), ("high", [937.5]), ("low", [pytest.approx(833.3333, abs=1e-4)]), ("low", [625.0])]


def test_denoise_runs_only_last_steps_with_low_expert(experts: RecordingExperts, text) -> None:
    latent = torch.randn(SHAPE, generator=torch.Generator().manual_seed(11))
    schedule = build_schedule(20, 12.0, denoise=0.3)  # the last 6 of 20 official steps, all below t 875
    out = run(experts, text, steps=20, shift=12.0, denoise=0.3, latent=latent, shape=None, seed=5)
    assert experts.requests == ["low"] * 6
    assert per_step(experts.calls) == [("low", t) for t in build_schedule(20, 12.0).timesteps[14:]]
    sigma0 = schedule.sigmas[0]
    expected_start = sigma0 * make_noise(SHAPE, 5) + (1 - sigma0) * latent
    assert torch.equal(experts.first_x[:1], expected_start)
    assert out.shape == SHAPE and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="needs an input latent"):
        run(experts, text, denoise=0.5)
    assert torch.equal(run(experts, text, denoise=0.0, latent=latent, shape=None), latent)  # nothing to do


@pytest.mark.parametrize("solver", ["unipc", "dpm++", "euler"])
def test_callback_reports_each_step(experts: RecordingExperts, text, solver: str) -> None:
    seen = []
    out = run(experts, text, solver=solver, callback=lambda i, t, name, x0: seen.append((i, t, name, x0.clone())))
    schedule = build_schedule(STEPS, SHIFT, solver)
    assert [(i, t, n) for i, t, n, _ in seen] == list(zip(range(STEPS), schedule.timesteps, schedule.experts))
    assert all(x0.shape == SHAPE for *_, x0 in seen)
    # Every solver's last step is first order onto sigma 0: the result is the last x0 estimate itself (the preview
    # is the solver's own history for UniPC / DPM++, a buffer of the sampler's for Euler).
    assert torch.equal(seen[-1][3], out)
    assert not any(torch.equal(a[3], b[3]) for a, b in zip(seen, seen[1:]))  # each step's own estimate


def test_cancel_stops_within_one_block_and_experts_stay_usable(models: dict, experts: RecordingExperts, text) -> None:
    reference = run(experts, text)
    releases = experts.releases

    class Cancelled(Exception):
        pass

    blocks_run = 0
    pressed_at = 5  # "Cancel" pressed while block 5 runs (step 2 of 4, low-noise expert; 2 blocks per step)
    cancel = False

    def count(module, args):
        nonlocal blocks_run, cancel
        blocks_run += 1
        if blocks_run == pressed_at:
            cancel = True

    def check_cancel() -> None:
        if cancel:
            raise Cancelled()

    hooks = [b.register_forward_pre_hook(count) for m in (models["high"], models["low"]) for b in m.blocks]
    try:
        with pytest.raises(Cancelled):
            run(experts, text, check_cancel=check_cancel)
    finally:
        for hook in hooks:
            hook.remove()
    assert blocks_run == pressed_at  # the block running at cancel finished; no further block started
    assert experts.releases == releases + 1
    assert torch.equal(run(experts, text), reference)  # both experts usable, identical next run


def test_model_error_releases_and_leaves_experts_usable(experts: RecordingExperts, text) -> None:
    reference = run(experts, text, steps=3)

    class Flaky:
        """Fails on the second expert request (e.g. the swap to the low-noise expert runs out of memory)."""

        def __init__(self) -> None:
            self.requests, self.releases = 0, 0

        def expert(self, name: str) -> WanDiT:
            self.requests += 1
            if self.requests == 2:
                raise RuntimeError("out of memory (simulated)")
            return experts.expert(name)

        def release(self) -> None:
            self.releases += 1

    flaky = Flaky()
    with pytest.raises(RuntimeError, match="simulated"):
        run(flaky, text, steps=3)
    assert flaky.releases == 1
    assert torch.equal(run(experts, text, steps=3), reference)


def test_input_errors(experts: RecordingExperts, text) -> None:
    with pytest.raises(ValueError, match="disagree"):
        run(experts, text, noise=torch.zeros(1, 16, 2, 8, 6))
    with pytest.raises(ValueError, match="latent size"):
        run(experts, text, shape=None)
    with pytest.raises(ValueError, match="text contexts for a batch"):
        sample_moe(experts, [text[0], text[0]], [text[1]], shape=(3, 16, 2, 8, 8), steps=1)
    assert experts.releases == 0  # validation fails before any expert is touched


def test_batch_of_two_latents_each_with_own_prompt(experts: RecordingExperts, text) -> None:
    positive, negative = text
    other = positive.flip(0)
    with torch.no_grad():
        both = sample_moe(experts, [positive, other], [negative], seed=9, steps=3, shape=(2, 16, 2, 8, 8))
        noise = make_noise((2, 16, 2, 8, 8), 9)
        first = sample_moe(experts, [positive], [negative], noise=noise[:1], steps=3)
    assert (both[:1] - first).abs().max().item() <= 1e-5
    assert not torch.allclose(both[0], both[1])


def test_prepared_schedule_runs_as_built(experts: RecordingExperts, text) -> None:
    schedule = build_schedule(sigmas=[1.0, 0.95, 0.875, 0.6, 0.2, 0.0], solver="dpm++", cfg_high=3.5, cfg_low=3.5)
    with torch.no_grad():
        out = sample_schedule(experts, schedule, [text[0]], [text[1]], shape=SHAPE, seed=1)
    assert per_step(experts.calls) == [("high", 1000), ("high", 950), ("high", 875), ("low", 600), ("low", 200)]
    assert torch.isfinite(out).all() and not np.isnan(out.numpy()).any()


def test_kept_text_of_the_high_expert_goes_at_the_switch_and_all_of_it_at_the_end(models: dict, experts, text) -> None:
    # The high-noise expert never runs again after the switch: its kept cross-attention K/V (about 0.84 GB per
    # expert at A14B size in bf16) must not sit beside the low-noise expert's for the rest of the run.
    kept = []
    run(experts, text, callback=lambda i, t, name, x0: kept.append(
        (name, len(models["high"]._text_cache), len(models["low"]._text_cache))))
    assert kept == [("high", 2, 0), ("high", 2, 0), ("low", 0, 2), ("low", 0, 2)]  # cond and uncond: two entries
    assert (len(models["high"]._text_cache), len(models["low"]._text_cache)) == (0, 0)
