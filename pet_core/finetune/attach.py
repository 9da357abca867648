"""Compression kept during training, as ``torch.nn.utils.parametrize`` parametrizations.

Each compressible layer's ``weight`` (and, for channel-pruned layers, its ``bias``) is replaced by a
function of a trainable tensor, so every forward pass during training sees the compressed weight:

* ``Masked``: ``w * mask``; pruned weights are exactly 0 at every step (their gradient is 0 too).
* a coding method's own parametrization under QAT (``CodeMethod.qat``): quantize's ``FakeQuant``
  (the same ``quantize()`` as post-training, with a straight-through estimator), share's
  ``SharedCentroids`` (Deep Compression centroid fine-tuning).

``bake`` removes the parametrizations and keeps the effective (compressed) weights.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from pet_core.layers import compressible_layers, layer_bias
from pet_core.methods.base import CodeMethod, FactorMethod, FloatMask, PruneMethod
from pet_core.pipeline import LayerResult
from pet_core.steps import LayerSpec


class Masked(FloatMask, nn.Module):
    """``w * mask``; the mask is a buffer so it is saved in checkpoints and can grow (gradual)."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.bool())

    def forward(self, w: Tensor) -> Tensor:
        return w * self.float_mask(w)


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
        if spec.of_kind(FactorMethod) is not None:
            # the factors are not trainable tensors of this model: keep the compressed weight as it is
            for p in module.parameters(recurse=False):
                p.requires_grad_(False)
            result = results.get(name)
            rank = f" r={result.rank}" if result is not None and result.rank is not None else ""
            attached[name] = f"frozen (low rank{rank})"
            continue
        prune, code = spec.of_kind(PruneMethod), spec.of_kind(CodeMethod)
        mask = None
        if prune is not None:
            mask = (module.weight.detach() != 0) if masks is None else masks.get(name)
        what = [] if mask is None else ["mask"]
        trainable = code[0].qat(module, code[1], mask, fixed_masks) if (qat and code is not None) else None
        if trainable is not None:
            unsafe = trainable.start is not None          # the trained tensor is not the weight (a codebook)
            parametrize.register_parametrization(module, "weight", trainable.parametrization, unsafe=unsafe)
            if unsafe:
                with torch.no_grad():   # start exactly at the post-training value
                    module.parametrizations.weight.original.copy_(trainable.start.to(module.weight.dtype))
            what.append(trainable.description)
        elif mask is not None:
            parametrize.register_parametrization(module, "weight", Masked(mask))
        if mask is not None and prune[0].structured and layer_bias(module) is not None:
            parametrize.register_parametrization(module, "bias", Masked(_channel_rows(mask)))
            what.append("bias mask")
        if code is not None and trainable is None:
            what.append(f"fp32 ({code[0].name} applied after training)")
        if what:
            attached[name] = " + ".join(what)
    return attached


def weight_parametrization(module: nn.Module) -> nn.Module | None:
    """The parametrization on ``module.weight`` (Masked, or a coding method's QAT one) or None."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    return module.parametrizations.weight[0]


def latent_weight(module: nn.Module) -> Tensor:
    """The masked trainable weight before quantisation: what magnitude pruning should score.

    (Scoring the fake-quantised weight would tie many weights on one level.)
    """
    p = weight_parametrization(module)
    w = None if p is None else module.parametrizations.weight.original.detach()
    if w is None or w.shape != module.weight.shape:        # a trained codebook, not a weight
        return module.weight.detach()
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
