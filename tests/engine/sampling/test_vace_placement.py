"""A VACE control run under every placement: the same latent; under 'stream' the VACE blocks stream as their own list."""

from __future__ import annotations

import pytest
import torch

from wan_core.dit.loader import load_dit
from wan_core.dit.model import WanDiT
from wan_core.dit.sizes import stream_bytes_for
from wan_core.dit.vace import VaceInput
from wan_core.memory.budget import GiB, MemoryBudget
from wan_core.memory.cache import ModelCache
from wan_core.memory.offload import BlockStreamer
from wan_core.sampling.control import Control, VaceStream
from wan_core.sampling.experts import ResidentExperts
from wan_core.sampling.placement import CachedExperts, dit_expert_spec
from wan_core.sampling.sampler import sample_moe
from wan_core.testing.tiny.dit import TINY_VACE_CONFIG, random_state_dict, write_single_file

from cache_testing import one_thread  # noqa: F401  (autouse fixture)

SHAPE = (1, 16, 2, 4, 4)
RUN = dict(shape=SHAPE, seed=3, steps=4, device="cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vace_placement")
    high = write_single_file(folder / "vace_high.safetensors", random_state_dict(TINY_VACE_CONFIG, seed=41))
    low = write_single_file(folder / "vace_low.safetensors", random_state_dict(TINY_VACE_CONFIG, seed=42))
    g = torch.Generator().manual_seed(0)
    text = [torch.randn(7, 4096, generator=g)], [torch.randn(5, 4096, generator=g)]
    # the second expert's hints stop half way: the stream's VACE blocks are skipped in some forwards
    control = Control((VaceStream(torch.randn(1, 96, *SHAPE[2:], generator=g), 0.8, {"low": (0.0, 0.5)}),))
    reference = sample_moe(ResidentExperts(load_dit(high), load_dit(low)), *text, control=control, **RUN)
    plain = sample_moe(ResidentExperts(load_dit(high), load_dit(low)), *text, **RUN)
    return high, low, text, control, reference, plain


@pytest.mark.parametrize("placement", ["resident", "swap", "stream"])
def test_a_control_run_gives_the_same_latent_under_every_placement(setup, placement, monkeypatch):
    high, low, text, control, reference, plain = setup
    streamed: list[int] = []

    class Recording(BlockStreamer):  # the real streamer, noting how many blocks it streams
        def attach(self) -> None:
            streamed.append(len(self.blocks))
            super().attach()

    monkeypatch.setattr("wan_core.memory.cache.BlockStreamer", Recording)
    cache = ModelCache(MemoryBudget(vram_bytes=0, ram_bytes=4 * GiB))
    experts = CachedExperts(dit_expert_spec(high, device="cpu"), dit_expert_spec(low, device="cpu"), device="cpu",
                            placement=placement, cache=cache)
    out = sample_moe(experts, *text, control=control, **RUN)
    assert torch.equal(out, reference)
    assert (out - plain).abs().max().item() > 1e-3  # the control did steer the run
    blocks = TINY_VACE_CONFIG.num_layers + TINY_VACE_CONFIG.vace_layers
    assert streamed == ([blocks, blocks] if placement == "stream" else [])  # both experts, VACE blocks streamed too


def vace_model():
    torch.manual_seed(0)
    model = WanDiT(TINY_VACE_CONFIG).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, *SHAPE[1:], generator=g)
    control = VaceInput((torch.randn(1, 96, *SHAPE[2:], generator=g),), (torch.tensor([0.7]),))
    return model, (x, torch.tensor([700.0]), [torch.randn(6, 4096, generator=g)]), control


def test_vace_blocks_stream_one_at_a_time_and_only_in_forwards_with_control():
    model, args, control = vace_model()
    with torch.no_grad():
        expected, plain = model(*args, control=control), model(*args)
    host = {name: p.data_ptr() for name, p in model.named_parameters()}
    streamer = BlockStreamer(model, model.blocks, "cpu", more=[model.vace_blocks])
    streamer.attach()
    assert model.vace_blocks[0].after_proj.weight.data_ptr() == host["vace_blocks.0.after_proj.weight"]  # on host
    with torch.no_grad():
        first_plain = model(*args)
        copies_plain = streamer.copies
        controlled = [model(*args, control=control) for _ in range(2)]
    streamer.detach()
    assert torch.equal(first_plain, plain) and all(torch.equal(c, expected) for c in controlled)
    layers, vace = TINY_VACE_CONFIG.num_layers, TINY_VACE_CONFIG.vace_layers
    assert copies_plain == layers + 1  # the main blocks and the next forward's block 0: no VACE block copied
    assert streamer.copies == copies_plain + 2 * layers + 2 * vace + 1  # once per forward, + vace 0 prefetched again
    assert streamer.max_blocks_on_device == 3  # the running block, the next main block and the next VACE block
    assert {name: p.data_ptr() for name, p in model.named_parameters()} == host


def test_the_streaming_footprint_counts_the_vace_list():
    model, _, _ = vace_model()
    streamer = BlockStreamer(model, model.blocks, "cpu", more=[model.vace_blocks])
    assert streamer.device_bytes() == stream_bytes_for(TINY_VACE_CONFIG, 4)  # float32: 4 bytes per parameter
    main_only = BlockStreamer(model, model.blocks, "cpu")  # VACE blocks left among the always-on-device tensors
    size = [sum(p.numel() * 4 for p in b.parameters()) for b in (model.blocks[0], *model.vace_blocks)]
    # all VACE blocks on the device and two main blocks, against three of the largest block
    assert main_only.device_bytes() - streamer.device_bytes() == sum(size[1:]) + 2 * size[0] - 3 * max(size)
    assert streamer.device_bytes() < main_only.device_bytes()
