"""Fine-tune a compressed model with the recipe's ``finetune`` section, then measure it honestly.

``finetune(wb, recipe, dataset)`` trains a deep copy (``wb.baseline`` and ``wb.model`` are only
read), keeps the compression in force while training (``attach``), bakes it, and re-compresses the
result with a fresh ``Workbench`` so that its sizes are the bytes of a real encoding.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pet_core.data import Dataset
from pet_core.errors import PetError
from pet_core.finetune.attach import attach, bake, set_mask, weight_parametrization
from pet_core.finetune.checkpoint import checkpoint_path, load_checkpoint, restore_rng, run_state, save_checkpoint
from pet_core.finetune.config import TECHNIQUES, Finetune, parse_finetune
from pet_core.finetune.distill import distillation_loss
from pet_core.finetune.lora import add_lora, lora_parameter_count, merge_lora, trainable_parameters
from pet_core.finetune.masking import magnitude_masks, prune_groups
from pet_core.finetune.schedule import gradual_sparsity, mask_update_due
from pet_core.finetune.start import final_recipe, reference, restore_low_rank, results_of, start_model
from pet_core.finetune.trainer import RunState, Trainer, split, steps_for
from pet_core.layers import compressible_layers
from pet_core.methods.base import FactorMethod
from pet_core.recipe import Recipe
from pet_core.size import model_bytes
from pet_core.training import accuracy, pick_device
from pet_core.workbench import Workbench


@dataclass
class FinetuneResult:
    """A fine-tuned model and its honest numbers."""

    model: nn.Module          # the fine-tuned, compressed model (parametrizations baked); LoRA: merged (dense)
    workbench: Workbench      # Workbench(model, x_test, y_test) with the final recipe applied: the honest bytes
    report: dict              # Workbench.report() + original "baseline", "history", "finetune" (+ "lottery")
    history: list[dict]
    stopped: bool
    adapters: nn.Module | None = None   # LoRA only: the un-merged model (compressed base + fp32 adapters)


def techniques_of(cfg: Finetune) -> tuple[dict, list[str]]:
    """({name: options} of the techniques used, notes on what is not used); refuses incompatible ones."""
    tech = {name: cfg.technique(name) for name in TECHNIQUES if cfg.technique(name) is not None}
    if tech.get("qat") is not None and not tech["qat"].enabled:
        del tech["qat"]
    if "lora" in tech and {"l1", "gradual", "lottery"} & set(tech):
        raise PetError("finetune: lora trains adapters on a frozen compressed model; it cannot be combined "
                       "with l1, gradual or lottery (they change the base weights)")
    if "l1" in tech and {"gradual", "lottery"} & set(tech):
        raise PetError("finetune: l1 prunes once after training; it cannot be combined with gradual or lottery")
    notes = []
    if "qat" in tech and ("lora" in tech or "l1" in tech):
        notes.append("qat: not used with " + ("lora (the base stays at its compressed values)" if "lora" in tech
                     else "l1 (weights train dense; the recipe's quantize/share is applied after pruning)"))
    return tech, notes


def make_loss(tech: dict, teacher: nn.Module | None, l1_layers: list[nn.Module]):
    """Cross-entropy, or the distillation loss against the teacher; plus λ·Σ|w| for l1."""
    distill, l1 = tech.get("distill"), tech.get("l1")

    def loss_fn(logits, xb, yb, model):
        if distill is not None:
            with torch.no_grad():
                teacher_logits = teacher(xb)                             # (b, classes)
            loss = distillation_loss(logits, teacher_logits, yb, distill.temperature, distill.alpha)
        else:
            loss = F.cross_entropy(logits, yb)
        if l1 is not None and l1.strength > 0:
            loss = loss + l1.strength * sum(m.weight.abs().sum() for m in l1_layers)
        return loss

    return loss_fn


def gradual_hook(tech_gradual, ref: Workbench, layers: dict, masks: dict, per_epoch: int, total: int):
    """on_step callback updating the masks on the Zhu-Gupta schedule (masks only lose weights)."""
    g = tech_gradual
    groups = prune_groups(ref.specs, masks, "gradual")
    end = min(round(g.end_epoch * per_epoch), total - 1)     # the final sparsity must be reached
    start = min(round(g.start_epoch * per_epoch), end)

    def on_step(step: int) -> None:
        if not mask_update_due(step, start, end, g.frequency):
            return
        for group in groups:
            target = gradual_sparsity(step, group.sparsity, min(g.initial_sparsity, group.sparsity),
                                      start, end, g.frequency)
            current = {n: weight_parametrization(layers[n]).mask for n in group.names}
            for n, mask in magnitude_masks(layers, group, target, current).items():
                set_mask(layers[n], mask)

    return on_step, groups


def baseline_numbers(wb: Workbench) -> dict:
    """The original baseline's accuracy, bytes and parameter count."""
    return {"accuracy": wb.baseline_accuracy, "size_bytes": model_bytes(wb.baseline),
            "params": sum(p.numel() for p in wb.baseline.parameters())}


