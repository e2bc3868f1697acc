"""3-D rotary position embedding of the Wan DiT (official wan/modules/model.py `rope_params`, `rope_apply`).

Each head's channels form head_dim/2 adjacent pairs (x[2i], x[2i+1]) rotated as complex numbers; the
pairs are split into a frame band, a row band and a column band (44/42/42 real dims for head_dim 128),
each band with its own frequencies theta^(-2i/band_dim). All in float64, as the official code.
"""

from __future__ import annotations

import torch

MAX_POSITIONS = 1024  # official table length per axis
THETA = 10000.0


def rope_band_dims(head_dim: int) -> tuple[int, int, int]:
    """Real dims of the (frame, row, column) bands: (44, 42, 42) for head_dim 128."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def rope_params(max_positions: int, band_dim: int, theta: float = THETA) -> torch.Tensor:
    """Unit complex rotations position·theta^(-2i/band_dim): complex128 [max_positions, band_dim/2]."""
    inv_freq = 1.0 / theta ** (torch.arange(0, band_dim, 2, dtype=torch.float64, device="cpu") / band_dim)
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float64, device="cpu"), inv_freq)
    return torch.polar(torch.ones_like(angles), angles)


class RotaryEmbedding:
    """Per-token rotations for a latent grid, cached per (grid size, device).

    A plain object, not an nn.Module, so that `model.to(dtype)` can never degrade the float64 tables.
    """

    def __init__(self, head_dim: int, max_positions: int = MAX_POSITIONS, theta: float = THETA) -> None:
        self.head_dim, self.max_positions, self.theta = head_dim, max_positions, theta
        self.bands = rope_band_dims(head_dim)
        self._table: torch.Tensor | None = None
        self._grids: dict[tuple, torch.Tensor] = {}

    def table(self) -> torch.Tensor:
        """complex128 [max_positions, head_dim/2]: the three bands side by side."""
        if self._table is None:
            self._table = torch.cat([rope_params(self.max_positions, d, self.theta) for d in self.bands], dim=1)
        return self._table

    def grid(self, frames: int, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Rotations of the tokens of a (frames, height, width) grid in f, h, w order: complex128 [F·H·W, head_dim/2]."""
        key = (frames, height, width, str(device))
        cached = self._grids.get(key)
        if cached is not None:
            return cached
        if max(frames, height, width) > self.max_positions:
            raise ValueError(f"latent grid {frames}x{height}x{width} exceeds the {self.max_positions} RoPE positions per axis")
        band_t, band_h, band_w = self.table().split([d // 2 for d in self.bands], dim=1)
        rotations = torch.cat([
            band_t[:frames].view(frames, 1, 1, -1).expand(frames, height, width, -1),
            band_h[:height].view(1, height, 1, -1).expand(frames, height, width, -1),
            band_w[:width].view(1, 1, width, -1).expand(frames, height, width, -1),
        ], dim=-1).reshape(frames * height * width, -1).to(device)
        if len(self._grids) >= 8:  # a sampler uses one or two grid sizes; keep memory bounded
            self._grids.pop(next(iter(self._grids)))
        self._grids[key] = rotations
        return rotations


def apply_rope(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of x [B, L, heads, head_dim] by rotations [L, head_dim/2], in float64 -> float32
    (the official arithmetic; it makes two float64 copies of x)."""
    b, l, n, d = x.shape
    pairs = torch.view_as_complex(x.to(torch.float64).reshape(b, l, n, d // 2, 2))
    return torch.view_as_real(pairs * rotations[None, :, None, :]).reshape(b, l, n, d).float()


def apply_rope_(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """`apply_rope` in place on a float32 x [B, L, heads, head_dim], in float32 with the float64 table rounded once.

    (e + i o)(c + i s) = (e c - o s) + i (e s + o c): one half-size temporary instead of two float64 copies of x
    (1.3 GB per q or k at 480p, 3.1 GB at 720p). Differs from the float64 path by float32 rounding (about 1e-7
    relative); tests/engine/dit bound the effect on the output.
    """
    b, l, n, d = x.shape
    cos = rotations.real.to(x.dtype)[None, :, None, :]
    sin = rotations.imag.to(x.dtype)[None, :, None, :]
    pairs = x.view(b, l, n, d // 2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    even_in = even.clone()
    even.mul_(cos).addcmul_(odd, sin, value=-1.0)
    odd.mul_(cos).addcmul_(even_in, sin)
    return x
