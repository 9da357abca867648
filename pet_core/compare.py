"""What changed between two runs of the ledger: which test predictions flipped, per class, per layer.

After the size/accuracy plot, the question is *what* a compressed model does differently (Apple's
"Compress and Compare"). :func:`compare_runs` reopens both runs (:func:`pet_core.runs.open_run`),
runs each model over the same test set, in batches and without gradients, and returns plain
JSON-able data: agreement, fixed/broken counts, per-class accuracy, confusion matrices, the flipped
items with the largest change in confidence, and the relative weight difference of each layer.

Classifiers compare one prediction per test item; causal language models compare one next-token
prediction per token position (no classes: per-class tables and confusion matrices are None).
The numbers come from :mod:`pet_core.compare_stats`; figures from :mod:`pet_core.compare_figures`.

Example:
    >>> out = compare_runs(Ledger(), 1, 2, examples=10)          # doctest: +SKIP
    >>> out["agreement"], out["fixed"], out["broken"]             # doctest: +SKIP
    (0.9644, 6, 9)
"""

from __future__ import annotations

from typing import Any

from pet_core.compare_stats import (MAX_EXAMPLES, check_examples, layer_differences, outcomes, prediction_stats,
                                    token_context)
from pet_core.errors import PetError
from pet_core.ledger import Ledger
from pet_core.runs import NO_DATASET, open_run, run_metric

MAX_IMAGE_SIDE = 64    # a gallery image larger than this is shown strided down to it


def compare_runs(ledger: Ledger, run_a: int, run_b: int, *, trust_code: bool = False, examples: int = 50,
                 images: bool = False) -> dict[str, Any]:
    """Compare the test-set behaviour and the weights of runs ``run_a`` (A) and ``run_b`` (B).

    Args:
        ledger: the ledger holding both runs.
        run_a, run_b: run ids; A is the reference ("fixed" = A wrong, B right).
        trust_code: passed to :func:`pet_core.runs.open_run` (code-carrying model files).
        examples: how many flipped items to list, 0 to :data:`MAX_EXAMPLES`.
        images: add each listed image item's input as ``"image"``, a greyscale (H, W) list of 0..255 ints
            (min-max scaled, channels averaged, strided down to at most :data:`MAX_IMAGE_SIDE` a side).

    Returns:
        A dict: ``task``, ``dataset``, ``unit`` ("item" or "token"), ``n``, ``metric`` ({name,
        higher_is_better}), ``metric_a``/``metric_b``/``metric_change`` (B − A; accuracy or perplexity,
        measured here), ``agreement``, ``flipped_count``, ``fixed``, ``broken``, ``both_wrong_differently``,
        ``both_right``, ``both_wrong_same``, ``classes``, ``per_class`` (list of {class, support,
        accuracy_a, accuracy_b, change}), ``confusion_a``/``confusion_b``/``confusion_diff`` (B − A; rows =
        true class, columns = predicted), ``flipped`` (list), ``flipped_total``, ``flipped_order``,
        ``layers`` (list of {name, shape, relative_diff, changed_fraction, sparsity_a, sparsity_b}),
        ``layers_not_comparable`` (list of {name, reason}), ``runs`` ({"a", "b"}: id, kind, status, label,
        owner, metric, value, size_bytes) and ``notes``.

        ``flipped`` holds items whose predictions differ, ordered by ``|change|`` descending, ties by
        index ascending, where ``change = p_B(true) − p_A(true)``: the probability each model gives the
        true label (next token). Each is {index, label, pred_a, conf_a, pred_b, conf_b, p_true_a,
        p_true_b, change}, ``conf`` being the predicted class's probability; tokens add ``block``,
        ``position`` and ``context_ids`` (and decoded text when the model folder has a tokenizer).

    Raises:
        PetError: a run id not in the ledger, a run without a dataset, runs on different datasets or
            tasks, ``examples`` out of range, or a run that cannot be reopened.
    """
    examples = check_examples(examples)
    rows = {"a": ledger.get(run_a), "b": ledger.get(run_b)}
    for row in rows.values():
        if row["dataset_hash"] == NO_DATASET:
            raise PetError(f"run {row['id']} was made without a dataset (weights only): there are no "
                           f"predictions to compare; compare runs made with a dataset")
    if rows["a"]["dataset_hash"] != rows["b"]["dataset_hash"]:
        raise PetError(f"runs {run_a} and {run_b} were made on different datasets ({rows['a']['dataset']} "
                       f"{rows['a']['dataset_hash']}, {rows['b']['dataset']} {rows['b']['dataset_hash']}); "
                       f"compare two runs of one dataset")
    base_a, wb_a = open_run(ledger, run_a, trust_code=trust_code)
    base_b, wb_b = (base_a, wb_a) if run_a == run_b else open_run(ledger, run_b, trust_code=trust_code)
    if base_a.task != base_b.task:
        raise PetError(f"run {run_a} is a {base_a.task} run and run {run_b} a {base_b.task} run; "
                       f"compare runs of one task")
    ds = base_a.dataset
    lm = base_a.task == "causal_lm"
    out_a = outcomes(wb_a.model, ds.x_test, ds.y_test, lm=lm)
    out_b = outcomes(wb_b.model, ds.x_test, ds.y_test, lm=lm)
    stats = prediction_stats(out_a, out_b, examples=examples, lm=lm, num_classes=ds.num_classes)
    notes = list(stats.pop("notes"))
    if lm:
        notes.append("a causal language model: each token position is an item (the next token is its label); "
                     "no per-class table or confusion matrix")
        _add_token_context(stats["flipped"], ds.x_test, _tokenizer(base_a))
    elif images and ds.x_test.ndim == 4:
        for item in stats["flipped"]:
            item["image"] = greyscale_uint8(ds.x_test[item["index"]])
    elif ds.x_test.ndim == 2:          # token sequences: show the first ids (text when a tokenizer is at hand)
        _add_sequence_text(stats["flipped"], ds.x_test, _tokenizer(base_a))
    layers, not_comparable = layer_differences(wb_a.model, wb_b.model)
    metric = run_metric(rows["a"])
    return {"task": base_a.task, "dataset": ds.name, **stats, "metric": metric, "layers": layers,
            "layers_not_comparable": not_comparable,
            "runs": {k: run_summary(r) for k, r in rows.items()}, "notes": notes}


