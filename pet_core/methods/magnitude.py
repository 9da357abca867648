"""Unstructured magnitude pruning: zero the weights with the smallest |w|.

Scoring (``magnitude_scores``), choosing (``cut_for_sparsity``, ``ScoreIndex``, ``cut_masks``)
and applying (``magnitude_prune``) are separate so that a global (whole-model) cut reuses the
same pieces as a per-layer one.

A target sparsity prunes exactly ``count_to_prune(n, sparsity)`` weights, as
``torch.nn.utils.prune`` does, also when several weights equal the threshold: a ``Cut`` prunes
every score below its value and, of those equal to it, the lowest flat indices first (in a
global group: earlier layers first, then the lowest index). ``torch.topk`` breaks such ties in
no documented order, so on data with ties the masks may differ from torch's in which of the
equal weights go, never in how many.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from pet_core.fields import spec_field
from pet_core.methods.base import Pruned, PruneMethod, StepConfig, merge_fields
from pet_core.methods.score_index import ScoreIndex

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

    Python's ``round`` (banker's rounding) is used on purpose so counts match torch's.

    >>> count_to_prune(10, 0.25)
    2
    """
    return int(round(sparsity * n))


def threshold_for_sparsity(scores: Tensor, sparsity: float) -> float:
    """The ``count_to_prune(numel)``-th smallest score (``-inf`` when nothing is to be pruned).

    ``keep_mask(scores, t)`` prunes at least that many: every score equal to ``t`` too
    (``cut_for_sparsity`` prunes exactly that many).

    >>> threshold_for_sparsity(torch.tensor([3.0, 1.0, 2.0, 4.0]), 0.5)
    2.0
    """
    flat = scores.reshape(-1)
    k = count_to_prune(flat.numel(), sparsity)
    if k <= 0:
        return float("-inf")
    # kthvalue is O(n) selection; no need to sort for a single question
    return float(torch.kthvalue(flat, min(k, flat.numel())).values)


@dataclass(frozen=True)
class Cut:
    """Where magnitude pruning cuts a layer: every score below ``value`` and the first ``ties``
    scores equal to it (lowest flat index first, the layer's stored tensors in order) are pruned.

    Hashable and equal when nothing changed, so the workbench skips an unchanged layer.

    >>> cut_masks([torch.tensor([1.0, 2.0, 1.0, 3.0])], Cut(1.0, ties=1))
    [tensor([False,  True,  True,  True])]
    """

    value: float
    ties: int = 0


NO_CUT = Cut(float("-inf"))


def cut_for_sparsity(scores: list[Tensor], sparsity: float) -> Cut:
    """The cut that prunes exactly ``count_to_prune(n, sparsity)`` of the ``n`` scores.

    >>> cut_for_sparsity([torch.tensor([2.0, 1.0, 2.0, 2.0])], 0.5)
    Cut(value=2.0, ties=1)
    """
    flat = torch.cat([s.reshape(-1) for s in scores])                      # (n,)
    k = min(count_to_prune(flat.numel(), sparsity), flat.numel())
    if k <= 0:
        return NO_CUT
    t = torch.kthvalue(flat, k).values
    return Cut(float(t), k - int(torch.count_nonzero(flat < t)))


def _cut(keep_and_equal, items: list[Tensor], cut: Cut) -> list[Tensor]:
    """The masks of ``cut`` over ``items``, from ``keep_and_equal(item)`` -> (above the value, equal
    to it): the equal ones stay after the first ``cut.ties`` of the group (row-major, items in order)."""
    masks, left = [], cut.ties
    for item in items:
        keep, equal = keep_and_equal(item, left)
        n_equal = 0 if equal is None else int(torch.count_nonzero(equal))
        if left < n_equal:                                  # some equal scores stay: the later ones
            where = torch.nonzero(equal.reshape(-1)).squeeze(1)[left:]     # flat (row-major) indices
            keep = keep.contiguous()                        # scores of a transposed view are strided
            keep.view(-1)[where] = True
        left = max(0, left - n_equal)
        masks.append(keep)
    return masks


