"""Compression kept during training, as ``torch.nn.utils.parametrize`` parametrizations.

Each compressible layer's ``weight`` (and, for channel-pruned layers, its ``bias``) is replaced by a
function of a trainable tensor, so every forward pass during training sees the compressed weight:

* ``Masked``: ``w * mask``; pruned weights are exactly 0 at every step (their gradient is 0 too).
* ``FakeQuant``: the masked weight quantised by the SAME ``quantize()`` as the post-training path,
  with a straight-through estimator, so the trained forward equals what re-compression yields.
* ``SharedCentroids``: Deep Compression centroid fine-tuning (Han et al. 2016): the trainable
  tensor is the codebook ``(m,)``; ``codebook[codes]`` sums each cluster's gradients into its centroid.

``bake`` removes the parametrizations and keeps the effective (compressed) weights.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from pet_core.compose import LayerResult
from pet_core.layers import compressible_layers
from pet_core.methods.quantize import QuantizeConfig, as_groups, quantize
from pet_core.methods.share import ShareConfig, share
from pet_core.steps import LayerSpec


class _FloatMask:
    """The bool ``mask`` buffer as a float tensor of the weight's dtype, cached.

    ``w * bool_mask`` promotes the mask on every call (measured ~9x slower than ``w * float_mask``
    for a 700k-weight layer). The cache is rebuilt whenever the mask changes: a new tensor
    (``.to()``, ``deepcopy``) or an in-place write (``set_mask``, ``load_state_dict``) bumps
    ``data_ptr`` or ``_version``.
    """

    _fmask: Tensor | None = None
    _fkey: tuple | None = None

    def float_mask(self, like: Tensor) -> Tensor:
        m = self.mask
        key = (m.data_ptr(), m._version, m.device, like.dtype)
        if self._fkey != key or self._fmask is None:
            self._fmask = m.to(like.dtype)
            self._fkey = key
        return self._fmask


class Masked(_FloatMask, nn.Module):
    """``w * mask``; the mask is a buffer so it is saved in checkpoints and can grow (gradual)."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.bool())

    def forward(self, w: Tensor) -> Tensor:
        return w * self.float_mask(w)


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


class FakeQuant(_FloatMask, nn.Module):
    """Masked weight, fake-quantised with a straight-through estimator (STE).

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


class SharedCentroids(nn.Module):
    """``codebook[codes] * mask`` from a trainable codebook ``(m,)``; codes and mask are buffers."""

    def __init__(self, codes: Tensor, mask: Tensor | None, clusters: int) -> None:
        super().__init__()
        self.clusters = clusters
        self.register_buffer("codes", codes.long())                  # weight's shape, values in [0, m)
        self.register_buffer("mask", None if mask is None else mask.bool())

    def forward(self, codebook: Tensor) -> Tensor:
        values = codebook[self.codes]                                 # (weight shape)
        return values if self.mask is None else values * self.mask

    def right_inverse(self, w: Tensor) -> Tensor:
        """The codebook that best reproduces ``w``: each cluster's mean over its kept positions."""
        keep = torch.ones_like(w, dtype=torch.bool) if self.mask is None else self.mask
        codes, values = self.codes[keep], w.detach()[keep]          # (kept,)
        m = self.clusters
        sums = torch.zeros(m, dtype=w.dtype, device=w.device).index_add_(0, codes, values)
        counts = torch.bincount(codes, minlength=m).clamp(min=1).to(w.dtype)
        return sums / counts                                          # (m,)


def _channel_rows(mask: Tensor) -> Tensor:
    """Output channels (dim 0) with any kept weight: the bias mask of a channel-pruned layer."""
    return mask.reshape(mask.shape[0], -1).any(dim=1)


