"""Apply a layer's resolved steps to its weights, in one documented order, for any registered method.

Order (``pet_core.steps.ORDER``): **factor (low rank) → prune → code (quantize | share)**.

* A factor method replaces the weight by two stored factors ``first (out, r)`` and
  ``second (r, in_flat)``; the later steps act on each stored tensor (the weight, or both factors).
* A prune method returns keep masks for the stored tensors (and, when it removes whole output
  channels, the kept rows, which the bias follows); the threshold of a global group is passed in.
* A coding method codes the kept values only; pruned positions stay exactly zero.

Pure: inputs are never modified; the caller writes ``LayerResult.weight`` into its model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pet_core.encoding import StoredTensor
from pet_core.methods.base import CodeMethod, Coded, FactorMethod, PruneMethod
from pet_core.steps import LayerSpec

FLOAT_BITS = 32


@dataclass
class LayerResult:
    """A compressed layer: effective weight and bias for the model, stored tensors for the size."""

    weight: torch.Tensor           # the layer's shape
    bias: torch.Tensor | None
    tensors: list[StoredTensor]
    rank: int | None = None
    singular_values: torch.Tensor | None = None
    threshold: float | None = None     # magnitude threshold (weights) or norm threshold (channels) used
    levels: list[float] | None = None  # quantisation levels or k-means centroids, to draw on histograms
    cut: Any = None                    # the global group's cut given (a magnitude Cut: value and ties)


def factor_product(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``first (out, r) @ second (r, in_flat)``, summed term by term in a fixed order.

    A BLAS matmul rounds differently with the thread count, the CPU and the operands' memory
    order; one elementwise multiply and add per rank term are exact IEEE operations in a fixed
    order, so the packed loader (pet_core.packed) rebuilds the very same weight anywhere. numpy
    runs them: single-threaded, so no thread-pool wake-ups per term on busy cores.
    """
    if first.dtype not in (torch.float32, torch.float64):   # numpy has no bfloat16; the caller casts back
        first, second = first.float(), second.float()
    f = np.ascontiguousarray(first.detach().cpu().numpy().T)                  # (r, out)
    s = np.ascontiguousarray(second.detach().cpu().numpy())                   # (r, in_flat)
    out = np.zeros((f.shape[1], s.shape[1]), dtype=f.dtype)                   # (out, in_flat)
    term = np.empty_like(out)
    for k in range(f.shape[0]):
        np.multiply(f[k][:, None], s[k][None, :], out=term)   # separate ufuncs: never fused into an FMA
        np.add(out, term, out=out)
    return torch.from_numpy(out)


def stored_of(weight: torch.Tensor, spec: LayerSpec):
    """(the tensors the later steps act on, the factor result or None)."""
    factor = spec.of_kind(FactorMethod)
    if factor is None:
        return [weight], None
    method, cfg = factor
    f = method.factor(weight, cfg)
    return [f.first, f.second], f


def prune_scores(weight: torch.Tensor, spec: LayerSpec) -> list[torch.Tensor]:
    """The scores a global prune threshold is chosen from, for this layer (after any factoring)."""
    method, _ = spec.of_kind(PruneMethod)
    return method.global_scores(stored_of(weight, spec)[0])


def compress_layer(weight: torch.Tensor, bias: torch.Tensor | None, spec: LayerSpec,
                   global_threshold: Any = None) -> LayerResult:
    """Compress one layer's weight (and, for channel pruning, its bias) by ``spec``.

    Args:
        weight: the baseline weight, ``(out, in)`` or ``(out, in, *kernel)``; never modified.
        bias: the baseline bias or None.
        spec: the layer's resolved steps.
        global_threshold: the shared threshold when the layer prunes in a global group.

    Example:
        >>> from pet_core.methods.magnitude import MagnitudeConfig
        >>> r = compress_layer(torch.tensor([[1., -2.], [3., 0.5]]), None, LayerSpec(prune=MagnitudeConfig(sparsity=0.5)))
        >>> r.weight
        tensor([[ 0., -2.],
                [ 3.,  0.]])
    """
    with torch.no_grad():
        stored, factored = stored_of(weight, spec)
        masks: list[torch.Tensor | None] = [None] * len(stored)
        new_bias, threshold, layouts = bias, None, ()
        if (prune := spec.of_kind(PruneMethod)) is not None:
            method, cfg = prune
            full = weight if factored is None else factored.values
            pruned = method.masks(stored, full, cfg, global_threshold)
            masks, threshold, layouts = pruned.masks, pruned.threshold, method.layouts(cfg)
            if pruned.rows is not None and bias is not None:
                new_bias = bias * pruned.rows
        code = spec.of_kind(CodeMethod)
        tensors, levels = [], None
        for i, (t, mask) in enumerate(zip(stored, masks)):
            c = (code[0].code(t, mask, code[1]) if code is not None
                 else Coded(t if mask is None else t * mask, FLOAT_BITS, 0, "float32"))
            levels = levels if levels is not None else c.levels
            name = "weight" if factored is None else ("weight.first", "weight.second")[i]
            tensors.append(StoredTensor(name, c.values, c.value_bits, c.overhead_bits, c.value_format,
                                        pruned=mask is not None, layouts=layouts if mask is not None else (),
                                        coding=None if code is None else code[0].name, **c.codes))
        if factored is None:
            effective = tensors[0].values
        else:
            effective = factor_product(tensors[0].values, tensors[1].values).reshape(weight.shape)
        return LayerResult(
            weight=effective.to(weight.dtype), bias=new_bias, tensors=tensors,
            rank=None if factored is None else factored.rank,
            singular_values=None if factored is None else factored.singular_values,
            threshold=threshold, levels=levels if factored is None else None, cut=global_threshold,
        )
