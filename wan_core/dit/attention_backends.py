"""Optional attention kernels for the registry in `attention`: SDPA pinned to one kernel, and SageAttention.

  sdpa_flash / sdpa_efficient / sdpa_cudnn  PyTorch SDPA restricted to that kernel (CUDA); a kernel that cannot
                                            run the inputs raises instead of silently falling back, so a
                                            benchmark row names what it measured
  sdpa_math                                 PyTorch's reference math kernel (any device)
  sage                                      SageAttention's quantised kernel, when the `sageattention` package is
                                            installed (CUDA only; users report version-dependent noise: compare)

`sdpa` (the default, in `attention`) lets PyTorch pick; `sdpa_kernel_in_use` says which one it would take.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from .attention import register_attention

_PINNED = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
           "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa_math": SDPBackend.MATH}


def _pinned(kernel: SDPBackend):
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel([kernel]):
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    return attend


def sdpa_kernel_in_use(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str:
    """The first pinned SDPA kernel (flash, efficient, cuDNN, math) that runs these [B, L, H, D] inputs."""
    for name, kernel in _PINNED.items():
        try:
            _pinned(kernel)(q[:, :1], k[:, :1], v[:, :1])
            return name
        except RuntimeError:
            continue
    return "none"


def sage_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SageAttention on [B, L, H, D] inputs (its 'NHD' layout), in the inputs' dtype."""
    from sageattention import sageattn

    return sageattn(q, k, v, tensor_layout="NHD", is_causal=False)


for _name, _kernel in _PINNED.items():
    if _name in ("sdpa_flash", "sdpa_math") or torch.cuda.is_available():  # efficient, cuDNN: CUDA kernels only
        register_attention(_name, _pinned(_kernel))
if importlib.util.find_spec("sageattention") is not None:
    register_attention("sage", sage_attention)