def check_trainable(wb: Workbench, dataset: Dataset | None) -> None:
    """Fine-tuning trains image classifiers whose compressed tensors are Linear/Conv weights; anything
    else is refused in one line before a worker starts."""
    if dataset is None:
        raise PetError("fine-tuning needs a dataset: this model was loaded weights-only")
    task = getattr(dataset, "task", "image_classification")
    if task != "image_classification":
        raise PetError(f"fine-tuning supports image classification only; this is a {task.replace('_', ' ')} "
                       f"model (compress and evaluate it without fine-tuning)")
    trainable = compressible_layers(wb.baseline)
    other = [f"{n} ({t.type})" for n, t in wb.layers.items() if n not in trainable]
    if other:
        raise PetError(f"fine-tuning supports Linear/Conv1d/Conv2d layers only; {len(other)} other compressible "
                       f"tensor(s) such as {other[0]} cannot be trained yet")


def finetune(wb: Workbench, recipe: Recipe, dataset: Dataset, *, progress=None,
             stop: threading.Event | None = None, checkpoint_dir: str | Path | None = None,
             resume: bool = False, device: torch.device | None = None,
             checkpoint_every_steps: int | None = None, checkpoint_every_s: float | None = 60.0,
             ) -> FinetuneResult:
    """Fine-tune ``recipe``'s compressed model on ``dataset``; see the module docstring.

    Args:
        wb: the workbench (baseline and eval tensors); never modified.
        recipe: the compression recipe with its ``finetune`` section.
        dataset: training data (10% of it held out for validation) and the test split.
        progress: called with a dict every ~10 steps and at the end (also appended to the history).
        stop: when set, training stops at the next step, writes a checkpoint and returns (stopped=True).
        checkpoint_dir: where ``finetune.pt`` is written: every ``checkpoint_every_steps`` steps and/or
            every ``checkpoint_every_s`` seconds, on stop, on error, and at the end of training.
        resume: continue from ``checkpoint_dir/finetune.pt`` to the same total steps.
        device: default ``pick_device()``.
        checkpoint_every_steps: periodic checkpoint after every step that is a multiple of it (None: off).
        checkpoint_every_s: periodic checkpoint when this many seconds passed since the last (None: off).
            A lottery run, which cannot be resumed, writes only on stop and error.

    The report's ``finetune.checkpoint`` says what was written: ``{"path", "step", "written"}``.
    """
    cfg = parse_finetune(recipe.finetune)
    tech, notes = techniques_of(cfg)
    device = device or pick_device()
    if resume and checkpoint_dir is None:
        raise PetError("finetune: resume needs a checkpoint_dir")
    if checkpoint_every_steps is not None and (isinstance(checkpoint_every_steps, bool)
                                               or not isinstance(checkpoint_every_steps, int)
                                               or checkpoint_every_steps < 1):
        raise PetError(f"finetune: checkpoint_every_steps must be a whole number >= 1, "
                       f"got {checkpoint_every_steps!r}")
    if checkpoint_every_s is not None and not checkpoint_every_s > 0:
        raise PetError(f"finetune: checkpoint_every_s must be > 0 seconds, got {checkpoint_every_s!r}")
    check_trainable(wb, dataset)
    ref = reference(wb, recipe)
    torch.manual_seed(cfg.seed)
    data = split(dataset, cfg.seed, device)
    teacher = None
    if "distill" in tech:   # the baseline itself on CPU; a copy on other devices (never moved)
        teacher = wb.baseline if device.type == "cpu" else copy.deepcopy(wb.baseline).to(device)
        teacher.eval()

    written: dict = {"path": None if checkpoint_dir is None else str(checkpoint_path(checkpoint_dir)),
                     "step": None, "written": False}

    def checkpoint(model, opt, state):
        if checkpoint_dir is not None:
            save_checkpoint(checkpoint_dir, model, opt, state, recipe.to_dict())
            written.update(step=state.step, written=True)

    if "lottery" in tech:
        from pet_core.finetune.lottery import lottery
        if resume:
            raise PetError("finetune: resuming a lottery run is not supported; start it afresh")
        out = lottery(ref, recipe, dataset, tech, data, device, make_loss(tech, teacher, []),
                      progress=progress, stop=stop, checkpoint=checkpoint)
        result = finish(wb, ref, recipe, dataset, out.model, out.state, tech, out.attached, keep_masks=True,
                        trained=out.trained, device=device)
        result.report["lottery"] = out.rounds
        result.report["finetune"]["notes"] = notes
        lot = tech["lottery"]
        result.report["finetune"]["total_steps"] = ((lot.rewind_steps if lot.rewind == "early" else 0)
                                                    + (lot.rounds + 1) * steps_for(cfg, len(data.y_train)))
        result.report["finetune"]["checkpoint"] = dict(written)
        return result

    if "lora" in tech:      # adapters on the compressed working copy itself
        model, masks = copy.deepcopy(ref.model), {}
        layers = compressible_layers(model)
        names = add_lora(model, tech["lora"], cfg.seed)
        attached = {n: f"lora r={tech['lora'].rank} (base frozen)" for n in names}
    else:
        model, masks = start_model(ref, "dense" if {"l1", "gradual"} & set(tech) else "compressed")
        layers = compressible_layers(model)     # before attach: parametrized modules change their class
        attach_masks = masks
        if "gradual" in tech:
            attach_masks = {n: torch.ones_like(m) for n, m in masks.items()}
        elif "l1" in tech:
            attach_masks = {}     # dense training; the recipe's prune runs after it
        attached = attach(model, ref.specs, results_of(ref), qat="qat" in tech and "l1" not in tech,
                          masks=attach_masks, fixed_masks="gradual" not in tech)
    l1_layers = [layers[n] for n, s in ref.specs.items() if s.of_kind(FactorMethod) is None] if "l1" in tech else []
    trainer = Trainer(cfg, data, device, make_loss(tech, teacher, l1_layers), progress=progress, stop=stop,
                      freeze_norm="lora" in tech, checkpoint_every_steps=checkpoint_every_steps,
                      checkpoint_every_s=checkpoint_every_s)
    total = steps_for(cfg, len(data.y_train))
    if "gradual" in tech:
        trainer.on_step, _ = gradual_hook(tech["gradual"], ref, layers, masks, trainer.per_epoch, total)
    if not any(p.requires_grad for p in model.parameters()):
        raise PetError("finetune: the recipe leaves nothing to train (every layer is frozen)")
    state, opt_state = RunState(), None
    if resume:
        saved = load_checkpoint(checkpoint_dir, recipe.to_dict())
        model.load_state_dict(saved["model"])
        state, opt_state = run_state(saved), saved["optimizer"]
        restore_rng(saved)
    trained = trainable_parameters(model)
    state, opt = trainer.run(model, total, state=state, opt_state=opt_state, checkpoint=checkpoint)
    if not state.stopped:   # finished: a later --resume goes straight to the (re)measuring
        checkpoint(model, opt, state)
    model.to("cpu")
    if "lora" in tech:
        result = finish_lora(wb, recipe, dataset, model, state, tech, attached, trained, device)
    else:
        result = finish(wb, ref, recipe, dataset, model, state, tech, attached, keep_masks="l1" not in tech,
                        trained=trained, device=device)
    result.report["finetune"]["notes"] = notes
    result.report["finetune"]["total_steps"] = total
    result.report["finetune"]["checkpoint"] = dict(written)
    return result


