"""Structured pruning: remove whole output channels / neurons (dim 0), expressed as masks.

Channels are scored by the Lp norm of their weights (L1 or L2), the lowest-norm
channels are chosen, and the channel mask is broadcast to the weight's full shape.
Semantics match ``torch.nn.utils.prune.ln_structured(dim=0)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from pet_core.errors import PetError
from pet_core.fields import spec_field
from pet_core.methods.base import Pruned, PruneMethod, StepConfig
from pet_core.methods.magnitude import amount_label, count_to_prune, merge_by_amount, sparsity_field
from pet_core.methods.magnitude import threshold_field

NORMS = {"l1_channel": 1, "l2_channel": 2}


@dataclass(frozen=True)
class ChannelConfig(StepConfig):
    """Either a ``sparsity`` (fraction of channels removed) or a norm ``threshold``; L1 or L2 by method.

    >>> ChannelConfig(method="l2_channel", sparsity=0.25).norm
    2
    """

    STEP: ClassVar[str] = "prune"
    ONE_OF: ClassVar = (("sparsity", "threshold"),)
    method: str = spec_field("l1_channel", "how channels are scored: l1_channel or l2_channel norm",
                             choices=tuple(NORMS), kind=str)
    scope: str = spec_field("global", "accepted for recipes that give it; channel methods always work per layer",
                            choices=("global", "layer"), kind=str, ui=dict(hidden=True))
    sparsity: float | None = sparsity_field()
    threshold: float | None = threshold_field()

    merge = classmethod(merge_by_amount)

    @property
    def norm(self) -> int:
        return NORMS[self.method]


def channel_norms(w: Tensor, norm: int) -> Tensor:
    """Lp norm of each output channel (all dims but 0); returns shape ``(out,)``.

    >>> channel_norms(torch.tensor([[1.0, -2.0], [3.0, 4.0]]), 1)
    tensor([3., 7.])
    """
    if w.dim() == 0:
        raise PetError("channel pruning needs a weight with at least one dimension")
    flat = w.detach().reshape(w.shape[0], -1)  # (out, in_flat)
    return torch.linalg.vector_norm(flat, ord=norm, dim=1)


def channels_to_keep(norms: Tensor, sparsity: float) -> Tensor:
    """Bool mask ``(out,)``: False for the ``count_to_prune(out, sparsity)`` smallest norms.

    Ties are broken by pruning the lowest index first (stable sort).

    >>> channels_to_keep(torch.tensor([3.0, 1.0, 2.0, 4.0]), 0.5)
    tensor([ True, False, False,  True])
    """
    n = norms.numel()
    k = min(count_to_prune(n, sparsity), n)
    keep = torch.ones(n, dtype=torch.bool, device=norms.device)
    if k > 0:
        order = torch.argsort(norms, stable=True)  # ascending; stable -> deterministic ties
        keep[order[:k]] = False
    return keep


def channels_above(norms: Tensor, threshold: float) -> Tensor:
    """Bool mask ``(out,)`` of channels whose norm is strictly above ``threshold``.

    >>> channels_above(torch.tensor([0.5, 2.0]), 1.0)
    tensor([False,  True])
    """
    return norms > threshold


def broadcast_channel_mask(keep: Tensor, shape: torch.Size) -> Tensor:
    """Expand an ``(out,)`` channel mask to a full weight ``shape`` (contiguous copy).

    >>> broadcast_channel_mask(torch.tensor([True, False]), torch.Size([2, 3])).sum()
    tensor(3)
    """
    view = keep.reshape(-1, *([1] * (len(shape) - 1)))  # (out, 1, 1, ...)
    return view.expand(shape).clone()


def channel_prune(w: Tensor, cfg: ChannelConfig) -> tuple[Tensor, Tensor]:
    """Zero whole output channels of ``w``; returns ``(w * mask, mask)``, mask of w's shape.

    >>> w = torch.tensor([[1.0, 1.0], [0.1, 0.1]])
    >>> channel_prune(w, ChannelConfig(sparsity=0.5))[1]
    tensor([[ True,  True],
            [False, False]])
    """
    mask = Channel(cfg.method).masks([w], w, cfg, None).masks[0]
    return w.detach() * mask, mask


class Channel(PruneMethod):
    """L1 or L2 channel pruning; the rows of ``first`` go when the weight is factored."""

    config = ChannelConfig
    structured = True
    example = {"sparsity": 0.5}

    def __init__(self, name: str) -> None:
        self.name = name
        self.summary = f"Remove whole output channels with the smallest L{NORMS[name]} norm."

    def masks(self, stored: list[Tensor], weight: Tensor, cfg: ChannelConfig, threshold: float | None) -> Pruned:
        norms = channel_norms(weight, cfg.norm)                                   # (out,)
        if cfg.threshold is not None:
            threshold, keep = cfg.threshold, channels_above(norms, cfg.threshold)
        else:
            threshold, keep = None, channels_to_keep(norms, cfg.sparsity)
        masks = [broadcast_channel_mask(keep, stored[0].shape)] + [None] * (len(stored) - 1)
        return Pruned(masks, threshold, rows=keep)

    def label(self, cfg: ChannelConfig) -> str:
        return f"{cfg.method} {amount_label(cfg, 'norm')}"
