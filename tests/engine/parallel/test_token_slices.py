"""parallel.forward in one process: token shares with padding, and the sharded path at size 1 is the model's forward."""

from __future__ import annotations

import torch

from wan_core.dit.model import WanDiT
from wan_core.parallel.forward import assemble, latent_grid, sharded_forward, slice_tokens, token_share
from wan_core.parallel.plan import Layout

from parallel_testing import TINY4, inputs


def model() -> WanDiT:
    torch.manual_seed(0)
    return WanDiT(TINY4).eval().requires_grad_(False)


def test_token_shares_cover_the_padded_stream_in_rank_order():
    dit = model()
    x, t, contexts = inputs(1, 6, 10)  # 1 x 3 x 5 = 15 tokens
    tokens = dit.embed(x, t, contexts)
    assert token_share(15, 4) == 4
    shares = [slice_tokens(tokens, rank, 4) for rank in range(4)]
    joined = torch.cat([s.x for s in shares], dim=1)
    assert joined.shape == (1, 16, TINY4.dim)
    assert torch.equal(joined[:, :15], tokens.x) and torch.equal(joined[:, 15:], torch.zeros(1, 1, TINY4.dim))
    rotations = torch.cat([s.rotations for s in shares])
    assert torch.equal(rotations[:15], tokens.rotations)
    assert torch.equal(rotations[15:], torch.ones(1, rotations.shape[1], dtype=torch.complex128))  # no rotation


@torch.no_grad()
def test_sharded_forward_of_one_rank_is_the_model_forward_bit_for_bit():
    dit = model()
    x, t, contexts = inputs(2, 4, 6, batch=2)
    context = dit.pad_context(contexts, 2, x.device)
    share = sharded_forward(dit, x, t, context, rank=0, size=1, group=None)
    out = assemble(dit, [share], Layout(1, 1), latent_grid(dit, tuple(x.shape)))
    assert torch.equal(out, dit(x, t, contexts))
