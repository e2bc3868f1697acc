"""The VAE's streamed convolutions: each way of continuing a causal conv across chunks computes the whole clip's
conv (float64, so only rounding could differ: 1e-12), and keeps exactly the state the memory model counts."""

from __future__ import annotations

import weakref

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from wan_core.testing.tiny import vae as tiny
from wan_core.vae.model import CACHE_FRAMES, CausalConv3d, ResidualBlock, WanVAE, _Cache, _causal, _upsampled_conv

EXACT = 1e-12  # float64 sums of O(1) terms in another order


def _conv(cin: int, cout: int, seed: int) -> CausalConv3d:
    torch.manual_seed(seed)
    return CausalConv3d(cin, cout, 3, padding=1).double()


def _streamed(conv: CausalConv3d, clip: torch.Tensor, chunks: list[int], cache: _Cache) -> torch.Tensor:
    outs, start = [], 0
    for n in chunks:
        outs.append(_causal(conv, clip[:, :, start:start + n], cache))
        start += n
    return torch.cat(outs, dim=2)


@torch.no_grad()
def test_one_frame_chunks_and_windows_give_the_whole_clips_conv():
    conv = _conv(6, 6, seed=0)
    clip = torch.randn(1, 6, 10, 5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    cache = _Cache()
    streamed = _streamed(conv, clip, [1, 2, 1, 1, 4, 1], cache)  # 1-frame chunks (taps) mixed with windows
    assert (streamed - conv(clip)).abs().max().item() <= EXACT
    frames = cache.get(conv)
    assert len(frames) == CACHE_FRAMES and all(f.shape == (1, 6, 1, 5, 7) and f.is_contiguous() for f in frames)
    assert torch.equal(torch.cat(frames, dim=2), clip[:, :, -CACHE_FRAMES:])  # the last inputs, as they were


@torch.no_grad()
def test_a_narrowing_conv_keeps_pending_sums_of_its_few_outputs():
    conv = _conv(16, 3, seed=2)  # the RGB head's shape: 2 frames of 3 channels kept instead of 2 of 16
    clip = torch.randn(2, 16, 9, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    cache = _Cache()
    streamed = _streamed(conv, clip, [1, 4, 1, 1, 1, 1], cache)
    assert (streamed - conv(clip)).abs().max().item() <= EXACT
    assert [tuple(p.shape) for p in cache.get(conv)] == [(2, 3, 1, 4, 6)] * CACHE_FRAMES


@torch.no_grad()
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_upsampled_conv_is_the_conv_of_the_nearest_upsampled_input(layout):
    torch.manual_seed(4)
    conv = nn.Conv2d(8, 5, 3, padding=1).double()
    x = torch.randn(3, 8, 5, 7, dtype=torch.float64).contiguous(memory_format=layout)
    reference = conv(F.interpolate(x, scale_factor=2.0, mode="nearest-exact"))
    ours = _upsampled_conv(conv, x)
    assert ours.shape == (3, 5, 10, 14) and ours.is_contiguous(memory_format=layout)  # laid out as its input
    assert (ours - reference).abs().max().item() <= EXACT  # edges included: the zero padding is the same


@torch.no_grad()
def test_upsampled_conv_makes_one_phase_at_a_time(monkeypatch):
    from wan_core.vae import model as vae_model

    torch.manual_seed(9)
    conv = nn.Conv2d(8, 6, 3, padding=1)
    x = torch.randn(1, 8, 5, 7)
    made = []
    real = vae_model.paced_conv
    monkeypatch.setattr(vae_model, "paced_conv", lambda *a, **k: made.append(tuple(real(*a, **k).shape)) or real(*a, **k))
    _upsampled_conv(conv, x)
    # 4 calls of the conv's own 6 outputs on the (h+1) x (w+1) phase grid: the largest temporary is a quarter of
    # the upsampled result, not all 4 phases (24 channels) at once
    assert made == [(1, 6, 6, 8)] * 4


@pytest.mark.skipif(not __import__("wan_core.vae.model", fromlist=["_ONEDNN"])._ONEDNN, reason="needs oneDNN")
@torch.no_grad()
def test_the_cpu_decoder_hands_onednn_channels_last_activations_only(monkeypatch):
    from wan_core.vae import model as vae_model

    model = WanVAE(dim=tiny.TINY_VAE_DIM).eval()
    model.load_state_dict(tiny.random_state_dict(seed=0))
    latent = torch.randn(1, 16, 2, 4, 6, generator=torch.Generator().manual_seed(10))
    layouts = []
    real = vae_model._conv
    def watched(conv, x, *a):
        if conv is not model.conv2:  # the latent itself, as the caller gives it
            layouts.append(x.is_contiguous(memory_format=torch.channels_last_3d if x.dim() == 5 else torch.channels_last))
        return real(conv, x, *a)
    monkeypatch.setattr(vae_model, "_conv", watched)
    cache = _Cache()
    outs = [model.decode_step(latent[:, :, i:i + 1], cache) for i in range(2)]
    # oneDNN reorders a contiguous input (a copy and a slower kernel): past the latent's own 1x1 conv, every conv
    # input (the resampling convs' 2-D ones too) is already channels-last, and so is the RGB output, as the video
    # buffer it is written into
    assert all(layouts) and len(layouts) > 40
    assert all(out.is_contiguous(memory_format=torch.channels_last_3d) for out in outs)


@torch.no_grad()
def test_an_owned_residual_input_becomes_the_output():
    torch.manual_seed(5)
    block = ResidualBlock(4, 4).double().eval()
    x = torch.randn(1, 4, 1, 6, 6, dtype=torch.float64)
    kept = x.clone()
    plain = block(x, _Cache())
    assert torch.equal(x, kept)  # not owned: the caller's tensor is left alone
    owned = block(x, _Cache(), owned=True)
    assert owned is x and torch.equal(owned, plain)  # the same sum (residual + conv), added in place


@torch.no_grad()
def test_decoder_caches_hold_two_input_frames_per_conv_and_head_sums():
    model = WanVAE(dim=tiny.TINY_VAE_DIM).eval()
    model.load_state_dict(tiny.random_state_dict(seed=0))
    cache = _Cache()
    latent = torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(6))
    for i in range(3):
        model.decode_step(latent[:, :, i:i + 1], cache)
    convs = [m for m in model.decoder.modules() if isinstance(m, CausalConv3d) and m.time_pad]
    for conv in convs:
        state = cache.get(conv)
        channels = conv.out_channels if conv is model.decoder.head[2] else conv.in_channels
        assert len(state) == CACHE_FRAMES and {f.shape[1:3] for f in state} == {(channels, 1)}, conv
    head = cache.get(model.decoder.head[2])
    assert head[0].shape == (1, 3, 1, 32, 48)  # 3 RGB sums at full resolution, not the head's 8 input channels


@torch.no_grad()
def test_a_one_frame_chunk_lets_the_oldest_frame_go_before_its_activation_exists(monkeypatch):
    from wan_core.vae import model as vae_model

    torch.manual_seed(7)
    block = ResidualBlock(6, 6).double().eval()
    conv, norm = block.residual[2], block.residual[0]
    clip = torch.randn(1, 6, 4, 5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    cache = _Cache()
    for t in range(3):  # fills the first conv's cache
        block(clip[:, :, t:t + 1], cache)
    oldest = weakref.ref(cache.get(conv)[0])
    seen = []
    real = vae_model.RMSNorm.forward
    def watched(self, x, out=None):
        if self is norm:
            seen.append((oldest() is None, len(cache.get(conv))))
        return real(self, x, out)
    monkeypatch.setattr(vae_model.RMSNorm, "forward", watched)
    last = block(clip[:, :, 3:4], cache)
    # The oldest frame's tap ran and the frame was freed (no reference left) before silu(norm(x)) was made, so
    # at most one frame more than the cache is alive in this conv; the block still gives the whole clip's result.
    assert seen == [(True, CACHE_FRAMES - 1)]
    reference = ResidualBlock(6, 6).double().eval()
    reference.load_state_dict(block.state_dict())
    assert (last - reference(clip)[:, :, 3:4]).abs().max().item() <= EXACT
