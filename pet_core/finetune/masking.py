"""Prune masks during training: the post-training masks, magnitude masks by the recipe's scope, overlap.

Gradual pruning and the lottery ticket recompute masks from the current (trained) weights, by
magnitude, in the recipe's scope: one threshold across the layers of a global group, or one per
layer. Masks only ever lose weights: a new mask is intersected with the current one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pet_core.methods.base import FactorMethod, PruneMethod
from pet_core.pipeline import LayerResult
from pet_core.errors import PetError
from pet_core.finetune.attach import latent_weight
from pet_core.methods.magnitude import keep_mask, magnitude_scores, threshold_for_sparsity
from pet_core.steps import LayerSpec


@dataclass
class PruneGroup:
    """Layers pruned with one magnitude threshold, and the sparsity they end at."""

    names: list[str]
    sparsity: float


def post_training_masks(base: dict[str, tuple[Tensor, Tensor | None]], specs: dict[str, LayerSpec],
                        results: dict[str, LayerResult | None]) -> dict[str, Tensor]:
    """The exact keep masks the workbench's pruning used, by layer (low-rank layers left out).

    Taken from the prune step alone, on the baseline weights, with the threshold the workbench used:
    the zeros of a quantised weight also include kept weights that rounded to 0.
    """
    masks = {}
    for name, spec in specs.items():
        prune = spec.of_kind(PruneMethod)
        if prune is None or spec.of_kind(FactorMethod) is not None:
            continue
        weight, _ = base[name]
        method, cfg = prune
        # the workbench's threshold (global groups included) with the layer's own weights
        used = results[name].cut if results[name].cut is not None else results[name].threshold
        masks[name] = method.masks([weight], weight, cfg, used).masks[0]     # a global Cut: its ties too
    return masks


def prune_groups(specs: dict[str, LayerSpec], masks: dict[str, Tensor], technique: str) -> list[PruneGroup]:
    """The magnitude-pruning groups of the recipe: one per global sparsity, one per layer-scope layer.

    A prune given as an absolute threshold ends at the sparsity that threshold gave the baseline
    (``masks``: the post-training masks).
    """
    global_groups: dict[float, list[str]] = {}
    groups = []
    for name, spec in specs.items():
        prune = spec.of_kind(PruneMethod)
        if prune is None or spec.of_kind(FactorMethod) is not None:
            continue
        method, p = prune
        if not method.retrainable:
            raise PetError(f"finetune: {technique} recomputes masks by magnitude; layer {name} uses "
                           f"{method.name} pruning (use method: magnitude)")
        if p.sparsity is None:
            mask = masks[name]
            groups.append(PruneGroup([name], 1.0 - float(mask.float().mean())))
        elif p.scope == "global":
            global_groups.setdefault(p.sparsity, []).append(name)
        else:
            groups.append(PruneGroup([name], p.sparsity))
    groups += [PruneGroup(names, s) for s, names in global_groups.items()]
    if not groups:
        raise PetError(f"finetune: {technique} needs a prune step in the recipe (it sets the final sparsity)")
    return groups


@torch.no_grad()
def magnitude_masks(layers: dict[str, nn.Module], group: PruneGroup, sparsity: float,
                    current: dict[str, Tensor]) -> dict[str, Tensor]:
    """Keep masks pruning ``sparsity`` of the group's weights by |latent weight|, within ``current``.

    Weights already pruned score 0, so they are the first to go again: masks are nested.
    """
    scores = {n: magnitude_scores(latent_weight(layers[n])) for n in group.names}
    flat = torch.cat([s.flatten() for s in scores.values()])                 # (group weights,)
    threshold = threshold_for_sparsity(flat, sparsity)
    return {n: keep_mask(s, threshold) & current[n] for n, s in scores.items()}


def jaccard(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    """|A ∩ B| / |A ∪ B| of two kept sets (masks by layer); 1.0 when both are empty."""
    inter = sum(int((a[n] & b[n]).sum()) for n in a)
    union = sum(int((a[n] | b[n]).sum()) for n in a)
    return 1.0 if union == 0 else inter / union


def sparsity_of(masks: dict[str, Tensor]) -> float:
    """Fraction of the masked weights that are pruned."""
    total = sum(m.numel() for m in masks.values())
    return 0.0 if total == 0 else 1.0 - sum(int(m.sum()) for m in masks.values()) / total
