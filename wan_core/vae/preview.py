"""Cheap live previews: project a Wan2.1 latent (the sampler's x0 estimate) to RGB with a fixed 16->3 linear map."""

from __future__ import annotations

import torch

# Linear factors from the 16 normalised Wan2.1 latent channels to RGB in [-1, 1] (rows: channels; columns: R, G, B).
# Same values ComfyUI's comfy/latent_formats.py Wan21 uses for its Latent2RGB previews, so previews look alike.
WAN21_LATENT_RGB_FACTORS: tuple[tuple[float, float, float], ...] = (
    (-0.1299, -0.1692, 0.2932),
    (0.0671, 0.0406, 0.0442),
    (0.3568, 0.2548, 0.1747),
    (0.0372, 0.2344, 0.1420),
    (0.0313, 0.0189, -0.0328),
    (0.0296, -0.0956, -0.0665),
    (-0.3477, -0.4059, -0.2925),
    (0.0166, 0.1902, 0.1975),
    (-0.0412, 0.0267, -0.1364),
    (-0.1293, 0.0740, 0.1636),
    (0.0680, 0.3019, 0.1128),
    (0.0032, 0.0581, 0.0639),
    (-0.1251, 0.0927, 0.1699),
    (0.0060, -0.0633, 0.0005),
    (0.3477, 0.2275, 0.2950),
    (0.1984, 0.0913, 0.1861),
)
WAN21_LATENT_RGB_BIAS: tuple[float, float, float] = (-0.1835, -0.0868, -0.3360)


def latent_to_rgb(x0: torch.Tensor, frame: int = 0) -> torch.Tensor:
    """One latent frame of a normalised latent [C,T,H,W] or [B,C,T,H,W] (first sample) as uint8 RGB [H, W, 3] on CPU."""
    if x0.ndim == 5:
        x0 = x0[0]
    if x0.ndim != 4 or x0.shape[0] != len(WAN21_LATENT_RGB_FACTORS):
        raise ValueError(f"expected a 16-channel Wan2.1 latent [16, T, H, W] or [B, 16, T, H, W], got {tuple(x0.shape)}")
    plane = x0[:, frame].detach().to(device="cpu", dtype=torch.float32)  # [16, H, W]
    factors = torch.tensor(WAN21_LATENT_RGB_FACTORS, dtype=torch.float32)  # [16, 3]
    rgb = torch.einsum("chw,cr->hwr", plane, factors) + torch.tensor(WAN21_LATENT_RGB_BIAS)
    return ((rgb + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8)
