"""Uniform weight quantization (symmetric or asymmetric, per tensor or per output channel).

Ranges come from the KEPT weights only, so zeros left by pruning do not widen the
range and waste levels; pruned positions come out exactly 0 (code 0).
Codes are the narrowest integer type their width fits (int8 to 7 bits, int16 to 15, int32 for 16).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from pet_core.errors import PetError
from pet_core.fields import spec_field
from pet_core.methods.base import CodeMethod, Coded, Trainable, FloatMask, StepConfig

ALLOWED_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 16)
FLOAT_BITS = 32


@dataclass(frozen=True)
class QuantizeConfig(StepConfig):
    """Bit width, scheme and granularity (per channel = one range per slice along dim 0).

    >>> QuantizeConfig(bits=4, scheme="asymmetric").granularity
    'per_channel'
    """

    STEP: ClassVar[str] = "quantize"
    bits: int = spec_field(8, "bits per weight (uniform levels)", choices=ALLOWED_BITS, kind=int)
    scheme: str = spec_field("symmetric", "symmetric (levels around 0) or asymmetric (min..max with an offset)",
                             choices=("symmetric", "asymmetric"), kind=str)
    granularity: str = spec_field("per_channel", "one scale per output channel or one per tensor",
                                  choices=("per_channel", "per_tensor"), kind=str)


@dataclass
class Quantized:
    """Result of ``quantize``: dequantized values plus everything needed to store them."""

    values: Tensor  # dequantized weights, same shape/dtype as input; pruned positions exactly 0
    codes: Tensor  # integer codes (code_dtype(bits)), same shape; 0 at pruned positions
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
        codes = torch.where(g >= 0, 1, -1).to(torch.int8)
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


MASK_CHUNK = 1 << 20   # elements multiplied by a bool mask at once: its cast to the value type is this big


def times_mask(x: Tensor, keep: Tensor, out: Tensor | None = None) -> Tensor:
    """``x * keep`` (a kept value times 1, a pruned one times 0: ±0.0 as the multiply gives), in
    chunks: torch casts the bool mask to ``x``'s type in a temporary, which for a 38 M-value
    embedding would be one more full copy.

    >>> times_mask(torch.tensor([-2.0, 3.0]), torch.tensor([False, True]))
    tensor([-0., 3.])
    """
    out = torch.empty_like(x) if out is None else out
    flat_x, flat_k, flat_o = x.reshape(-1), keep.reshape(-1), out.view(-1)
    for i in range(0, flat_x.numel(), MASK_CHUNK):
        torch.mul(flat_x[i:i + MASK_CHUNK], flat_k[i:i + MASK_CHUNK], out=flat_o[i:i + MASK_CHUNK])
    return out


def code_dtype(bits: int) -> torch.dtype:
    """The narrowest integer type for ``bits``-bit codes (signed symmetric, or unsigned up to 2^bits - 1).

    >>> code_dtype(4), code_dtype(8), code_dtype(16)
    (torch.int8, torch.int16, torch.int32)
    """
    return torch.int8 if bits <= 7 else torch.int16 if bits <= 15 else torch.int32


def quantize(w: Tensor, cfg: QuantizeConfig, mask: Tensor | None = None) -> Quantized:
    """Quantize ``w`` uniformly; ``mask`` (bool, w's shape) marks kept weights.

    On kept positions ``|values - w| <= step / 2`` (up to float rounding). All groups at once, on
    one contiguous buffer rewritten in place (divide, round, clamp, scale): a transposed weight
    (HF Conv1D) is copied once instead of every operation striding through it.

    >>> q = quantize(torch.tensor([[-1.0, 0.5, 1.0]]), QuantizeConfig(bits=2))
    >>> q.codes, q.values
    (tensor([[-1,  0,  1]], dtype=torch.int8), tensor([[-1.,  0.,  1.]]))
    """
    if mask is not None and mask.shape != w.shape:
        raise PetError(f"mask shape {tuple(mask.shape)} does not match weight shape {tuple(w.shape)}")
    cdt = _compute_dtype(w)
    view = as_groups(w.detach().to(cdt), cfg.granularity)                       # (groups, n)
    g = view.contiguous()
    keep = None if mask is None else as_groups(mask.bool(), cfg.granularity)   # (groups, n)

    offset = None
    if cfg.scheme == "symmetric" and cfg.bits == 1:
        absmax = group_ranges(g, torch.ones_like(g, dtype=torch.bool) if keep is None else keep)[2]
        codes, scale, step = _symmetric(g, 1, absmax)
        values = codes.to(cdt) * scale[:, None]
    elif cfg.scheme == "symmetric":
        qmax = 2 ** (cfg.bits - 1) - 1
        q = g if keep is None else times_mask(g, keep)      # kept values, pruned ones ±0: the same max |w|
        absmax = torch.maximum(q.amin(dim=1).abs_(), q.amax(dim=1).abs_())                # (groups,)
        scale = torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax))          # (groups,)
        q = torch.div(g, scale[:, None], out=None if q is g else q).round_().clamp_(-qmax, qmax)  # codes, as floats
        codes = q.to(code_dtype(cfg.bits))
        values = q.add_(0.0).mul_(scale[:, None])         # + 0.0: a code of -0.0 scales to +0.0, as int 0 does
        step = scale
    else:
        # on the weight's own layout: which of -0.0 and +0.0 is the minimum depends on the order seen
        lo, hi, _ = group_ranges(view, torch.ones_like(view, dtype=torch.bool) if keep is None else keep)
        levels = 2 ** cfg.bits - 1
        span = hi - lo
        scale = torch.where(span > 0, span / levels, torch.ones_like(span))       # (groups,)
        q = (g - lo[:, None]).div_(scale[:, None]).round_().clamp_(0, levels)
        codes = q.to(code_dtype(cfg.bits))
        values = q.add_(0.0).mul_(scale[:, None]).add_(lo[:, None])               # lo + code * scale
        step, offset = scale, lo.to(torch.float32)

    if keep is not None:             # pruned positions: code 0 and value exactly 0 (value * 0.0, as before)
        times_mask(codes, keep, out=codes)
        times_mask(values, keep, out=values)
    return Quantized(
        values=values.reshape(w.shape).to(w.dtype),
        codes=codes.reshape(w.shape),
        scale=scale.to(torch.float32),
        offset=offset,
        step=step.to(torch.float32),
        bits=cfg.bits,
    )


def quant_levels(scale: float, offset: float | None, bits: int) -> list[float]:
    """The values a quantised group can take (symmetric: around 0; asymmetric: offset + k·scale).

    >>> quant_levels(0.5, None, 2)
    [-0.5, 0.0, 0.5]
    """
    if bits > 8:
        return []
    if offset is not None:
        return [offset + k * scale for k in range(2 ** bits)]
    if bits == 1:
        return [-scale, scale]
    qmax = 2 ** (bits - 1) - 1
    return [k * scale for k in range(-qmax, qmax + 1)]


class _SymmetricSTE(torch.autograd.Function):
    """Forward: the masked weight quantised symmetrically (``quantize()``'s values); backward: the
    gradient times the mask (the straight-through estimator of ``FakeQuant``).

    One autograd node and in-place arithmetic on one buffer: ``w * mask``, a max and a min per group,
    then divide, round, scale in place. No clamp: with ``scale = absmax / qmax`` every ``|w| / scale``
    rounds to at most ``qmax``. Pruned entries and kept ones that round to 0 can come out as ``-0.0``;
    adding ``+0.0`` makes them ``+0.0``, so the values are ``quantize()``'s bit for bit.
    """

    @staticmethod
    def forward(ctx, w: Tensor, fmask: Tensor | None, bits: int, granularity: str) -> Tensor:
        qmax = 2 ** (bits - 1) - 1
        w_m = w.detach() if fmask is None else w.detach() * fmask
        g = as_groups(w_m, granularity)                                           # (groups, n)
        absmax = torch.maximum(g.amax(dim=1, keepdim=True), g.amin(dim=1, keepdim=True).neg_())  # (groups, 1)
        scale = torch.where(absmax > 0, absmax / qmax, 1.0)                       # (groups, 1)
        q = g.div_(scale) if fmask is not None else g / scale                    # w_m is ours to change
        ctx.save_for_backward(fmask)
        return q.round_().mul_(scale).add_(0.0).reshape(w.shape)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (fmask,) = ctx.saved_tensors
        return (grad if fmask is None else grad * fmask), None, None, None


class FakeQuant(FloatMask, nn.Module):
    """Masked weight, fake-quantised with a straight-through estimator (STE): QAT's parametrization.

    The forward value is ``quantize(w * mask, cfg, mask).values`` bit for bit (so the baked weight is
    exactly the quantised one and re-quantising it is idempotent); the gradient w.r.t. ``w`` is the
    identity on kept weights and 0 on pruned ones. In general that is written
    ``q + (w_m - w_m.detach())`` (``x - x`` is exactly 0, so the value is ``q``). Symmetric
    quantisation at 2+ bits of float32/float64 weights, the common QAT setting, runs as one fused
    autograd node instead (``_SymmetricSTE``): pruned entries of ``w_m`` are 0, so the absmax over the
    kept entries is the absmax of ``w_m``, and they quantise to 0.
    """

    def __init__(self, cfg: QuantizeConfig, mask: Tensor | None) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("mask", None if mask is None else mask.bool())

    def forward(self, w: Tensor) -> Tensor:
        if self.cfg.scheme == "symmetric" and self.cfg.bits >= 2 and w.dtype in (torch.float32, torch.float64):
            fmask = None if self.mask is None else self.float_mask(w)
            return _SymmetricSTE.apply(w, fmask, self.cfg.bits, self.cfg.granularity)
        w_m = w if self.mask is None else w * self.float_mask(w)
        q = quantize(w_m, self.cfg, self.mask).values     # detached inside quantize()
        return q + (w_m - w_m.detach())


class Quantize(CodeMethod):
    step = "quantize"
    name = "quantize"
    config = QuantizeConfig
    summary = "Round weights to 2**bits uniform levels."
    choice_label = "k-bit levels"
    table_field = "bits"
    example = {"bits": 4}

    def code(self, t: Tensor, mask: Tensor | None, cfg: QuantizeConfig) -> Coded:
        """Levels drawn for per-channel quantisation are those of the widest channel."""
        out = quantize(t, cfg, mask=mask)
        overhead = out.scale.numel() * FLOAT_BITS * (2 if out.offset is not None else 1)
        g = int(torch.argmax(out.scale))
        levels = quant_levels(float(out.scale[g]), None if out.offset is None else float(out.offset[g]), cfg.bits)
        return Coded(out.values, cfg.bits, overhead, f"int{cfg.bits}", levels,
                     dict(codes=out.codes, scale=out.scale, offset=out.offset))

    # packed coding: symmetric codes shifted by 2^(b-1) (1-bit ±1 -> 0/1); asymmetric codes as they
    # are, with an offset per group. Decoding repeats quantize()'s arithmetic: bit-equal values.
    packed_kinds = ("symmetric", "asymmetric")

    def packed_symbols(self, t) -> tuple[str, np.ndarray, bytes, dict]:
        codes = t.codes.detach().reshape(-1).numpy().astype(np.int64)                # (n,)
        overhead = t.scale.to(torch.float32).numpy().tobytes()
        fields = dict(groups=int(t.scale.numel()))
        if t.offset is not None:
            return "asymmetric", codes, overhead + t.offset.to(torch.float32).numpy().tobytes(), fields
        b = t.value_bits
        return "symmetric", (codes + 1) // 2 if b == 1 else codes + (1 << (b - 1)), overhead, fields

    def packed_check(self, kind: str, meta: dict, where: str, n: int, get_int) -> tuple[int, ...]:
        groups = get_int(meta, "groups", where, 1, max(n, 1))
        if n % groups:
            raise PetError(f"manifest: {where}.groups = {groups} does not divide its {n} values")
        get_int(meta, "codebook", where, 0, 0)
        return ALLOWED_BITS

    def packed_overhead(self, kind: str, meta: dict) -> int:
        return 4 * meta["groups"] * (2 if kind == "asymmetric" else 1)

    def packed_decode(self, kind: str, meta: dict, floats: Tensor, symbols: np.ndarray, idx: Tensor,
                      n: int) -> Tensor:
        groups, b = meta["groups"], meta["value_bits"]
        scale = floats[:groups]
        group = idx // (n // groups)                                            # per-channel: rows of n/groups
        codes = torch.from_numpy(symbols.astype(np.int64))
        if kind == "symmetric":
            codes = codes * 2 - 1 if b == 1 else codes - (1 << (b - 1))
            return codes.to(torch.int32).to(torch.float32) * scale[group]
        return floats[groups:][group] + codes.to(torch.int32).to(torch.float32) * scale[group]

    def qat(self, module: nn.Module, cfg: QuantizeConfig, mask: Tensor | None, fixed_masks: bool):
        return Trainable(FakeQuant(cfg, mask), f"fake-quant int{cfg.bits}")

    def label(self, cfg: QuantizeConfig) -> str:
        return f"int{cfg.bits} {cfg.scheme[:3]} {cfg.granularity}"
