"""Tiled Wan2.1 VAE decode/encode: close to the untiled result and without seams.

Tiled decode runs every tile through all latent frames with its own causal cache; the middle attention
always sees the whole (latent-resolution) frame, so the only tiling error is the zero padding at tile edges,
kept out of the result by blend margins. How far that padding reaches depends on the weights: on these tiny
random weights it falls below 1e-2 about 6 latent px from an edge, so the test uses overlap 14 (margin 6).
"""

from __future__ import annotations

import pytest
import torch

from wan_core.testing.tiny import vae as tiny
from wan_core.vae.model import WanVAE

TILE, OVERLAP, SIZE = 28, 14, 56  # latent px: 3x3 tiles (starts 0, 14, 28)


@pytest.fixture(scope="module")
def model() -> WanVAE:
    m = WanVAE(dim=tiny.TINY_VAE_DIM)
    m.load_state_dict(tiny.random_state_dict(seed=0))
    return m.eval()


@pytest.fixture(scope="module")
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread is faster than contending
    yield
    torch.set_num_threads(threads)


def _border_gradient_ratio(video: torch.Tensor, borders: list[int], axis: int) -> float:
    """Mean |gradient| across the given pixel borders / the same at other borders of the same phase mod 8."""
    g = video.diff(dim=axis).abs()
    g = g.movedim(axis, -1).reshape(-1, g.shape[axis]).mean(0)  # mean |d| per border position (between i, i+1)
    at = torch.tensor(borders) - 1
    phase = [i for i in range(len(g)) if i % 8 == 7 and all(abs(i - b) > 8 for b in at.tolist())]
    return (g[at].mean() / g[phase].mean()).item()


def test_tiled_decode_matches_untiled_without_seams(model, single_thread):
    latent = torch.randn(1, 16, 2, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    untiled = model.decode(latent, tiling="off")
    steps = []
    tiled = model.decode(latent, tiling="on", tile_size=TILE, tile_overlap=OVERLAP,
                         on_frame=lambda d, t: steps.append(t))
    assert steps[-1] == 2 * 9  # 3x3 tiles, each through both latent frames with its own cache
    diff = (tiled - untiled).abs()
    print(f"tiled vs untiled: max {diff.max():.4f}, mean {diff.mean():.6f}")
    assert diff.max().item() <= 2e-2
    # every tile edge and every blend ramp position, in video px
    starts = [0, 14, 28]
    borders = sorted({8 * b for s in starts for b in (s, s + TILE, s + 6, s + 8, s + TILE - 6, s + TILE - 8)}
                     - {0, 8 * SIZE})
    for axis in (-1, -2):
        ratio = _border_gradient_ratio(tiled, borders, axis)
        print(f"axis {axis}: border/elsewhere gradient {ratio:.3f}")
        assert 0.9 <= ratio <= 1.1


def test_tiled_encode_is_close_to_untiled(model, single_thread):
    video = torch.rand(1, 3, 5, 192, 192, generator=torch.Generator().manual_seed(2)) * 2 - 1
    untiled = model.encode(video, tiling="off")
    tiled = model.encode(video, tiling="on", tile_size=12, tile_overlap=6)
    assert tiled.shape == untiled.shape == (1, 16, 2, 24, 24)
    diff = (tiled - untiled).abs()
    print(f"encode tiled vs untiled: max {diff.max():.4f}, mean {diff.mean():.5f}, latent std {untiled.std():.3f}")
    # the encoder's middle attention sees only its tile, so encode tiling is an approximation
    assert diff.mean().item() < 0.05 * untiled.std().item()
