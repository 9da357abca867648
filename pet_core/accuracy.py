"""The one top-1 accuracy loop: training, the workbench, exported files and the benches all count here."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


def logits_of(out: Any) -> Any:
    """The logits in a model's output: a tensor as it is, ``out.logits`` (a transformers ModelOutput),
    or the first item of a tuple/list.

    >>> logits_of((torch.ones(1, 2), "hidden states")).shape
    torch.Size([1, 2])
    """
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is not None:
        return logits
    if isinstance(out, (tuple, list)) and out:
        return out[0]
    return out


def top1_accuracy(model: nn.Module | Callable[[Any], Any], x: Any, y: Any, *, batch_size: int = 1024) -> float:
    """Fraction of ``x`` (N, ...) whose highest logit is the label in ``y`` (N,); 0.0 for no items.

    ``model`` is a torch module or any ``predict(xb) -> logits (b, classes)`` callable (for example
    an onnxruntime session wrapped to take numpy batches); an output that is a ModelOutput or a tuple
    counts through :func:`logits_of`; ``x`` and ``y`` are torch tensors or numpy
    arrays, sliced in batches of ``batch_size`` under :func:`torch.inference_mode`. A module's batches
    are moved to the device of its first parameter (the CPU when it has none) and its predictions
    back to the labels' device. The module's train/eval mode is left as it is.

    >>> logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 4.0]])
    >>> top1_accuracy(nn.Identity(), logits, torch.tensor([0, 1, 1]), batch_size=2)
    0.6666666666666666
    """
    n = len(y)
    if n == 0:
        return 0.0
    device = None
    if isinstance(model, nn.Module):
        try:
            device = next(model.parameters()).device
        except StopIteration:  # parameter-free (e.g. some TorchScript) models run on the CPU
            device = torch.device("cpu")
    correct = 0
    with torch.inference_mode():
        for i in range(0, n, batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]  # (b, ...), (b,)
            if device is not None:
                xb = xb.to(device)
            pred = logits_of(model(xb)).argmax(1)  # (b,)
            if isinstance(pred, torch.Tensor) and isinstance(yb, torch.Tensor):
                pred = pred.to(yb.device)
            correct += int((pred == yb).sum())
    return correct / n


__all__ = ["logits_of", "top1_accuracy"]
