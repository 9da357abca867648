"""A metric estimated on a fixed stratified subset of the evaluation set, with its 95% interval.

The subset is drawn once per evaluation set (labels as strata, proportional allocation, a fixed
seed), so every estimate of every session looks at the same items. The estimate is a *difference*
estimator: the baseline's exact full-set value plus the mean change of each subset item between the
baseline and the compressed model. A compressed model that changes few predictions gets a tight
interval, which is the common case near the baseline, and the interval is honest when many change.

Accuracy: each item's change is -1, 0 or +1. The variance of that change is estimated with half a
count added to each of the up/down cells (a Jeffreys-style prior), so "no change seen" still gives
an interval of a few tenths of a point rather than zero width. Perplexity: the change of each
block's mean negative log-likelihood, normal interval, mapped through exp. Both use the finite
population correction: the target is the metric on *this* test set, whose size is known.

>>> idx = stratified_subset(np.array([0] * 90 + [1] * 10), 20)
>>> len(idx), int((idx >= 90).sum())
(20, 2)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

Z95 = 1.959963984540054     # two-sided 95% normal quantile
SEED = 20_260_412           # the subset is the same in every session and run


@dataclass(frozen=True)
class Estimate:
    """A metric's value: exact (computed on every item) or estimated on ``n`` of ``total`` items."""

    value: float
    low: float
    high: float
    n: int
    total: int
    exact: bool
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def half_width(self) -> float:
        return (self.high - self.low) / 2


def stratified_subset(labels: np.ndarray | None, size: int, total: int | None = None) -> np.ndarray:
    """Sorted indices of ``size`` items, each label's share as in ``labels`` (largest remainder).

    ``labels`` None (a language model's blocks): a uniform sample of ``total`` items.
    """
    total = len(labels) if labels is not None else int(total or 0)
    size = max(0, min(size, total))
    rng = np.random.default_rng(SEED)
    if labels is None:
        return np.sort(rng.permutation(total)[:size])
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * size / total
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take), kind="stable")[: size - int(take.sum())]:
        take[i] += 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=int)


def _fpc(n: int, total: int) -> float:
    return 0.0 if total <= 1 else max(0.0, (total - n) / (total - 1))


def accuracy_estimate(base_exact: float, base_correct: np.ndarray, now_correct: np.ndarray,
                      total: int) -> tuple[float, float, float]:
    """(value, low, high) of the full-set accuracy from the subset's correctness before and after.

    >>> v, lo, hi = accuracy_estimate(0.9, np.ones(100), np.ones(100), 1000)
    >>> v, lo < 0.9 < hi
    (0.9, True)
    """
    n = len(now_correct)
    d = now_correct.astype(np.int8) - base_correct.astype(np.int8)     # (n,) in {-1, 0, 1}
    up, down = int((d > 0).sum()), int((d < 0).sum())
    value = base_exact + (up - down) / n
    p_up, p_down = (up + 0.5) / (n + 1), (down + 0.5) / (n + 1)
    var = p_up + p_down - (p_up - p_down) ** 2
    half = Z95 * math.sqrt(var / n * _fpc(n, total))
    return (min(1.0, max(0.0, value)), max(0.0, value - half), min(1.0, value + half))


def nll_estimate(base_mean_nll: float, base_nll: np.ndarray, now_nll: np.ndarray,
                 total: int) -> tuple[float, float, float]:
    """(value, low, high) of the full-set perplexity from per-block mean NLLs before and after."""
    n = len(now_nll)
    d = now_nll - base_nll
    mean = base_mean_nll + float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    half = Z95 * sd * math.sqrt(_fpc(n, total) / n)
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


__all__ = ["Estimate", "accuracy_estimate", "nll_estimate", "stratified_subset"]
