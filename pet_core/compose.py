"""Apply a layer's resolved steps to its weights, in one documented order.

Order: **low_rank → prune → quantize | share**.

* ``low_rank`` replaces the weight by two stored factors ``first (out, r)`` and ``second (r, in_flat)``;
  the later steps act on each stored tensor (the weight itself, or both factors).
* ``prune`` (magnitude) zeroes stored values with ``|v| <= threshold``; the threshold comes from the
  layer's own sparsity, the recipe's absolute threshold, or the global threshold shared by all
  layers in global scope. Channel pruning scores the layer's (reconstructed) output channels and
  zeroes those rows of the weight (or of ``first``) and their bias entries.
* ``quantize`` or ``share`` code the kept values only; pruned positions stay exactly zero.

Pure: inputs are never modified; the caller writes ``LayerResult.weight`` into its model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pet_core.methods.channel import broadcast_channel_mask, channel_norms, channels_above, channels_to_keep
from pet_core.methods.low_rank import LowRankConfig, low_rank
from pet_core.methods.magnitude import keep_mask, magnitude_scores, threshold_for_sparsity
from pet_core.methods.quantize import QuantizeConfig, quantize
from pet_core.methods.share import ShareConfig, share
from pet_core.steps import LayerSpec

FLOAT_BITS = 32


@dataclass
class StoredTensor:
    """One tensor as it would be stored: its values and what its encoding needs."""

    name: str                      # "weight", or "weight.first" / "weight.second" when factored
    values: torch.Tensor           # effective values (dequantised, pruned positions exactly 0)
    value_bits: int                # bits per stored value: 32, quantisation bits, or index bits
    overhead_bits: int = 0         # scales, offsets, codebooks
    value_format: str = "float32"  # "float32", "int4", "shared16" ...
    pruned: bool = False           # a pruning mask was applied (zeros are structural)
    # What the packed format stores (None where they do not apply): the int32 codes, values' shape,
    # as quantize()/share() returned them, and the float32 scale/offset (groups,) or codebook (m,).
    codes: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    offset: torch.Tensor | None = None
    codebook: torch.Tensor | None = None


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


def prune_scores(weight: torch.Tensor, spec: LayerSpec) -> list[torch.Tensor]:
    """The magnitude scores that pruning sees for this layer (after low rank): for global thresholds."""
    return [magnitude_scores(t) for t in _factors(weight, spec)[0]]


def _factors(weight: torch.Tensor, spec: LayerSpec):
    if spec.low_rank is None:
        return [weight], None
    f = low_rank(weight, LowRankConfig(rank=spec.low_rank.rank, energy=spec.low_rank.energy))
    return [f.first, f.second], f


MAX_LEVELS_DRAWN = 256


def quant_levels(scale: float, offset: float | None, bits: int) -> list[float]:
    """The values a quantised group can take (symmetric: around 0; asymmetric: offset + k·scale)."""
    if bits > 8:
        return []
    if offset is not None:
        return [offset + k * scale for k in range(2 ** bits)]
    if bits == 1:
        return [-scale, scale]
    qmax = 2 ** (bits - 1) - 1
    return [k * scale for k in range(-qmax, qmax + 1)]


def _code(t: torch.Tensor, mask: torch.Tensor | None, spec: LayerSpec):
    """Quantise or share one stored tensor.

    Returns (values, value_bits, overhead_bits, format, levels, codes): ``codes`` holds the
    StoredTensor fields the packed format needs (empty for float32 values).

    Levels drawn for per-channel quantisation are those of the widest channel.
    """
    if spec.quantize is not None:
        q = spec.quantize
        out = quantize(t, QuantizeConfig(bits=q.bits, scheme=q.scheme, granularity=q.granularity), mask=mask)
        groups = out.scale.numel()
        overhead = groups * FLOAT_BITS * (2 if out.offset is not None else 1)
        g = int(torch.argmax(out.scale))
        levels = quant_levels(float(out.scale[g]), None if out.offset is None else float(out.offset[g]), q.bits)
        codes = dict(codes=out.codes, scale=out.scale, offset=out.offset)
        return out.values, q.bits, overhead, f"int{q.bits}", levels, codes
    if spec.share is not None:
        out = share(t, ShareConfig(clusters=spec.share.clusters), mask=mask)
        m = out.codebook.numel()
        index_bits = max(1, (m - 1).bit_length())
        codes = dict(codes=out.codes, codebook=out.codebook)
        return out.values, index_bits, m * FLOAT_BITS, f"shared{m}", out.codebook.tolist(), codes
    values = t if mask is None else t * mask
    return values, FLOAT_BITS, 0, "float32", None, {}


def compress_layer(weight: torch.Tensor, bias: torch.Tensor | None, spec: LayerSpec,
                   global_threshold: float | None = None) -> LayerResult:
    """Compress one layer's weight (and, for channel pruning, its bias) by ``spec``.

    Args:
        weight: the baseline weight, ``(out, in)`` or ``(out, in, *kernel)``; never modified.
        bias: the baseline bias or None.
        spec: the layer's resolved steps.
        global_threshold: the magnitude threshold when the layer prunes in global scope.

    Example:
        >>> from pet_core.steps import LayerSpec, Prune
        >>> r = compress_layer(torch.tensor([[1., -2.], [3., 0.5]]), None, LayerSpec(prune=Prune(sparsity=0.5)))
        >>> r.weight
        tensor([[ 0., -2.],
                [ 3.,  0.]])
    """
    with torch.no_grad():
        stored, factored = _factors(weight, spec)
        masks: list[torch.Tensor | None] = [None] * len(stored)
        new_bias = bias
        threshold = None
        p = spec.prune
        if p is not None and p.method == "magnitude":
            scores = [magnitude_scores(t) for t in stored]
            if p.threshold is not None:
                threshold = p.threshold
            elif p.scope == "global" and global_threshold is not None:
                threshold = global_threshold
            else:
                threshold = threshold_for_sparsity(torch.cat([s.flatten() for s in scores]), p.sparsity)
            masks = [keep_mask(s, threshold) for s in scores]
        elif p is not None:
            norm = 1 if p.method == "l1_channel" else 2
            full = weight if factored is None else factored.values
            norms = channel_norms(full, norm)                                    # (out,)
            if p.threshold is not None:
                threshold, keep = p.threshold, channels_above(norms, p.threshold)
            else:
                keep = channels_to_keep(norms, p.sparsity)
            masks[0] = broadcast_channel_mask(keep, stored[0].shape)
            if bias is not None:
                new_bias = bias * keep
        tensors, levels = [], None
        for i, (t, mask) in enumerate(zip(stored, masks)):
            values, bits, overhead, fmt, levels_i, codes = _code(t, mask, spec)
            levels = levels if levels is not None else levels_i
            name = "weight" if factored is None else ("weight.first", "weight.second")[i]
            tensors.append(StoredTensor(name, values, bits, overhead, fmt, pruned=mask is not None, **codes))
        if factored is None:
            effective = tensors[0].values
        else:
            effective = factor_product(tensors[0].values, tensors[1].values).reshape(weight.shape)
        return LayerResult(
            weight=effective.to(weight.dtype), bias=new_bias, tensors=tensors,
            rank=None if factored is None else factored.rank,
            singular_values=None if factored is None else factored.singular_values,
            threshold=threshold, levels=levels if factored is None else None,
        )
