"""Low-rank factorisation by truncated SVD: W (out, in_flat) ~= first (out, r) @ second (r, in_flat).

The factors are balanced (sqrt of the singular values on each side) so both have a
similar dynamic range, which helps if they are quantized afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pet_core.errors import PetError


@dataclass
class LowRankConfig:
    """Exactly one of a fixed ``rank`` or an ``energy`` fraction of sum(s**2) to retain.

    >>> LowRankConfig(energy=0.9).rank is None
    True
    """

    rank: int | None = None
    energy: float | None = None  # in (0, 1]

    def __post_init__(self) -> None:
        if (self.rank is None) == (self.energy is None):
            raise PetError("low-rank needs exactly one of rank or energy")
        if self.rank is not None and self.rank < 1:
            raise PetError(f"low-rank rank must be >= 1, got {self.rank}")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise PetError(f"low-rank energy must be in (0, 1], got {self.energy}")


@dataclass
class Factored:
    """Result of ``low_rank``."""

    first: Tensor  # (out, r)
    second: Tensor  # (r, in_flat)
    rank: int
    singular_values: Tensor  # (min(out, in_flat),) full spectrum, descending
    values: Tensor  # reconstruction first @ second, w's shape and dtype


def as_matrix(w: Tensor) -> Tensor:
    """Flatten a weight to ``(out, in_flat)``; conv ``(out, in, kh, kw)`` -> ``(out, in*kh*kw)``.

    >>> as_matrix(torch.zeros(8, 3, 3, 3)).shape
    torch.Size([8, 27])
    """
    if w.dim() < 2:
        raise PetError(f"low-rank needs a weight with at least 2 dimensions, got shape {tuple(w.shape)}")
    return w.reshape(w.shape[0], -1)


def rank_for_energy(s: Tensor, energy: float) -> int:
    """Smallest r >= 1 with ``cumsum(s**2)[r-1] / sum(s**2) >= energy``.

    Singular values below the numerical-rank tolerance count as zero, so energy 1.0
    gives the numerical rank (as ``torch.linalg.matrix_rank``) rather than full size.

    >>> rank_for_energy(torch.tensor([3.0, 1.0, 0.0]), 0.9)
    1
    """
    if s.numel() == 0:
        return 1
    s64 = s.detach().to(torch.float64)
    # same default tolerance as torch.linalg.matrix_rank, for the dtype the SVD ran in
    eps = torch.finfo(s.dtype).eps if s.dtype.is_floating_point else torch.finfo(torch.float32).eps
    tol = float(s64.max()) * s.numel() * eps
    s64 = torch.where(s64 > tol, s64, torch.zeros_like(s64))
    cum = torch.cumsum(s64**2, dim=0)
    total = cum[-1]  # not s.sum(): then the last kept value reaches exactly 1.0
    if total <= 0:
        return 1
    frac = cum / total
    r = int(torch.searchsorted(frac, torch.tensor([float(energy)], dtype=torch.float64))[0]) + 1
    return max(1, min(r, s.numel()))


def low_rank(w: Tensor, cfg: LowRankConfig) -> Factored:
    """Truncated SVD of ``w`` as a matrix, with balanced factors.

    >>> f = low_rank(torch.eye(4), LowRankConfig(rank=2))
    >>> f.first.shape, f.second.shape, f.rank
    (torch.Size([4, 2]), torch.Size([2, 4]), 2)
    """
    cdt = torch.float64 if w.dtype == torch.float64 else torch.float32
    m = as_matrix(w.detach()).to(cdt)  # (out, in_flat)
    u, s, vh = torch.linalg.svd(m, full_matrices=False)  # (out, k), (k,), (k, in_flat)
    full = s.numel()
    r = rank_for_energy(s, cfg.energy) if cfg.energy is not None else int(cfg.rank)
    r = max(1, min(r, full))
    root = torch.sqrt(s[:r])  # (r,)
    first = u[:, :r] * root[None, :]  # (out, r)
    second = root[:, None] * vh[:r]  # (r, in_flat)
    values = (first @ second).reshape(w.shape).to(w.dtype)
    return Factored(first=first, second=second, rank=r, singular_values=s, values=values)
