"""Runs in the ledger: record what a baseline, a recipe or a fine-tune produced, and reopen it exactly.

The glue between ``Baseline``/``Workbench``/``FinetuneResult`` and :class:`pet_core.ledger.Ledger`,
used by the CLI and the app alike. A row names its source (model and dataset as given, content
hashes, and what ``load_baseline`` needs to load them again); a fine-tuned run also keeps its
weights in the workspace (``run-<id>.petz``, our packed format, for zoo architectures; else
``run-<id>.safetensors``). ``open_run`` rebuilds the workbench of any run and refuses when the
model or the data changed since.

A run's ``metrics`` name the task's metric: ``metric`` ("accuracy" or "perplexity"),
``higher_is_better``, and the value under that name (left out when nothing was measured: a
weights-only baseline, whose dataset is recorded as :data:`NO_DATASET`).

Example:
    >>> rid = record_evaluation(ledger, baseline, wb.report())      # doctest: +SKIP
    >>> baseline, wb = open_run(ledger, rid)                         # doctest: +SKIP
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pet_core.errors import PetError
from pet_core.layers import compressible_layers, targets
from pet_core.ledger import Ledger, model_hash
from pet_core.loader import RUN_PREFIX, Baseline, is_run_source, is_zoo_name, load_baseline, open_workbench
from pet_core.methods.base import FactorMethod
from pet_core.recipe import Recipe
from pet_core.size import model_bytes
from pet_core.steps import resolve
from pet_core.workbench import Workbench
from pet_core.workspace import run_weights_dir

HISTORY_POINTS = 500      # the most training-history rows kept in a run's row
COMPRESSED_METRICS = ("size_bytes", "size_bytes_huffman", "compression_ratio", "weight_sparsity",
                      "nonzero_params")   # besides the task's metric, stored under its own name
NO_DATASET = "none"       # dataset name and hash of a weights-only run (nothing measured)
ACCURACY_METRIC = {"name": "accuracy", "higher_is_better": True}   # a report or run from before metrics were named
FINETUNE_METRICS = ("steps", "seconds", "device", "techniques")


def identity(baseline: Baseline) -> dict[str, Any]:
    """Model and dataset as given, their content hashes, and ``extra``: what rebuilds the baseline.

    The model hash is cached in ``baseline.info["model_hash"]`` (hashing a big model takes time).
    """
    if "model_hash" not in baseline.info:
        baseline.info["model_hash"] = model_hash(baseline.model)
    source = baseline.source or {}
    ds = baseline.dataset
    spec = NO_DATASET if ds is None else str(source.get("dataset") or ds.name)
    data_dir = source.get("data_dir")
    if ds is None:
        data_dir = None
    elif spec.strip().lower() == "mnist":
        data_dir = data_dir or os.environ.get("PET_MNIST_DIR")
        data_dir = str(Path(data_dir).expanduser().resolve()) if data_dir else None
    elif spec.strip().lower().endswith((".npz", ".txt")):
        spec = str(Path(spec).expanduser().resolve())
    model = baseline.model_name
    file = None if is_zoo_name(model) else Path(model).expanduser()     # not a file either: e.g. "run:12"
    extra = {"data_dir": data_dir, "arch": baseline.arch, "arch_given": source.get("arch"), "dataset_spec": spec,
             "task": source.get("task"),   # a task override (an ambiguous HF folder) rebuilds the same head
             "model_path": str(file.resolve()) if file is not None and file.exists() else None}   # file or folder
    return {"model": model, "model_hash": baseline.info["model_hash"],
            "dataset": NO_DATASET if ds is None else str(source.get("dataset") or ds.name),
            "dataset_hash": NO_DATASET if ds is None else ds.fingerprint, "extra": extra}


def _source(ident: dict[str, Any]) -> dict[str, Any]:
    return {k: ident[k] for k in ("model", "model_hash", "dataset", "dataset_hash")}


def record_baseline(ledger: Ledger, baseline: Baseline, owner: str = "me", *, numbers: dict | None = None) -> int:
    """The baseline's run (one per model and dataset, shared by every owner); recorded when missing.

    A baseline loaded from a run (``run:N``) is recorded under that run, so lineage continues through it.

    ``numbers``: the ``report()["baseline"]`` at hand ({<metric name>, size_bytes, params}), saving an evaluation.
    """
    ident = identity(baseline)
    found = ledger.find("baseline", model_hash=ident["model_hash"], dataset_hash=ident["dataset_hash"], recipe=None)
    if found is not None:
        return found
    if numbers is None:
        numbers = open_workbench(baseline).report()["baseline"]
    weights = [t.weight for t in targets(baseline.model).values()]   # a tied tensor once, at its owner
    zeros = sum(int((w == 0).sum()) for w in weights)
    metrics = {**metric_fields(baseline.metric.to_dict(), numbers), "size_bytes": numbers["size_bytes"],
               "compression_ratio": 1.0, "weight_sparsity": zeros / max(1, sum(w.numel() for w in weights)),
               "params": numbers["params"]}
    from_run = baseline.info.get("run_id") if baseline.info.get("kind") == "run" else None   # "run:N" models
    return ledger.record("baseline", **_source(ident), recipe=None, metrics=metrics, extra=ident["extra"],
                         parent_id=from_run, owner=owner)


def metric_fields(metric: dict[str, Any], numbers: dict[str, Any]) -> dict[str, Any]:
    """``metric`` (its name), ``higher_is_better`` and, when measured, the value under the metric's name.

    >>> metric_fields({"name": "perplexity", "higher_is_better": False}, {"perplexity": 43.2, "size_bytes": 9})
    {'metric': 'perplexity', 'higher_is_better': False, 'perplexity': 43.2}
    """
    name = metric["name"]
    out = {"metric": name, "higher_is_better": bool(metric["higher_is_better"])}
    if numbers.get(name) is not None:
        out[name] = numbers[name]
    return out


def run_metric(run_or_report: dict[str, Any]) -> dict[str, Any]:
    """{"name", "higher_is_better"} of a run's metrics or of a report (accuracy when it names none)."""
    m = run_or_report.get("metric")
    if isinstance(m, dict):        # a report
        return {"name": m["name"], "higher_is_better": bool(m["higher_is_better"])}
    metrics = run_or_report.get("metrics") or {}
    if metrics.get("metric"):
        return {"name": metrics["metric"], "higher_is_better": bool(metrics.get("higher_is_better", True))}
    return dict(ACCURACY_METRIC)