def run_summary(run: dict[str, Any]) -> dict[str, Any]:
    """A run's id, kind, status, label, owner, metric name, recorded value and size_bytes."""
    metric = run_metric(run)["name"]
    m = run.get("metrics") or {}
    return {"id": run["id"], "kind": run["kind"], "status": run["status"], "label": run.get("label") or "",
            "owner": run.get("owner"), "metric": metric, "value": m.get(metric), "size_bytes": m.get("size_bytes")}


def greyscale_uint8(x) -> list[list[int]]:
    """One image tensor (C, H, W) or (H, W) as (H, W) rows of 0..255 ints: channels averaged, min-max scaled.

    A constant image is all 0; a side over :data:`MAX_IMAGE_SIDE` is strided down to at most that.

    >>> import torch
    >>> greyscale_uint8(torch.tensor([[[-1.0, 0.0], [1.0, 1.0]]]))
    [[0, 128], [255, 255]]
    """
    img = x.detach().float()
    if img.ndim == 3:
        img = img.mean(0)                                          # (H, W)
    step = max(1, -(-max(img.shape) // MAX_IMAGE_SIDE))
    img = img[::step, ::step]
    lo, hi = float(img.min()), float(img.max())
    scaled = (img - lo) / (hi - lo) * 255 if hi > lo else img * 0
    return scaled.round().clamp(0, 255).to(int).tolist()


def _tokenizer(baseline):
    """The model folder's tokenizer, or None (zoo and plain files have none; a folder may lack one)."""
    if baseline.info.get("kind") != "hf":
        return None
    try:
        from pet_core.hf import load_hf_tokenizer

        return load_hf_tokenizer(baseline.model_name)
    except Exception:      # no tokenizer: token ids are shown instead
        return None


def _decode(tokenizer, ids: list[int]) -> str | None:
    if tokenizer is None:
        return None
    try:
        return str(tokenizer.decode(ids))
    except Exception:      # an id the tokenizer cannot decode: ids only
        return None


def _add_token_context(items: list[dict], x, tokenizer) -> None:
    """Context ids (and decoded text) for each flipped next-token position."""
    for item in items:
        item.update(token_context(x, item["block"], item["position"]))
        for key, ids in (("context_text", item["context_ids"]), ("label_text", [item["label"]]),
                         ("pred_a_text", [item["pred_a"]]), ("pred_b_text", [item["pred_b"]])):
            text = _decode(tokenizer, ids)
            if text is not None:
                item[key] = text


SEQUENCE_IDS_SHOWN = 32    # token ids of a flipped sequence shown in the gallery


def _add_sequence_text(items: list[dict], x, tokenizer) -> None:
    for item in items:
        ids = [int(t) for t in x[item["index"], :SEQUENCE_IDS_SHOWN]]
        item["context_ids"] = ids
        text = _decode(tokenizer, ids)
        if text is not None:
            item["context_text"] = text


__all__ = ["MAX_EXAMPLES", "MAX_IMAGE_SIDE", "compare_runs", "greyscale_uint8", "run_summary"]
