"""What "how good is the model" means for each task: the metric, its direction, and how it is measured.

Classifiers (images or token sequences) count top-1 accuracy, higher is better; causal language
models count perplexity, lower is better. Each metric declares its direction once, here, and
everything that ranks or compares (the report, the Pareto front, the CLI) reads it from
:data:`TASK_METRIC`.

>>> metric_for("causal_lm").format(43.214)
'43.21'
>>> ACCURACY.format(0.97777)
'97.78%'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pet_core.accuracy import logits_of, top1_accuracy
from pet_core.errors import PetError

LM_BATCH_SIZE = 8   # blocks per batch for a language model: each block's logits are (L, vocab) floats


@dataclass(frozen=True)
class Metric:
    """A named quality measure and its direction."""

    name: str               # "accuracy" | "perplexity"
    higher_is_better: bool
    label: str              # how a person reads it: "accuracy", "perplexity (lower is better)"

    def format(self, value: float | None) -> str:
        """``value`` as shown to a person: "97.78%" (accuracy), "43.21" (perplexity), "not measured" (None)."""
        if value is None:
            return "not measured"
        if self.name == "accuracy":
            return f"{100 * value:.2f}%"
        return f"{value:.2f}"

    def better(self, a: float, b: float) -> bool:
        """True when ``a`` is strictly better than ``b``."""
        return a > b if self.higher_is_better else a < b

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a report: ``{"name", "higher_is_better", "label"}``."""
        return {"name": self.name, "higher_is_better": self.higher_is_better, "label": self.label}


ACCURACY = Metric("accuracy", True, "accuracy")
PERPLEXITY = Metric("perplexity", False, "perplexity (lower is better)")
METRICS = {m.name: m for m in (ACCURACY, PERPLEXITY)}
TASK_METRIC = {"image_classification": ACCURACY, "sequence_classification": ACCURACY, "causal_lm": PERPLEXITY}
TASKS = tuple(TASK_METRIC)


def metric_for(task: str) -> Metric:
    """The metric of ``task`` (one of :data:`TASKS`)."""
    try:
        return TASK_METRIC[task]
    except (KeyError, TypeError):
        raise PetError(f"unknown task {task!r:.60}; use one of {', '.join(TASKS)}") from None


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, *, batch_size: int = 512) -> float:
    """The metric of ``task`` for ``model`` on ``x`` (and labels ``y`` for classifiers).

    Classification: top-1 accuracy of ``x`` (images (N, C, H, W) or token ids (N, L), passed to the
    model as its first argument) against ``y`` (N,). Causal LM: :func:`perplexity` of the token
    blocks ``x`` (N, L) (``y`` is not used), in batches of at most :data:`LM_BATCH_SIZE` blocks.
    """
    metric = metric_for(task)
    if metric is PERPLEXITY:
        return perplexity(model, x, batch_size=min(batch_size, LM_BATCH_SIZE))
    return top1_accuracy(model, x, y, batch_size=batch_size)


def perplexity(model: nn.Module, x: torch.Tensor, *, batch_size: int = LM_BATCH_SIZE) -> float:
    """exp(mean negative log-likelihood of each next token) over the token blocks ``x`` (N, L) int64.

    Token ``x[:, t+1]`` is predicted from the logits at position ``t``, so a block of L tokens counts
    L - 1 predictions. The loss is computed here from the logits (not from a ``labels=`` argument),
    so any model returning (N, L, vocab) logits, or an output with ``.logits``, can be measured;
    the log-likelihoods are summed in float64. The module's train/eval mode is left as it is.

    >>> uniform = lambda ids: torch.zeros(*ids.shape, 5)      # every token equally likely
    >>> round(perplexity(uniform, torch.zeros(2, 4, dtype=torch.long)), 6)
    5.0

    Raises:
        PetError: when there is nothing to predict (no blocks, or blocks shorter than 2 tokens).
    """
    if x.ndim != 2 or len(x) == 0 or x.shape[1] < 2:
        raise PetError(f"perplexity needs token blocks (N, L) with L >= 2; got shape {tuple(x.shape)}")
    device = torch.device("cpu")
    if isinstance(model, nn.Module):
        device = next(iter(model.parameters()), torch.empty(0)).device
    total_nll, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device)                         # (b, L)
            logits = logits_of(model(xb))[:, :-1]                        # (b, L-1, vocab)
            target = xb[:, 1:]                                           # (b, L-1)
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                                  reduction="none")                      # (b * (L-1),)
            total_nll += float(nll.double().sum())
            count += target.numel()
    return math.exp(total_nll / count)


__all__ = ["ACCURACY", "LM_BATCH_SIZE", "METRICS", "Metric", "PERPLEXITY", "TASKS", "TASK_METRIC", "evaluate",
           "metric_for", "perplexity"]