def compressed_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The ledger's metrics of a ``Workbench.report()``: the metric (named), bytes, ratio, sparsity, non-zeros."""
    c = report["compressed"]
    return {**metric_fields(run_metric(report), c), **{k: c[k] for k in COMPRESSED_METRICS if c.get(k) is not None}}


def post_training_recipe(recipe: dict | None) -> dict | None:
    """The recipe without its ``finetune`` section (what a post-training run stores)."""
    return None if recipe is None else {k: v for k, v in recipe.items() if k != "finetune"}


def record_evaluation(ledger: Ledger, baseline: Baseline, report: dict[str, Any], *, owner: str = "me",
                      kind: str = "post-training", parent_id: int | None = None) -> int:
    """Record a workbench report as a post-training (or sweep) run; identical configurations are upserted.

    Only exact numbers are recorded: a report holding an estimate (``report["evaluation"]["exact"]``
    False) is refused."""
    if not (report.get("evaluation") or {}).get("exact", True):
        raise ValueError("an estimated metric is never recorded as a run: evaluate exactly first")
    ident = identity(baseline)
    if parent_id is None:
        parent_id = record_baseline(ledger, baseline, owner, numbers=report.get("baseline"))
    from pet_core.pareto import summarize_recipe

    recipe = post_training_recipe(report.get("recipe"))
    return ledger.record(kind, **_source(ident), recipe=recipe, label=summarize_recipe(recipe),
                         metrics=compressed_metrics(report), extra=ident["extra"], parent_id=parent_id, owner=owner)


