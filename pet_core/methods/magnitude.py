"""Unstructured magnitude pruning: zero the weights with the smallest |w|.

Scoring (``magnitude_scores``), choosing (``threshold_for_sparsity``, ``SortedScores``,
``keep_mask``) and applying (``magnitude_prune``) are separate so that a global
(whole-model) threshold can reuse the same pieces as a per-layer one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pet_core.errors import PetError


@dataclass
class MagnitudeConfig:
    """Either a target ``sparsity`` (fraction of weights zeroed) or an absolute ``threshold``.

    >>> MagnitudeConfig(sparsity=0.5)
    MagnitudeConfig(sparsity=0.5, threshold=None)
    """

    sparsity: float | None = None  # fraction of weights to zero, in [0, 1]
    threshold: float | None = None  # or: zero every weight with |w| <= threshold

    def __post_init__(self) -> None:
        if (self.sparsity is None) == (self.threshold is None):
            raise PetError("magnitude pruning needs exactly one of sparsity or threshold")
        if self.sparsity is not None and not 0.0 <= self.sparsity <= 1.0:
            raise PetError(f"magnitude sparsity must be in [0, 1], got {self.sparsity}")
        if self.threshold is not None and not self.threshold >= 0.0:  # also rejects NaN
            raise PetError(f"magnitude threshold must be >= 0, got {self.threshold}")


def magnitude_scores(w: Tensor) -> Tensor:
    """Importance of each weight: its absolute value (same shape as ``w``).

    >>> magnitude_scores(torch.tensor([-2.0, 1.0]))
    tensor([2., 1.])
    """
    return w.detach().abs()


def count_to_prune(n: int, sparsity: float) -> int:
    """Number of the ``n`` units to prune, rounded exactly like ``torch.nn.utils.prune``.

    Python's ``round`` (banker's rounding) is used on purpose so masks match torch's.

    >>> count_to_prune(10, 0.25)
    2
    """
    return int(round(sparsity * n))


def threshold_for_sparsity(scores: Tensor, sparsity: float) -> float:
    """Score threshold such that ``keep_mask(scores, t)`` prunes ``count_to_prune(numel)`` scores.

    Returns ``-inf`` when nothing is to be pruned (keep all).

    >>> threshold_for_sparsity(torch.tensor([3.0, 1.0, 2.0, 4.0]), 0.5)
    2.0
    """
    flat = scores.reshape(-1)
    k = count_to_prune(flat.numel(), sparsity)
    if k <= 0:
        return float("-inf")
    # kthvalue is O(n) selection; no need to sort for a single question
    return float(torch.kthvalue(flat, min(k, flat.numel())).values)


class SortedScores:
    """Scores of several tensors, sorted once, so each global threshold is an O(1) lookup.

    >>> s = SortedScores([torch.tensor([1.0, 4.0]), torch.tensor([[3.0], [2.0]])])
    >>> s.threshold(0.5)
    2.0
    """

    def __init__(self, scores: list[Tensor]):
        flats = [s.detach().reshape(-1) for s in scores]
        self.sorted = torch.sort(torch.cat(flats)).values if flats else torch.empty(0)  # (N,)
        self.numel = int(self.sorted.numel())

    def threshold(self, sparsity: float) -> float:
        """Global threshold that prunes ``count_to_prune(N, sparsity)`` of all scores."""
        k = count_to_prune(self.numel, sparsity)
        if k <= 0:
            return float("-inf")
        return float(self.sorted[min(k, self.numel) - 1])


def keep_mask(scores: Tensor, threshold: float) -> Tensor:
    """Boolean mask of the weights to keep: ``scores > threshold``.

    >>> keep_mask(torch.tensor([1.0, 2.0, 3.0]), 2.0)
    tensor([False, False,  True])
    """
    return scores > threshold


def magnitude_prune(w: Tensor, cfg: MagnitudeConfig) -> tuple[Tensor, Tensor]:
    """Prune ``w`` by magnitude; returns ``(w * mask, mask)`` with a bool mask of w's shape.

    >>> magnitude_prune(torch.tensor([0.1, -3.0, 0.5, 2.0]), MagnitudeConfig(sparsity=0.5))
    (tensor([ 0., -3.,  0.,  2.]), tensor([False,  True, False,  True]))
    """
    scores = magnitude_scores(w)
    if cfg.threshold is not None:
        t = float(cfg.threshold)
    else:
        t = threshold_for_sparsity(scores, float(cfg.sparsity))
    mask = keep_mask(scores, t)
    return w.detach() * mask, mask
