"""Unstructured magnitude pruning: zero the weights with the smallest |w|.

Scoring (``magnitude_scores``), choosing (``threshold_for_sparsity``, ``SortedScores``,
``keep_mask``) and applying (``magnitude_prune``) are separate so that a global
(whole-model) threshold can reuse the same pieces as a per-layer one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from pet_core.fields import spec_field
from pet_core.methods.base import Pruned, PruneMethod, StepConfig, merge_fields

SPARSITY_HELP = "fraction of weights (or channels) set to zero"
THRESHOLD_HELP = "zero every weight with |w| <= threshold (or channel with norm <= threshold)"
SCOPE_HELP = ("global: one magnitude threshold across all global layers; layer: each layer pruned to its own "
              "sparsity (channel methods always work per layer)")


def sparsity_field() -> Any:
    return spec_field(None, SPARSITY_HELP, lo=0.0, hi=1.0, ui=dict(step=0.01, default=0.5))


def threshold_field() -> Any:
    return spec_field(None, THRESHOLD_HELP, lo=0.0, hi=math.inf, ui=dict(step=0.005, default=0.05, format="%.4f"))


def scope_field() -> Any:
    return spec_field("global", SCOPE_HELP, choices=("global", "layer"), kind=str)


def merge_by_amount(config: type, base: dict | None, override: dict) -> dict:
    """A layer override that sets its own sparsity or threshold prunes that layer on its own (scope
    ``layer``) unless it says otherwise: "fc3: {prune: {sparsity: 0.5}}" means "fc3 at 50%"."""
    merged = merge_fields(config, base, override)
    if any(k in override for k in ("sparsity", "threshold")) and "scope" not in override:
        merged["scope"] = "layer"
    return merged


@dataclass(frozen=True)
class MagnitudeConfig(StepConfig):
    """Either a target ``sparsity`` (fraction of weights zeroed) or an absolute ``threshold``.

    >>> MagnitudeConfig(sparsity=0.5)
    MagnitudeConfig(method='magnitude', scope='global', sparsity=0.5, threshold=None)
    """

    STEP: ClassVar[str] = "prune"
    ONE_OF: ClassVar = (("sparsity", "threshold"),)
    method: str = spec_field("magnitude", "how weights are chosen (see the methods list)", choices=("magnitude",),
                             kind=str)
    scope: str = scope_field()
    sparsity: float | None = sparsity_field()
    threshold: float | None = threshold_field()

    merge = classmethod(merge_by_amount)


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
    mask = Magnitude().masks([w], w, cfg, None).masks[0]
    return w.detach() * mask, mask


def amount_label(cfg: Any, unit: str = "|w|") -> str:
    return f"{cfg.sparsity:.0%}" if cfg.sparsity is not None else f"{unit}≤{cfg.threshold:g}"


class Magnitude(PruneMethod):
    name = "magnitude"
    config = MagnitudeConfig
    summary = "Zero the individual weights with the smallest |w|."
    retrainable = True
    table_field = "sparsity"
    example = {"sparsity": 0.5}

    def masks(self, stored: list[Tensor], weight: Tensor, cfg: MagnitudeConfig, threshold: float | None) -> Pruned:
        scores = [magnitude_scores(t) for t in stored]
        if cfg.threshold is not None:
            threshold = cfg.threshold
        elif threshold is None or cfg.scope != "global":
            threshold = threshold_for_sparsity(torch.cat([s.flatten() for s in scores]), cfg.sparsity)
        return Pruned([keep_mask(s, threshold) for s in scores], threshold)

    def global_key(self, cfg: MagnitudeConfig) -> Any:
        return cfg.sparsity if cfg.scope == "global" and cfg.sparsity is not None else None

    def global_scores(self, stored: list[Tensor]) -> list[Tensor]:
        return [magnitude_scores(t) for t in stored]

    def threshold(self, scores: SortedScores, cfg: MagnitudeConfig) -> float:
        return scores.threshold(cfg.sparsity)

    def label(self, cfg: MagnitudeConfig) -> str:
        return f"magnitude {amount_label(cfg)} {cfg.scope}"