def attach(model: nn.Module, specs: dict[str, LayerSpec], results: dict[str, LayerResult | None], *,
           qat: bool, masks: dict[str, Tensor] | None = None, fixed_masks: bool = True) -> dict[str, str]:
    """Register the parametrizations that keep ``specs`` in force while ``model`` trains (in place).

    Args:
        model: the model to train; its compressible layers' weights are the starting point.
        specs: each layer's resolved steps (``Workbench.specs``).
        results: the post-training results (``Workbench.result``), for the low-rank descriptions.
        qat: fake-quantise (quantize) or fine-tune centroids (share); else masked fp32 training,
            and the recipe's quantize/share is applied again after training.
        masks: prune masks by layer. None: taken as ``weight != 0`` for every pruned layer (right for
            a pruned fp32 copy; a quantised copy also has zeros where kept weights rounded to 0).
            A dict: only the layers in it are masked.
        fixed_masks: False when the masks change during training (gradual, lottery): shared layers
            then train masked fp32 weights, because their codes are tied to one mask.

    Returns:
        {layer: what was attached}, e.g. ``"mask + fake-quant int3"`` or ``"frozen (low rank r=8)"``.
    """
    layers = compressible_layers(model)
    attached: dict[str, str] = {}
    for name, spec in specs.items():
        module = layers[name]
        if spec.is_identity:
            continue
        if spec.low_rank is not None:
            # the factors are not trainable tensors of this model: keep the compressed weight as it is
            for p in module.parameters(recurse=False):
                p.requires_grad_(False)
            result = results.get(name)
            rank = f" r={result.rank}" if result is not None and result.rank is not None else ""
            attached[name] = f"frozen (low rank{rank})"
            continue
        mask = None
        if spec.prune is not None:
            mask = (module.weight.detach() != 0) if masks is None else masks.get(name)
        what = [] if mask is None else ["mask"]
        if qat and spec.quantize is not None:
            q = spec.quantize
            cfg = QuantizeConfig(bits=q.bits, scheme=q.scheme, granularity=q.granularity)
            parametrize.register_parametrization(module, "weight", FakeQuant(cfg, mask))
            what.append(f"fake-quant int{q.bits}")
        elif qat and spec.share is not None and fixed_masks:
            with torch.no_grad():
                s = share(module.weight, ShareConfig(clusters=spec.share.clusters), mask)
            m = s.codebook.numel()
            parametrize.register_parametrization(module, "weight", SharedCentroids(s.codes, mask, m), unsafe=True)
            with torch.no_grad():   # start exactly at the post-training codebook
                module.parametrizations.weight.original.copy_(s.codebook.to(module.weight.dtype))
            what.append(f"shared centroids ({m})")
        elif mask is not None:
            parametrize.register_parametrization(module, "weight", Masked(mask))
        if mask is not None and spec.prune.method != "magnitude" and module.bias is not None:
            parametrize.register_parametrization(module, "bias", Masked(_channel_rows(mask)))
            what.append("bias mask")
        if (spec.quantize or spec.share) and not any(w.startswith(("fake", "shared")) for w in what):
            what.append(f"fp32 ({'quantize' if spec.quantize else 'share'} applied after training)")
        if what:
            attached[name] = " + ".join(what)
    return attached


def weight_parametrization(module: nn.Module) -> nn.Module | None:
    """The parametrization on ``module.weight`` (Masked, FakeQuant, SharedCentroids) or None."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    return module.parametrizations.weight[0]


def latent_weight(module: nn.Module) -> Tensor:
    """The masked trainable weight before quantisation: what magnitude pruning should score.

    (Scoring the fake-quantised weight would tie many weights on one level.)
    """
    p = weight_parametrization(module)
    if p is None or isinstance(p, SharedCentroids):
        return module.weight.detach()
    w = module.parametrizations.weight.original.detach()
    return w if p.mask is None else w * p.mask


def set_mask(module: nn.Module, mask: Tensor) -> None:
    """Replace a layer's prune mask in place (its bias mask too, for channel masks)."""
    p = weight_parametrization(module)
    p.mask.copy_(mask)
    if parametrize.is_parametrized(module, "bias"):
        module.parametrizations.bias[0].mask.copy_(_channel_rows(mask))


def bake(model: nn.Module) -> nn.Module:
    """Remove every parametrization, keeping the effective weights (in place; returns ``model``)."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for tensor_name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
    return model
