"""The attention backends behind the registry give the default's result; each is selectable on a loaded DiT."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from wan_core.dit.attention import available_attention, get_attention
from wan_core.dit.attention_backends import sdpa_kernel_in_use
from wan_core.dit.model import DiTConfig, WanDiT

CPU_BACKENDS = ("sdpa", "sdpa_flash", "sdpa_math")  # efficient and cuDNN exist on CUDA only


def qkv(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, 70, 2, 64, generator=g) for _ in range(3))


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_each_cpu_backend_equals_the_math_kernel(name):
    q, k, v = qkv()
    reference = get_attention("sdpa_math")(q, k, v)
    assert (get_attention(name)(q, k, v) - reference).abs().max().item() < 1e-5  # float32 softmax reordering


def test_sage_is_offered_exactly_when_installed():
    assert ("sage" in available_attention()) == (importlib.util.find_spec("sageattention") is not None)


def test_the_kernel_sdpa_would_take_is_reported():
    assert sdpa_kernel_in_use(*qkv()) in ("sdpa_flash", "sdpa_efficient", "sdpa_math")


def test_a_loaded_dit_switches_backend_with_the_same_output():
    torch.manual_seed(0)
    model = WanDiT(DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2)).eval()
    x, t, ctx = torch.randn(1, 16, 2, 8, 8), torch.tensor([500.0]), [torch.randn(9, 4096)]
    with torch.no_grad():
        default = model(x, t, ctx)
        model.set_attention("sdpa_math")
        math_out = model(x, t, ctx)
    assert model.attention == "sdpa_math" and (default - math_out).abs().max().item() < 1e-5


def test_compiled_blocks_match_eager_and_do_not_recompile_per_step():
    import torch._dynamo

    torch.manual_seed(0)
    model = WanDiT(DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2)).eval()
    x, ctx = torch.randn(1, 16, 2, 8, 8), [torch.randn(9, 4096)]
    with torch.no_grad():
        eager = [model(x, torch.tensor([t]), ctx) for t in (999.0, 500.0, 300.0)]
        model.compile_blocks(backend="eager")  # dynamo's tracing and guards without a C++ toolchain's compile time
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        compiled = [model(x, torch.tensor([t]), ctx) for t in (999.0, 500.0, 300.0)]
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        model.compile_blocks(False)
        back = model(x, torch.tensor([999.0]), ctx)
    assert all((a - b).abs().max().item() < 1e-5 for a, b in zip(eager, compiled))
    assert graphs == 1  # traced once: later timesteps and the second block reuse it
    assert model.compiled is False and torch.equal(back, eager[0])