def record_finetune(ledger: Ledger, baseline: Baseline, result, *, owner: str = "me", parent_id: int | None = None,
                    run_id: int | None = None, status: str | None = None) -> int:
    """Record a ``FinetuneResult`` with its weights as a "fine-tuned" run; returns the run id.

    ``parent_id`` defaults to the post-training run of the same recipe without ``finetune`` (recorded
    when missing). ``run_id``: a row made beforehand (queued/running) that is completed instead of
    inserting one. ``status`` defaults to "stopped" when training stopped early, else "done".
    """
    ident = identity(baseline)
    report = result.report
    recipe = report["recipe"]
    if parent_id is None:
        parent_id = _post_training_parent(ledger, baseline, ident, recipe, owner)
    ft = report.get("finetune", {})
    metrics = {**compressed_metrics(report), "finetune": {k: ft.get(k) for k in FINETUNE_METRICS}}
    lora = getattr(result, "adapters", None) is not None
    extra = {**ident["extra"], "final_recipe": None if lora else report.get("final_recipe"),
             "history": trim_history(result.history), "finetune": ft, "lora_merged": lora}
    status = status or ("stopped" if result.stopped else "done")
    if run_id is None:
        run_id = ledger.record("fine-tuned", **_source(ident), recipe=recipe, metrics=metrics, extra=extra,
                               parent_id=parent_id, status="running", owner=owner)
    else:
        ledger.update(run_id, status="running", metrics=metrics, extra=extra, parent_id=parent_id)
    try:
        path = _save_weights(result, baseline, run_id, lora)
    except BaseException as exc:
        ledger.update(run_id, status="failed", error=f"saving the weights failed: {' '.join(str(exc).split())}")
        raise
    ledger.update(run_id, status=status, weights_path=str(path))
    return run_id


def _post_training_parent(ledger: Ledger, baseline: Baseline, ident: dict, recipe: dict, owner: str) -> int:
    post = post_training_recipe(recipe)
    found = ledger.find("post-training", model_hash=ident["model_hash"], dataset_hash=ident["dataset_hash"],
                        recipe=post, owner=owner)
    if found is not None:
        return found
    wb = open_workbench(baseline)
    wb.apply(Recipe.from_dict(post))
    return record_evaluation(ledger, baseline, wb.report(), owner=owner)


def trim_history(history: list[dict], points: int = HISTORY_POINTS) -> list[dict]:
    """At most ``points`` rows, evenly spaced, keeping the first and the last."""
    if len(history) <= points:
        return list(history)
    step = (len(history) - 1) / (points - 1)
    return [history[round(i * step)] for i in range(points)]


def _save_weights(result, baseline: Baseline, run_id: int, lora: bool) -> Path:
    """The fine-tuned model in the workspace: packed for zoo architectures, else safetensors."""
    from pet_core.model_io import save_state_dict
    from pet_core.packed import packed_model_info, save_packed

    folder = run_weights_dir()
    if baseline.arch is not None and is_zoo_name(baseline.arch) and not lora:
        path = folder / f"run-{run_id}.petz"
        save_packed(result.workbench, path, huffman=True, model_info=packed_model_info(baseline))
    else:   # LoRA: the merged (dense) model; the workbench holds the compressed base without adapters
        path = folder / f"run-{run_id}.safetensors"
        save_state_dict(result.model if lora else result.workbench.model, path)
    return path


# ---------------------------------------------------------------------------- reopening


def open_run(ledger: Ledger, run_id: int, *, trust_code: bool = False) -> tuple[Baseline, Workbench]:
    """Rebuild run ``run_id``: its original baseline and a workbench whose ``model`` is that run's model.

    An export run opens its parent. For a fine-tuned run the workbench's ``baseline`` is the
    fine-tuned model (its weights file with the final recipe applied); the returned ``Baseline`` is
    the original one, so sizes and accuracies can still be compared against it.

    Raises:
        PetError: no such run, a run without weights yet, or a model/dataset that changed since.
    """
    run = ledger.get(run_id)
    seen = {run["id"]}
    while run["kind"] == "export":
        if run["parent_id"] is None or run["parent_id"] in seen:
            raise PetError(f"export run {run_id} has no run it was exported from")
        run = ledger.get(run["parent_id"])
        seen.add(run["id"])
    baseline = load_run_baseline(run, trust_code=trust_code)
    ds = baseline.dataset
    if run["kind"] != "fine-tuned":
        wb = open_workbench(baseline)
        recipe = post_training_recipe(run["recipe"]) if run["kind"] != "baseline" else None
        if recipe is not None:
            wb.apply(Recipe.from_dict(recipe))
        return baseline, wb
    final = run["extra"].get("final_recipe")
    final = None if final is None else Recipe.from_dict(final)
    model = _load_weights(run, baseline)
    if final is not None:
        _restore_low_rank(model, baseline.model, final)
    wb = Workbench(model, None if ds is None else ds.x_test, None if ds is None else ds.y_test, task=baseline.task)
    if final is not None:
        wb.apply(final)
    return baseline, wb


