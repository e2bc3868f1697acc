"""Kept regions of a latent during sampling (ComfyUI's LATENT `noise_mask`: 1 = denoise, 0 = keep the input).

As ComfyUI's inpainting for flow models (comfy/samplers.py KSamplerX0Inpaint with CONST noise scaling): before every
model call the kept part of x is the input latent noised to the step's sigma with the run's own noise,
sigma * noise + (1 - sigma) * latent, and the model's clean estimate there is replaced by the input latent, which for
a velocity means v = (x - latent) / sigma. After the last step the kept part is the input latent exactly. Continuing a
clip (its last frames encoded as the first latent frames of the next) is this with a mask of 0 on those frames.
"""

from __future__ import annotations

import torch


class KeptRegion:
    """Holds the input latent where `mask` is 0 (mask broadcastable to the latent, values in 0..1)."""

    def __init__(self, mask: torch.Tensor, latent: torch.Tensor, noise: torch.Tensor, device: torch.device) -> None:
        if mask.dim() != 5:
            raise ValueError(f"a noise mask must be [batch, channels, frames, height, width]; got {tuple(mask.shape)}")
        self.mask = mask.to(device, torch.float32)
        self.keep = 1.0 - self.mask
        self.latent = latent.detach().to(device, torch.float32)
        self.noise = noise.to(device, torch.float32)

    def noised(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """x with its kept part replaced by the input latent at noise level `sigma`."""
        return x * self.mask + (sigma * self.noise + (1.0 - sigma) * self.latent) * self.keep

    def velocity(self, velocity: torch.Tensor, x: torch.Tensor, sigma: float, lo: int = 0,
                 hi: int | None = None) -> torch.Tensor:
        """The velocity whose clean estimate x - sigma * v is the input latent on the kept part (velocity and x of
        latent frames [lo, hi), all of them by default)."""
        mask, keep, latent = (_frames(t, lo, hi) for t in (self.mask, self.keep, self.latent))
        return velocity * mask + (x - latent) * (keep / sigma)

    def final(self, x: torch.Tensor) -> torch.Tensor:
        """The finished latent: the input latent exactly where kept."""
        return x * self.mask + self.latent * self.keep


def _frames(tensor: torch.Tensor, lo: int, hi: int | None) -> torch.Tensor:
    """Latent frames [lo, hi) of `tensor` (a mask broadcast over the frames has one: it serves them all)."""
    if tensor.shape[2] == 1 or (lo == 0 and hi is None):
        return tensor
    return tensor.narrow(2, lo, (tensor.shape[2] if hi is None else hi) - lo)
