"""Uniform weight quantization (symmetric or asymmetric, per tensor or per output channel).

Ranges come from the KEPT weights only, so zeros left by pruning do not widen the
range and waste levels; pruned positions come out exactly 0 (code 0).
Codes are int32 so that 16-bit quantization fits as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pet_core.errors import PetError

ALLOWED_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 16)
SCHEMES = ("symmetric", "asymmetric")
GRANULARITIES = ("per_tensor", "per_channel")


@dataclass
class QuantizeConfig:
    """Bit width, scheme and granularity (per channel = one range per slice along dim 0).

    >>> QuantizeConfig(bits=4, scheme="asymmetric").granularity
    'per_channel'
    """

    bits: int = 8
    scheme: str = "symmetric"
    granularity: str = "per_channel"

    def __post_init__(self) -> None:
        if self.bits not in ALLOWED_BITS:
            raise PetError(f"quantization bits must be 1..8 or 16, got {self.bits}")
        if self.scheme not in SCHEMES:
            raise PetError(f"quantization scheme must be one of {', '.join(SCHEMES)}, got {self.scheme!r}")
        if self.granularity not in GRANULARITIES:
            raise PetError(
                f"quantization granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}"
            )


@dataclass
class Quantized:
    """Result of ``quantize``: dequantized values plus everything needed to store them."""

    values: Tensor  # dequantized weights, same shape/dtype as input; pruned positions exactly 0
    codes: Tensor  # int32 codes, same shape; 0 at pruned positions
    scale: Tensor  # (groups,) float32
    offset: Tensor | None  # (groups,) float32 group minimum for asymmetric, None for symmetric
    step: Tensor  # (groups,) float32 distance between adjacent levels
    bits: int


def _compute_dtype(w: Tensor) -> torch.dtype:
    # half / bfloat16 weights are quantized in float32 so the error bound holds
    return torch.float64 if w.dtype == torch.float64 else torch.float32


def as_groups(w: Tensor, granularity: str) -> Tensor:
    """View ``w`` as ``(groups, n)``: one row per tensor or per output channel.

    >>> as_groups(torch.zeros(4, 3, 2), "per_channel").shape
    torch.Size([4, 6])
    """
    if granularity == "per_tensor" or w.dim() == 0:
        return w.reshape(1, -1)
    return w.reshape(w.shape[0], -1)


def group_ranges(g: Tensor, keep: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-group ``(lo, hi, absmax)`` over kept entries only; groups with none kept get 0s.

    >>> group_ranges(torch.tensor([[1.0, -5.0, 2.0]]), torch.tensor([[True, False, True]]))
    (tensor([1.]), tensor([2.]), tensor([2.]))
    """
    inf = torch.tensor(float("inf"), dtype=g.dtype)
    lo = torch.where(keep, g, inf).amin(dim=1)  # (groups,)
    hi = torch.where(keep, g, -inf).amax(dim=1)  # (groups,)
    empty = ~keep.any(dim=1)
    lo = torch.where(empty, torch.zeros_like(lo), lo)
    hi = torch.where(empty, torch.zeros_like(hi), hi)
    absmax = torch.maximum(lo.abs(), hi.abs())
    return lo, hi, absmax


def _symmetric(g: Tensor, bits: int, absmax: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Return (codes, scale, step) for symmetric quantization of groups ``g`` (groups, n)."""
    if bits == 1:
        # two levels +-absmax/2 (no zero level): the sign picks the level
        codes = torch.where(g >= 0, 1, -1).to(torch.int32)
        scale = absmax / 2
        return codes, scale, absmax
    qmax = 2 ** (bits - 1) - 1
    scale = torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax))  # (groups,)
    codes = torch.clamp(torch.round(g / scale[:, None]), -qmax, qmax).to(torch.int32)
    return codes, scale, scale


def _asymmetric(g: Tensor, bits: int, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Return (codes, scale) for asymmetric quantization; levels are lo + code * scale."""
    levels = 2**bits - 1
    span = hi - lo
    scale = torch.where(span > 0, span / levels, torch.ones_like(span))  # (groups,)
    codes = torch.clamp(torch.round((g - lo[:, None]) / scale[:, None]), 0, levels).to(torch.int32)
    return codes, scale


def quantize(w: Tensor, cfg: QuantizeConfig, mask: Tensor | None = None) -> Quantized:
    """Quantize ``w`` uniformly; ``mask`` (bool, w's shape) marks kept weights.

    On kept positions ``|values - w| <= step / 2`` (up to float rounding).

    >>> q = quantize(torch.tensor([[-1.0, 0.5, 1.0]]), QuantizeConfig(bits=2))
    >>> q.codes, q.values
    (tensor([[-1,  0,  1]], dtype=torch.int32), tensor([[-1.,  0.,  1.]]))
    """
    if mask is not None and mask.shape != w.shape:
        raise PetError(f"mask shape {tuple(mask.shape)} does not match weight shape {tuple(w.shape)}")
    cdt = _compute_dtype(w)
    g = as_groups(w.detach().to(cdt), cfg.granularity)  # (groups, n)
    keep = torch.ones_like(g, dtype=torch.bool) if mask is None else as_groups(mask.bool(), cfg.granularity)
    lo, hi, absmax = group_ranges(g, keep)

    if cfg.scheme == "symmetric":
        codes, scale, step = _symmetric(g, cfg.bits, absmax)
        values = codes.to(cdt) * scale[:, None]
        offset = None
    else:
        codes, scale = _asymmetric(g, cfg.bits, lo, hi)
        values = lo[:, None] + codes.to(cdt) * scale[:, None]
        step = scale
        offset = lo.to(torch.float32)

    # pruned positions: exactly zero value and code 0
    codes = torch.where(keep, codes, torch.zeros_like(codes))
    values = values * keep
    return Quantized(
        values=values.reshape(w.shape).to(w.dtype),
        codes=codes.reshape(w.shape),
        scale=scale.to(torch.float32),
        offset=offset,
        step=step.to(torch.float32),
        bits=cfg.bits,
    )
