"""Structured pruning: remove whole output channels / neurons (dim 0), expressed as masks.

Channels are scored by the Lp norm of their weights (L1 or L2), the lowest-norm
channels are chosen, and the channel mask is broadcast to the weight's full shape.
Semantics match ``torch.nn.utils.prune.ln_structured(dim=0)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pet_core.errors import PetError
from pet_core.methods.magnitude import count_to_prune


@dataclass
class ChannelConfig:
    """Either a ``sparsity`` (fraction of channels removed) or a norm ``threshold``.

    >>> ChannelConfig(sparsity=0.25, norm=2).norm
    2
    """

    sparsity: float | None = None  # fraction of output channels to remove, in [0, 1]
    threshold: float | None = None  # or: remove every channel with norm <= threshold
    norm: int = 1  # 1 -> L1, 2 -> L2

    def __post_init__(self) -> None:
        if (self.sparsity is None) == (self.threshold is None):
            raise PetError("channel pruning needs exactly one of sparsity or threshold")
        if self.sparsity is not None and not 0.0 <= self.sparsity <= 1.0:
            raise PetError(f"channel sparsity must be in [0, 1], got {self.sparsity}")
        if self.threshold is not None and not self.threshold >= 0.0:
            raise PetError(f"channel threshold must be >= 0, got {self.threshold}")
        if self.norm not in (1, 2):
            raise PetError(f"channel norm must be 1 (L1) or 2 (L2), got {self.norm}")


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
    norms = channel_norms(w, cfg.norm)
    if cfg.threshold is not None:
        keep = channels_above(norms, float(cfg.threshold))
    else:
        keep = channels_to_keep(norms, float(cfg.sparsity))
    mask = broadcast_channel_mask(keep, w.shape)
    return w.detach() * mask, mask