def cut_masks(scores: list[Tensor], cut: Cut) -> list[Tensor]:
    """Keep masks (bool, each score's shape) of ``cut``: scores above its value, and those equal to
    it after the first ``cut.ties``."""
    return _cut(lambda s, _left: (s > cut.value, s == cut.value), scores, cut)


def weight_cut_masks(weights: list[Tensor], cut: Cut) -> list[Tensor]:
    """:func:`cut_masks` of the weights' magnitudes, without making them: ``|w| > v`` is
    ``w > v or w < -v`` (NaN neither), ``|w| == v`` is ``w == v or w == -v``.

    >>> weight_cut_masks([torch.tensor([-1.0, 2.0, 1.0, -3.0])], Cut(1.0, ties=1))
    [tensor([False,  True,  True,  True])]
    """
    v = cut.value

    def keep_and_equal(w: Tensor, left: int):
        w = w.detach()
        if left <= 0:                    # no equal weight is pruned here: keep |w| >= v, one mask
            return (w >= v).logical_or_(w <= -v), None
        return (w > v).logical_or_(w < -v), (w == v).logical_or_(w == -v)

    return _cut(keep_and_equal, weights, cut)


class SortedScores(ScoreIndex):
    """The former global-threshold structure's name and API: one member per tensor, and
    ``threshold(sparsity)``, the ``count_to_prune(n, sparsity)``-th smallest score. It no longer sorts.

    >>> SortedScores([torch.tensor([1.0, 4.0]), torch.tensor([[3.0], [2.0]])]).threshold(0.5)
    2.0
    """

    def threshold(self, sparsity: float) -> float:
        k = min(count_to_prune(self.numel, sparsity), self.numel)
        return self.kth(k) if k > 0 else float("-inf")


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

    def masks(self, stored: list[Tensor], weight: Tensor, cfg: MagnitudeConfig, threshold: Any) -> Pruned:
        """``threshold``: the layer's ``Cut`` in its global group, or a plain float (prune |w| <= it)."""
        if cfg.threshold is None and cfg.scope == "global" and isinstance(threshold, Cut):
            return Pruned(weight_cut_masks(stored, threshold), threshold.value)   # the slider's path: no |w| copy
        scores = [magnitude_scores(t) for t in stored]
        if cfg.threshold is not None:
            return Pruned([keep_mask(s, cfg.threshold) for s in scores], cfg.threshold)
        if cfg.scope != "global" or threshold is None:
            cut = cut_for_sparsity(scores, cfg.sparsity)
        elif isinstance(threshold, Cut):
            cut = threshold
        else:                                   # a plain float, as given: prune |w| <= it
            return Pruned([keep_mask(s, threshold) for s in scores], threshold)
        return Pruned(cut_masks(scores, cut), cut.value)

    def global_key(self, cfg: MagnitudeConfig) -> Any:
        return cfg.sparsity if cfg.scope == "global" and cfg.sparsity is not None else None

    def global_scores(self, stored: list[Tensor]) -> list[Tensor]:
        """The stored tensors themselves: ``ScoreIndex`` ranks their magnitudes (no |w| copy)."""
        return [t.detach() for t in stored]

    def threshold(self, scores: ScoreIndex, cfg: MagnitudeConfig) -> list[Cut]:
        """One ``Cut`` per member of the group: exactly ``count_to_prune(n, sparsity)`` pruned in all."""
        return global_cuts(scores, cfg.sparsity)

    def label(self, cfg: MagnitudeConfig) -> str:
        return f"magnitude {amount_label(cfg)} {cfg.scope}"


def global_cuts(index: ScoreIndex, sparsity: float) -> list[Cut]:
    """Each member's cut so that the group prunes exactly ``count_to_prune(n, sparsity)`` scores,
    ties going to earlier members first.

    >>> global_cuts(ScoreIndex([torch.tensor([1.0, 5.0]), torch.tensor([1.0, 1.0])]), 0.5)
    [Cut(value=1.0, ties=1), Cut(value=1.0, ties=1)]
    """
    k = min(count_to_prune(index.numel, sparsity), index.numel)
    if k <= 0:
        return [NO_CUT] * index.members
    value, ties = index.ties(k)
    return [Cut(value, n) for n in ties]
