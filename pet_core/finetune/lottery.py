"""Lottery tickets: iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020).

From a rewind point (the architecture's initial weights, or the weights after ``rewind_steps`` of
training from them), the dense network is trained once; then for rounds k = 1..R: prune by magnitude
(the recipe's scope) to ``1 - (1 - s_f)^(k/R)``, rewind the surviving weights to the rewind point and
train again with the new masks. Round R's trained ticket is the result, at the recipe's sparsity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pet_core.data import Dataset
from pet_core.errors import PetError
from pet_core.finetune.attach import attach, set_mask, weight_parametrization
from pet_core.finetune.config import parse_finetune
from pet_core.finetune.lora import trainable_parameters
from pet_core.finetune.masking import PruneGroup, jaccard, magnitude_masks, prune_groups, sparsity_of
from pet_core.finetune.start import results_of, start_model
from pet_core.finetune.trainer import RunState, Split, Trainer, steps_for
from pet_core.layers import compressible_layers
from pet_core.loader import is_zoo_name
from pet_core.methods.base import FactorMethod
from pet_core.recipe import Recipe
from pet_core.training import accuracy
from pet_core.workbench import Workbench
from pet_core.zoo import build_model


@dataclass
class LotteryOutcome:
    model: nn.Module                 # round R's trained ticket, still parametrized
    state: RunState                  # all runs together: steps, seconds, history, stopped
    attached: dict[str, str]
    rounds: list[dict]               # {round, sparsity, val_accuracy, test_accuracy, mask_overlap}
    trained: tuple[int, int]         # (trainable, total) parameters


def init_model(arch: str, dataset: Dataset, baseline: nn.Module, seed: int) -> nn.Module:
    """The zoo architecture's seeded initial weights, checked to fit the baseline's tensors."""
    if not is_zoo_name(arch):
        raise PetError(f"finetune: lottery rewinds to the architecture's initial weights, so the recipe's "
                       f"model must be a zoo model; {arch!r} is not")
    model = build_model(arch, dataset.input_shape, dataset.num_classes, seed)
    ours, theirs = model.state_dict(), baseline.state_dict()
    if ours.keys() != theirs.keys() or any(ours[k].shape != theirs[k].shape for k in ours):
        raise PetError(f"finetune: lottery: the baseline's tensors do not match a fresh {arch} "
                       f"for {dataset.input_shape} inputs and {dataset.num_classes} classes")
    return model


def round_sparsity(final: float, k: int, rounds: int) -> float:
    """``1 - (1 - s_f)^(k/R)``: each round prunes the same fraction of the weights still kept.

    >>> round(round_sparsity(0.75, 1, 2), 4)
    0.5
    """
    return 1.0 - (1.0 - final) ** (k / rounds)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights (and BN statistics) to rewind to; masks are not part of it."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith(".mask")}


def _masks(layers: dict[str, nn.Module], groups: list[PruneGroup]) -> dict[str, torch.Tensor]:
    return {n: weight_parametrization(layers[n]).mask.clone() for g in groups for n in g.names}


def lottery(ref: Workbench, recipe: Recipe, dataset: Dataset, tech: dict, data: Split, device: torch.device,
            loss_fn, *, progress=None, stop=None, checkpoint=None) -> LotteryOutcome:
    """Run the rounds; ``tech["lottery"]`` holds rounds, rewind and rewind_steps.

    Each training run lasts the finetune section's steps (or epochs) and starts a fresh optimiser.
    """
    cfg_l = tech["lottery"]
    if any(s.of_kind(FactorMethod) is not None for s in ref.specs.values()):
        raise PetError("finetune: lottery rewinds every weight to its initial value; it cannot be combined "
                       "with low_rank")
    cfg = parse_finetune(recipe.finetune)
    _, post_masks = start_model(ref, "dense")
    groups = prune_groups(ref.specs, post_masks, "lottery")
    model = init_model(recipe.model, dataset, ref.baseline, cfg.seed)
    layers = compressible_layers(model)     # before attach: parametrized modules change their class
    ones = {n: torch.ones_like(m) for n, m in post_masks.items()}
    attached = attach(model, ref.specs, results_of(ref), qat="qat" in tech, masks=ones, fixed_masks=False)
    trainer = Trainer(cfg, data, device, loss_fn, progress=progress, stop=stop)
    per_round = steps_for(cfg, len(data.y_train))
    total = RunState()
    trained = trainable_parameters(model)

    def train(steps: int, phase: str) -> bool:
        state, _ = trainer.run(model, steps, phase=phase, checkpoint=checkpoint)
        total.step += state.step
        total.seconds += state.seconds
        total.history += state.history
        total.val_accuracy = state.val_accuracy
        total.stopped = state.stopped
        return not state.stopped

    rounds: list[dict] = []
    R = cfg_l.rounds
    if cfg_l.rewind == "early" and cfg_l.rewind_steps > 0 and not train(cfg_l.rewind_steps, "rewind"):
        return LotteryOutcome(model, total, attached, rounds, trained)
    rewind_point = _snapshot(model)
    if not train(per_round, f"round 0/{R}"):
        return LotteryOutcome(model, total, attached, rounds, trained)
    for k in range(1, R + 1):
        previous = _masks(layers, groups)
        with torch.no_grad():
            for group in groups:
                target = round_sparsity(group.sparsity, k, R)
                for n, mask in magnitude_masks(layers, group, target, previous).items():
                    set_mask(layers[n], mask)
        current = _masks(layers, groups)
        model.load_state_dict(rewind_point, strict=False)     # surviving weights back to the rewind point
        ok = train(per_round, f"round {k}/{R}")
        rounds.append({"round": k, "sparsity": sparsity_of(current), "val_accuracy": total.val_accuracy,
                       "test_accuracy": accuracy(model, dataset.x_test, dataset.y_test),
                       "mask_overlap": jaccard(current, previous)})
        if not ok:
            break
    return LotteryOutcome(model, total, attached, rounds, trained)