def load_source(model: str, dataset: str | None, data_dir: str | None = None, *, arch: str | None = None,
                trust_code: bool = False, progress=None, task: str | None = None) -> Baseline:
    """:func:`pet_core.loader.load_baseline`, and also ``run:N``: the model run N produced.

    ``dataset`` None (or :data:`NO_DATASET`): weights only.
    """
    if is_run_source(model):
        return _load_run(model, trust_code)
    dataset = None if dataset in (None, NO_DATASET) else dataset
    return load_baseline(model, dataset, data_dir, arch=arch, task=task, trust_code=trust_code, progress=progress)


def _load_run(model: str, trust_code: bool) -> Baseline:
    """The model run ``N`` produced (its compressed weights, decoded), on that run's dataset."""
    try:
        run_id = int(model[len(RUN_PREFIX):])
    except ValueError:
        raise PetError(f"model {model[:40]!r}: a run source is 'run:' followed by a run id, e.g. run:12") from None
    base, wb = open_run(Ledger(), run_id, trust_code=trust_code)
    source = {**base.source, "model": model}
    return Baseline(model, base.arch, base.dataset, copy.deepcopy(wb.model).eval(),
                    {"kind": "run", "run_id": run_id, "task": base.task}, source)


def load_run_baseline(run: dict[str, Any], *, trust_code: bool = False) -> Baseline:
    """The baseline a run was made on, loaded again; PetError when its model or data changed."""
    extra = run["extra"] or {}
    model = extra.get("model_path") or run["model"]
    dataset = extra.get("dataset_spec") or run["dataset"]
    baseline = load_source(model, dataset, extra.get("data_dir"), arch=extra.get("arch_given"),
                           trust_code=trust_code, task=extra.get("task"))
    now = identity(baseline)
    if now["model_hash"] != run["model_hash"]:
        raise PetError(f"run {run['id']} was made on model {run['model']} with hash {run['model_hash']}, "
                       f"but {model} now has hash {now['model_hash']}")
    if now["dataset_hash"] != run["dataset_hash"]:
        raise PetError(f"run {run['id']} was made on dataset {run['dataset']} with fingerprint "
                       f"{run['dataset_hash']}, but {dataset} now has fingerprint {now['dataset_hash']}")
    return baseline


def _load_weights(run: dict[str, Any], baseline: Baseline) -> nn.Module:
    """The fine-tuned model stored with the run (bit-equal to the one recorded)."""
    path = run["weights_path"]
    if not path:
        raise PetError(f"run {run['id']} ({run['kind']}, {run['status']}) has no weights yet")
    path = Path(path)
    if not path.is_file():
        raise PetError(f"run {run['id']}: its weights file {path} is missing")
    if path.suffix == ".petz":
        from pet_core.packed import load_packed

        return load_packed(path)[0]
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model = copy.deepcopy(baseline.model)
    try:
        model.load_state_dict(load_file(str(path), device="cpu"))
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise PetError(f"run {run['id']}: cannot load {path.name} ({str(exc).splitlines()[0]})") from None
    return model.eval()


@torch.no_grad()
def _restore_low_rank(model: nn.Module, original: nn.Module, final: Recipe) -> None:
    """Put the original weights back into low-rank layers, as fine-tuning's ``finish`` does.

    They were frozen while training, so applying the final recipe to them reproduces the stored
    factors exactly; factoring the stored product again would not.
    """
    layers, base = compressible_layers(model), compressible_layers(original)
    for name, spec in resolve(final.default, final.layers, list(layers)).items():
        if spec.of_kind(FactorMethod) is not None:
            layers[name].weight.copy_(base[name].weight)
            if layers[name].bias is not None:
                layers[name].bias.copy_(base[name].bias)


def original_numbers(baseline: Baseline, wb: Workbench) -> dict[str, Any]:
    """The original baseline's metric (under its name) and bytes (a fine-tuned run's workbench has
    another baseline)."""
    return {wb.metric.name: wb.evaluate(baseline.model), "size_bytes": model_bytes(baseline.model),
            "params": sum(p.numel() for p in baseline.model.parameters())}
