"""The weight change a patch describes, in float32: `alpha / rank` scaled when the file stores an alpha (else 1).

Formulas as ComfyUI core applies them (comfy/weight_adapter/lora.py, loha.py, lokr.py; comfy/lora.py "diff"):
  lora   up @ down                        scale alpha / rank, rank = down.shape[0]
  loha   (w1_a @ w1_b) * (w2_a @ w2_b)    scale alpha / w1_b.shape[0]
  lokr   kron(w1, w2), each factor stored whole or as a product a @ b; scale alpha / (rank of the last factored
         side), 1 when neither side is factored
  diff / diff_b   the stored delta itself (no scale)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..io.checkpoint import Checkpoint
from .files import Patch

CHUNK_ELEMENTS = 1 << 20  # float32 elements of a weight changed at a time (4 MiB work buffers)


def _read(ckpt: Checkpoint, key: str, device: torch.device) -> torch.Tensor:
    return ckpt.get(key).to(device=device, dtype=torch.float32)


def _scale(patch: Patch, ckpt: Checkpoint, rank: int | None) -> float:
    """alpha / rank when the patch has an alpha and a rank, else 1.0 (ComfyUI's rule)."""
    if patch.alpha is None or rank is None:
        return 1.0
    return ckpt.get(patch.alpha).float().item() / rank


def low_rank(patch: Patch, ckpt: Checkpoint, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(down [rank, in], up [out, rank], alpha / rank) of a low-rank patch, float32 on `device`."""
    down = _read(ckpt, patch.key("down"), device).flatten(1)
    up = _read(ckpt, patch.key("up"), device).flatten(1)
    return down, up, _scale(patch, ckpt, down.shape[0])


def _product(ckpt: Checkpoint, patch: Patch, side: str, device: torch.device) -> tuple[torch.Tensor, int | None]:
    """A LoKr factor: stored whole (rank None) or as w_a @ w_b (rank = w_b rows)."""
    whole = patch.key(f"w{side}")
    if whole is not None:
        return _read(ckpt, whole, device), None
    b = _read(ckpt, patch.key(f"w{side}_b"), device)
    return _read(ckpt, patch.key(f"w{side}_a"), device) @ b, b.shape[0]


def delta(patch: Patch, ckpt: Checkpoint, shape: tuple[int, ...], device: torch.device,
          strength: float = 1.0) -> torch.Tensor:
    """The patch's change of a parameter of `shape` at `strength`, float32 on `device`: (strength * scale) * change,
    one multiplication as ComfyUI does."""
    if patch.family in ("diff", "diff_b"):
        change, scale = _read(ckpt, patch.key("diff"), device), 1.0
    elif patch.family == "lora":
        down, up, scale = low_rank(patch, ckpt, device)
        change = up @ down
    elif patch.family == "loha":
        w1b, w2b = _read(ckpt, patch.key("w1_b"), device), _read(ckpt, patch.key("w2_b"), device)
        change = (_read(ckpt, patch.key("w1_a"), device) @ w1b) * (_read(ckpt, patch.key("w2_a"), device) @ w2b)
        scale = _scale(patch, ckpt, w1b.shape[0])
    else:  # lokr
        (w1, rank1), (w2, rank2) = _product(ckpt, patch, "1", device), _product(ckpt, patch, "2", device)
        change = torch.kron(w1, w2)
        scale = _scale(patch, ckpt, rank2 if rank2 is not None else rank1)
    coef = strength * scale
    return change.reshape(shape).mul_(coef) if coef != 1.0 else change.reshape(shape)


@dataclass
class Rows:
    """A patch as its factors, adding `coef * delta` to row blocks of the flattened [out, in] weight: a low-rank
    pair or a LoHa pair never forms the whole delta (4 MiB scratch at most); other families hold it whole."""

    family: str
    factors: tuple[torch.Tensor, ...]  # lora (up, down); loha (w1_a, w1_b, w2_a, w2_b); else (delta [out, in],)
    coef: float

    def add_to(self, acc: torch.Tensor, start: int, scratch: list[torch.Tensor]) -> None:
        """acc (float32 rows start.. of the flattened weight) += coef * those rows of the delta."""
        rows = slice(start, start + acc.shape[0])
        if self.family == "lora":
            up, down = self.factors
            acc.addmm_(up[rows], down, alpha=self.coef)
        elif self.family == "loha":
            w1a, w1b, w2a, w2b = self.factors
            first, second = (buf[: acc.numel()].view(acc.shape) for buf in scratch)
            torch.mm(w1a[rows], w1b, out=first)
            torch.mm(w2a[rows], w2b, out=second)
            acc.add_(first.mul_(second), alpha=self.coef)
        else:
            acc.add_(self.factors[0][rows], alpha=self.coef)


def rows_of(patch: Patch, ckpt: Checkpoint, shape: tuple[int, ...], device: torch.device, strength: float) -> Rows:
    """The patch at `strength` as a Rows adder for a parameter of `shape` (float32 factors on `device`)."""
    if patch.family == "lora":
        down, up, scale = low_rank(patch, ckpt, device)
        return Rows("lora", (up, down), strength * scale)
    if patch.family == "loha":
        w1b = _read(ckpt, patch.key("w1_b"), device)
        factors = (_read(ckpt, patch.key("w1_a"), device), w1b, _read(ckpt, patch.key("w2_a"), device),
                   _read(ckpt, patch.key("w2_b"), device))
        return Rows("loha", factors, strength * _scale(patch, ckpt, w1b.shape[0]))
    flat = (shape[0], max(1, int(torch.Size(shape).numel() // shape[0])))
    return Rows(patch.family, (delta(patch, ckpt, shape, device).reshape(flat),), strength)
