"""Low-rank factorisation by truncated SVD: W (out, in_flat) ~= first (out, r) @ second (r, in_flat).

The factors are balanced (sqrt of the singular values on each side) so both have a
similar dynamic range, which helps if they are quantized afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from pet_core.errors import PetError
from pet_core.fields import spec_field
from pet_core.methods.base import FactorMethod, Factored, StepConfig


@dataclass(frozen=True)
class LowRankConfig(StepConfig):
    """Exactly one of a fixed ``rank`` or an ``energy`` fraction of sum(s**2) to retain.

    >>> LowRankConfig(energy=0.9).rank is None
    True
    """

    STEP: ClassVar[str] = "low_rank"
    ONE_OF: ClassVar = (("energy", "rank"),)
    energy: float | None = spec_field(None, "fraction of the squared singular values kept", lo=0.0, hi=1.0,
                                      lo_open=True, ui=dict(step=0.01, default=0.9, min=0.01))
    rank: int | None = spec_field(None, "number of singular values kept", lo=1, hi=math.inf, kind=int,
                                  ui=dict(default=16, max=100_000))


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


class LowRank(FactorMethod):
    step = "low_rank"
    name = "low_rank"
    config = LowRankConfig
    summary = "Factor a weight into two thin matrices by truncated SVD."
    choice_label = "SVD"
    table_field = "rank"
    example = {"rank": 2}

    def factor(self, weight: Tensor, cfg: LowRankConfig) -> Factored:
        return low_rank(weight, cfg)

    def label(self, cfg: LowRankConfig) -> str:
        return f"rank {cfg.rank}" if cfg.rank is not None else f"energy {cfg.energy:.0%}"