def _finetune_info(state: RunState, tech: dict, attached: dict, trained: tuple[int, int] | None,
                   device: torch.device) -> dict:
    return {"device": str(device), "steps": state.step, "seconds": state.seconds, "techniques": sorted(tech),
            "attached": attached, "stopped": state.stopped,
            "trainable_params": None if trained is None else trained[0],
            "total_params": None if trained is None else trained[1]}


def finish(wb: Workbench, ref: Workbench, recipe: Recipe, dataset: Dataset, model: nn.Module, state: RunState,
           tech: dict, attached: dict, *, keep_masks: bool, trained: tuple[int, int] | None,
           device: torch.device) -> FinetuneResult:
    """Bake, re-compress with the final recipe in a fresh workbench, and report."""
    model = bake(model.to("cpu")).eval()
    model.requires_grad_(True)
    restore_low_rank(model, ref)
    final = Workbench(model, dataset.x_test, dataset.y_test)
    final_r = final_recipe(recipe, ref, keep_masks=keep_masks)
    final.apply(final_r)
    report = final.report()
    base = baseline_numbers(wb)
    report["recipe"], report["final_recipe"], report["baseline"] = recipe.to_dict(), final_r.to_dict(), base
    report["compressed"]["compression_ratio"] = base["size_bytes"] / report["compressed"]["size_bytes"]
    report["history"] = state.history
    report["finetune"] = _finetune_info(state, tech, attached, trained, device)
    return FinetuneResult(copy.deepcopy(final.model), final, report, state.history, state.stopped)


def finish_lora(wb: Workbench, recipe: Recipe, dataset: Dataset, model: nn.Module, state: RunState, tech: dict,
                attached: dict, trained: tuple[int, int], device: torch.device) -> FinetuneResult:
    """LoRA: the compressed base (unchanged) + fp32 adapters; the exported model is the merged one."""
    model.eval()
    final = Workbench(wb.baseline, dataset.x_test, dataset.y_test)
    final.apply(recipe)
    acc = accuracy(model, dataset.x_test, dataset.y_test)
    report = final.report(accuracy=acc)
    merged = merge_lora(model)
    adapter_params = lora_parameter_count(model)
    c = report["compressed"]
    c["base_size_bytes"], c["adapter_bytes"] = c["size_bytes"], adapter_params * 4
    c["size_bytes"] = c["base_size_bytes"] + c["adapter_bytes"]
    base = baseline_numbers(wb)
    c["compression_ratio"] = base["size_bytes"] / c["size_bytes"]
    report["baseline"] = base
    report["merged"] = {"size_bytes": model_bytes(merged), "note": "merging adds the dense update B·A to every "
                        "adapted weight: a merged export is dense fp32 (compressed base + adapters is smaller)"}
    report["history"] = state.history
    report["finetune"] = _finetune_info(state, tech, attached, trained, device)
    return FinetuneResult(merged, final, report, state.history, state.stopped, adapters=model)
