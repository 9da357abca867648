"""The numbers behind :func:`pet_core.compare.compare_runs`: per-item outcomes, their comparison, layer diffs.

Pure functions over models and numpy arrays, no ledger: :func:`outcomes` runs one model over a test
set (batched, no gradients, eval mode), :func:`prediction_stats` compares two models' outcomes, and
:func:`layer_differences` compares their compressible weights by layer name.

>>> import numpy as np
>>> a = {"label": np.array([0, 1, 1]), "pred": np.array([0, 0, 1]), "conf": np.ones(3),
...      "p_true": np.array([.9, .2, .8]), "nll": np.zeros(3), "classes": 2}
>>> b = {**a, "pred": np.array([0, 1, 0]), "p_true": np.array([.9, .8, .3])}
>>> s = prediction_stats(a, b, examples=5, lm=False, num_classes=2)
>>> s["agreement"], s["fixed"], s["broken"], [f["index"] for f in s["flipped"]]
(0.3333333333333333, 1, 1, [1, 2])
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from pet_core.accuracy import logits_of
from pet_core.errors import PetError
from pet_core.layers import targets
from pet_core.metrics import LM_BATCH_SIZE

MAX_EXAMPLES = 500            # flipped items listed at most
CLASSIFY_BATCH_SIZE = 256     # test items a batch: (b, classes) logits each
MAX_CONFUSION_CLASSES = 100   # above this a confusion matrix (classes²) says little and weighs much: left out
CONTEXT_TOKENS = 8            # tokens of context shown before a flipped next-token prediction
FLIPPED_ORDER = ("|change| descending, ties by index ascending; change = p_B(true) - p_A(true), the probability "
                 "each run gives the true label")


def check_examples(examples: Any) -> int:
    """``examples`` as an int in [0, MAX_EXAMPLES]; PetError otherwise."""
    if isinstance(examples, bool) or not isinstance(examples, (int, np.integer)) or not 0 <= examples <= MAX_EXAMPLES:
        raise PetError(f"examples must be a whole number from 0 to {MAX_EXAMPLES}, not {str(examples)[:40]!r}")
    return int(examples)


def outcomes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lm: bool = False) -> dict[str, Any]:
    """Each test item's label, predicted class, its probability, the true label's probability and NLL.

    Classification: items are the rows of ``x`` (N, ...), labels ``y`` (N,). Causal LM (``lm``): items
    are the next-token positions of the blocks ``x`` (N, L), in block-major order, N * (L - 1) of them;
    the label of position t is token t + 1 (``y`` is unused). The model runs in eval mode (its modes
    are restored after), under ``torch.inference_mode``, in batches.

    Returns:
        {"label", "pred" (int64), "conf", "p_true" (float32), "nll" (float64): arrays of one value per
        item, "classes": the logits' width, "positions": L - 1 for an LM, else None}.
    """
    modes = {m: m.training for m in model.modules()}
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    batch = LM_BATCH_SIZE if lm else CLASSIFY_BATCH_SIZE
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("label", "pred", "conf", "p_true", "nll")}
    classes = 0
    try:
        with torch.inference_mode():
            for i in range(0, len(x), batch):
                xb = x[i:i + batch].to(device)
                logits = logits_of(model(xb)).float()                       # (b, C) or (b, L, V)
                if lm:
                    labels = xb[:, 1:].reshape(-1)                           # (b * (L-1),)
                    logits = logits[:, :-1].reshape(-1, logits.shape[-1])    # (b * (L-1), V)
                else:
                    labels = y[i:i + batch].to(device)                       # (b,)
                classes = int(logits.shape[-1])
                _add_batch(parts, logits, labels)
    finally:
        for m, training in modes.items():
            m.training = training
    out: dict[str, Any] = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    out["classes"] = classes
    out["positions"] = int(x.shape[1]) - 1 if lm else None
    return out


def _add_batch(parts: dict[str, list[np.ndarray]], logits: torch.Tensor, labels: torch.Tensor) -> None:
    if len(labels) and int(labels.max()) >= logits.shape[-1]:
        raise PetError(f"a test label is {int(labels.max())} but the model has {logits.shape[-1]} outputs")
    log_p = torch.log_softmax(logits, dim=-1)                                # (b, C)
    pred = logits.argmax(dim=-1)                                             # (b,) the first maximum
    conf = log_p.gather(1, pred[:, None])[:, 0]                              # (b,) log p(predicted)
    log_true = log_p.gather(1, labels[:, None])[:, 0]                        # (b,)
    parts["label"].append(labels.cpu().numpy().astype(np.int64))
    parts["pred"].append(pred.cpu().numpy().astype(np.int64))
    parts["conf"].append(conf.exp().cpu().numpy())
    parts["p_true"].append(log_true.exp().cpu().numpy())
    parts["nll"].append(-log_true.cpu().double().numpy())


def prediction_stats(a: dict[str, Any], b: dict[str, Any], *, examples: int, lm: bool,
                     num_classes: int) -> dict[str, Any]:
    """Agreement, fixed/broken counts, metrics, per-class table, confusion matrices and flipped items of A → B.

    ``a``/``b`` are :func:`outcomes` of the same test set. See :func:`pet_core.compare.compare_runs`
    for the keys; flipped items are ordered as :data:`FLIPPED_ORDER` says.
    """
    y, pa, pb = a["label"], a["pred"], b["pred"]
    n = len(y)
    if n == 0:
        raise PetError("the test set is empty: there are no predictions to compare")
    right_a, right_b, same = pa == y, pb == y, pa == pb
    flipped = ~same
    out: dict[str, Any] = {
        "unit": "token" if lm else "item", "n": n, "agreement": float(same.mean()),
        "flipped_count": int(flipped.sum()), "fixed": int((flipped & ~right_a & right_b).sum()),
        "broken": int((flipped & right_a & ~right_b).sum()),
        "both_wrong_differently": int((flipped & ~right_a & ~right_b).sum()),
        "both_right": int((same & right_a).sum()), "both_wrong_same": int((same & ~right_a).sum()),
        "notes": []}
    if lm:
        value_a, value_b = math.exp(float(a["nll"].mean())), math.exp(float(b["nll"].mean()))
    else:
        value_a, value_b = float(right_a.mean()), float(right_b.mean())
    out.update(metric_a=value_a, metric_b=value_b, metric_change=value_b - value_a)
    out.update(_classes(y, pa, pb, num_classes, a["classes"], b["classes"], out["notes"]) if not lm else
               {"classes": None, "per_class": None, "confusion_a": None, "confusion_b": None, "confusion_diff": None})
    out.update(flipped=_flipped(a, b, flipped, examples), flipped_total=out["flipped_count"],
               flipped_order=FLIPPED_ORDER)
    return out


def _classes(y, pa, pb, num_classes: int, width_a: int, width_b: int, notes: list[str]) -> dict[str, Any]:
    """Per-class accuracies and the confusion matrices (rows = true class, columns = predicted)."""
    c = max(num_classes, width_a, width_b, int(y.max()) + 1)
    support = np.bincount(y, minlength=c)
    hits_a = np.bincount(y[pa == y], minlength=c)
    hits_b = np.bincount(y[pb == y], minlength=c)
    per_class = []
    for k in range(c):
        acc_a = float(hits_a[k] / support[k]) if support[k] else None
        acc_b = float(hits_b[k] / support[k]) if support[k] else None
        per_class.append({"class": k, "support": int(support[k]), "accuracy_a": acc_a, "accuracy_b": acc_b,
                          "change": None if acc_a is None else acc_b - acc_a})
    out = {"classes": c, "per_class": per_class, "confusion_a": None, "confusion_b": None, "confusion_diff": None}
    if c > MAX_CONFUSION_CLASSES:
        notes.append(f"{c} classes: confusion matrices are left out above {MAX_CONFUSION_CLASSES}")
        return out
    conf_a = np.bincount(y * c + pa, minlength=c * c).reshape(c, c)          # (true, predicted)
    conf_b = np.bincount(y * c + pb, minlength=c * c).reshape(c, c)
    out.update(confusion_a=conf_a.tolist(), confusion_b=conf_b.tolist(), confusion_diff=(conf_b - conf_a).tolist())
    return out


def _flipped(a: dict[str, Any], b: dict[str, Any], flipped: np.ndarray, examples: int) -> list[dict[str, Any]]:
    """The first ``examples`` flipped items by |p_B(true) − p_A(true)| descending, ties by index."""
    index = np.flatnonzero(flipped)
    change = b["p_true"][index].astype(np.float64) - a["p_true"][index].astype(np.float64)
    order = np.lexsort((index, -np.abs(change)))[:examples]     # the last key sorts first
    items = []
    for j in order:
        i = int(index[j])
        item = {"index": i, "label": int(a["label"][i]), "pred_a": int(a["pred"][i]), "conf_a": float(a["conf"][i]),
                "pred_b": int(b["pred"][i]), "conf_b": float(b["conf"][i]), "p_true_a": float(a["p_true"][i]),
                "p_true_b": float(b["p_true"][i]), "change": float(change[j])}
        if a.get("positions"):
            item.update(block=i // a["positions"], position=i % a["positions"])
        items.append(item)
    return items


def token_context(x: torch.Tensor, block: int, position: int) -> dict[str, Any]:
    """The (at most :data:`CONTEXT_TOKENS`) token ids up to ``position`` of ``block``, which predict the next."""
    start = max(0, position + 1 - CONTEXT_TOKENS)
    return {"context_ids": [int(t) for t in x[block, start:position + 1]]}


@torch.no_grad()
def layer_differences(model_a: nn.Module, model_b: nn.Module) -> tuple[list[dict], list[dict]]:
    """Per compressible layer of both models (matched by name and shape): ||W_B − W_A||_F / ||W_A||_F,
    the fraction of entries that differ, and each side's fraction of zeros; the rest as not comparable.

    The relative difference is None when A's weight is all zeros and B's is not (0.0 when both are).
    """
    ta, tb = targets(model_a), targets(model_b)
    layers, not_comparable = [], []
    for name, target in ta.items():
        if name not in tb:
            not_comparable.append({"name": name, "reason": "only in run A (e.g. factored or removed in B)"})
            continue
        wa, wb = target.weight.double(), tb[name].weight.double()                    # canonical (out, in, ...)
        if wa.shape != wb.shape:
            not_comparable.append({"name": name, "reason": f"shapes differ: {tuple(wa.shape)} vs {tuple(wb.shape)}"})
            continue
        norm_a, norm_diff = float(torch.linalg.vector_norm(wa)), float(torch.linalg.vector_norm(wb - wa))
        rel = norm_diff / norm_a if norm_a > 0 else (0.0 if norm_diff == 0 else None)
        layers.append({"name": name, "shape": list(wa.shape), "relative_diff": rel,
                       "changed_fraction": float((wa != wb).double().mean()),
                       "sparsity_a": float((wa == 0).double().mean()), "sparsity_b": float((wb == 0).double().mean())})
    not_comparable += [{"name": name, "reason": "only in run B (e.g. factored or added in B)"}
                       for name in tb if name not in ta]
    return layers, not_comparable


__all__ = ["CONTEXT_TOKENS", "FLIPPED_ORDER", "MAX_CONFUSION_CLASSES", "MAX_EXAMPLES", "check_examples",
           "layer_differences", "outcomes", "prediction_stats", "token_context"]
