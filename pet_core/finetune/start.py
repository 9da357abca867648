"""Where fine-tuning starts and how its result is compressed again for honest numbers.

* ``reference``: a fresh workbench over the baseline with the recipe applied (the caller's workbench
  is only read, never applied to).
* ``start_model``: the weights training starts from. ``"compressed"``: each layer's pruned fp32 weight
  (the latent weight whose fake-quantised/shared forward equals the post-training working copy);
  ``"dense"``: the baseline weights (l1, gradual, lottery decide the masks themselves). Low-rank
  layers always hold their compressed weight and stay frozen.
* ``final_recipe``: the recipe that re-compresses the trained model: prune becomes ``|w| > 0`` where
  training fixed the masks, quantize/share are unchanged (idempotent on QAT-trained values), and
  low-rank layers are pinned to the threshold they used so their (frozen) result is reproduced.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from pet_core.finetune.masking import post_training_masks
from pet_core.layers import compressible_layers, layer_bias
from pet_core.recipe import Recipe
from pet_core.methods.base import FactorMethod, PruneMethod, StepConfig
from pet_core.steps import LayerSpec
from pet_core.workbench import Workbench

KEEP_NONZERO = {"method": "magnitude", "threshold": 0.0, "scope": "layer"}


def reference(wb: Workbench, recipe: Recipe) -> Workbench:
    """A workbench over ``wb.baseline`` with ``recipe`` applied; ``wb`` itself is left untouched."""
    ref = Workbench(wb.baseline, wb.x_eval, wb.y_eval, batch_size=wb.batch_size, task=wb.task)
    ref.apply(recipe)
    return ref


def baseline_tensors(ref: Workbench) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """(weight, bias) of every compressible layer of the baseline."""
    return {n: (m.weight.detach(), None if layer_bias(m) is None else layer_bias(m).detach())
            for n, m in compressible_layers(ref.baseline).items()}


def results_of(ref: Workbench) -> dict:
    return {n: ref.result(n) for n in ref.names}


@torch.no_grad()
def start_model(ref: Workbench, mode: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A deep copy of the baseline set up to train from, and the post-training prune masks.

    ``mode`` is ``"compressed"`` (pruned fp32 weights, biases of pruned channels zeroed) or
    ``"dense"`` (baseline weights). Low-rank layers get their compressed weight and bias in both.
    """
    base = baseline_tensors(ref)
    masks = post_training_masks(base, ref.specs, results_of(ref))
    model = copy.deepcopy(ref.baseline)
    layers = compressible_layers(model)
    for name, spec in ref.specs.items():
        module, result = layers[name], ref.result(name)
        if spec.of_kind(FactorMethod) is not None:
            module.weight.copy_(result.weight)
            if layer_bias(module) is not None:
                module.bias.copy_(result.bias)
        elif mode == "compressed" and name in masks:
            module.weight.mul_(masks[name])
            if layer_bias(module) is not None and spec.of_kind(PruneMethod)[0].structured:
                module.bias.copy_(result.bias)    # channel pruning zeroed these entries
    return model, masks


@torch.no_grad()
def restore_low_rank(model: nn.Module, ref: Workbench) -> None:
    """Put the baseline weights back into low-rank layers (in place).

    They were frozen, so re-applying their spec to the baseline weights reproduces exactly the
    compressed result and its stored factors (factoring the product again would not).
    """
    layers = compressible_layers(model)
    base = baseline_tensors(ref)
    for name, spec in ref.specs.items():
        if spec.of_kind(FactorMethod) is not None:
            weight, bias = base[name]
            layers[name].weight.copy_(weight)
            if bias is not None:
                layers[name].bias.copy_(bias)


def _step_dict(step: StepConfig) -> dict[str, Any]:
    """Every field that is set, so the spelled-out recipe does not depend on the default's."""
    return {f.name: getattr(step, f.name) for f in step.data_fields() if getattr(step, f.name) is not None}


def final_recipe(recipe: Recipe, ref: Workbench, *, keep_masks: bool) -> Recipe:
    """The recipe re-applied to the trained model, spelled out per layer.

    ``keep_masks``: training fixed the masks (masked fine-tuning, gradual, lottery), so prune keeps
    exactly the non-zero weights; else (l1) the recipe's own prune decides them now.
    """
    layers: dict[str, dict[str, Any]] = {}
    for name, spec in ref.specs.items():
        steps = {step: _step_dict(cfg) for step, cfg in spec}
        prune = spec.of_kind(PruneMethod)
        if prune is not None:
            if spec.of_kind(FactorMethod) is not None:
                steps["prune"] = _pinned_prune(spec, ref.result(name).threshold)
            elif keep_masks and not prune[0].keeps_own_mask:
                steps["prune"] = dict(KEEP_NONZERO)
        layers[name] = {k: v for k, v in steps.items() if v is not None}
    return recipe.replace(default={}, layers=layers)


def _pinned_prune(spec: LayerSpec, threshold: float | None) -> dict[str, Any] | None:
    """A low-rank layer's prune as a per-layer threshold (global groups change after training)."""
    method, p = spec.of_kind(PruneMethod)
    if method.global_key(p) is None or threshold is None:
        return _step_dict(p)
    if threshold == float("-inf"):
        return None     # nothing was pruned
    return dict(KEEP_NONZERO, threshold=threshold)
