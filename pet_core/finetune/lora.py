"""LoRA (Hu et al. 2021): frozen layers plus trainable low-rank updates ``(alpha/r)·B·A``.

Our own small module rather than ``peft``: peft requires ``transformers`` and ``accelerate`` as hard
dependencies, far too heavy for adapting the Linear/Conv2d layers of small custom models.

Typical use::

    names = add_lora(model, Lora(rank=4, alpha=8.0, layers="*"))   # model is now frozen + adapters
    ...train...                                                  # only lora_A / lora_B change
    plain = merge_lora(model)                                    # W + scale·B·A, no wrappers
"""

from __future__ import annotations

import copy
import math
from fnmatch import fnmatch

import torch
from torch import nn

from pet_core.errors import PetError
from pet_core.finetune.config import Lora


class LoRALinear(nn.Module):
    """``base(x) + (alpha/r)·x·Aᵀ·Bᵀ`` around a frozen ``nn.Linear`` (which may be parametrized).

    A (r, in) starts kaiming-uniform, B (out, r) starts at zero, so the wrapper begins as the base.

    >>> LoRALinear(nn.Linear(64, 10), rank=4, alpha=8.0)(torch.randn(2, 64)).shape
    torch.Size([2, 10])
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator | None = None):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.rank, self.scale = rank, alpha / rank
        like = dict(device=base.weight.device, dtype=base.weight.dtype)
        a = torch.empty(rank, base.in_features)                                   # (r, in)
        # a = √5: the init nn.Linear uses, so A's outputs start at the scale of a fresh layer;
        # drawn on the CPU, where the seeded generator lives, then moved next to the base
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        self.lora_A = nn.Parameter(a.to(**like))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **like))  # (out, r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (…, in) @ (in, r) @ (r, out): never builds the (out, in) product
        return self.base(x) + self.scale * (x @ self.lora_A.t() @ self.lora_B.t())

    def delta_weight(self) -> torch.Tensor:
        """``scale·B·A``, shaped like the base weight (out, in)."""
        return self.scale * (self.lora_B @ self.lora_A)


class LoRAConv2d(nn.Module):
    """``base(x) + (alpha/r)·B(A(x))`` around a frozen ``nn.Conv2d`` with ``groups == 1``.

    A is a bias-free conv (in → r) with the base's kernel, stride, padding and dilation; B is a 1×1
    conv (r → out) that starts at zero. A 1×1 B keeps the pair a single linear map of the input
    patch, so it merges exactly into the base kernel.

    >>> LoRAConv2d(nn.Conv2d(3, 8, 3, padding=1), rank=2, alpha=4.0)(torch.randn(1, 3, 5, 5)).shape
    torch.Size([1, 8, 5, 5])
    """

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float, generator: torch.Generator | None = None):
        super().__init__()
        if base.groups != 1:
            raise PetError(f"LoRA: grouped convolutions (groups = {base.groups}) are not supported")
        self.base = base.requires_grad_(False)
        self.rank, self.scale = rank, alpha / rank
        like = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding,
                                base.dilation, groups=1, bias=False, padding_mode=base.padding_mode)
        self.lora_B = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5), generator=generator)  # on the CPU
        nn.init.zeros_(self.lora_B.weight)
        self.lora_A.to(**like)
        self.lora_B.to(**like)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.lora_B(self.lora_A(x))

    def delta_weight(self) -> torch.Tensor:
        """``scale·B·A`` as a kernel shaped like the base weight (out, in, kh, kw)."""
        a = self.lora_A.weight.reshape(self.rank, -1)      # (r, in·kh·kw)
        b = self.lora_B.weight.reshape(-1, self.rank)      # (out, r, 1, 1) -> (out, r)
        return self.scale * (b @ a).reshape(self.base.weight.shape)


LORA_WRAPPERS = (LoRALinear, LoRAConv2d)


def lora_targets(model: nn.Module, pattern: str) -> tuple[list[str], dict[str, str]]:
    """Layers whose qualified name matches the glob: (names to wrap, {skipped name: reason}).

    Layers already inside a LoRA wrapper are left out, so adding adapters twice does not nest them.

    >>> lora_targets(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), "*")
    (['0', '2'], {})
    """
    wrapped = [name for name, m in model.named_modules() if isinstance(m, LORA_WRAPPERS)]
    targets, skipped = [], {}
    for name, module in model.named_modules():
        if not name or not isinstance(module, (nn.Linear, nn.Conv2d)) or not fnmatch(name, pattern):
            continue
        if any(name.startswith(w + ".") for w in wrapped):
            continue
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            skipped[name] = f"grouped convolution (groups = {module.groups}): no adapter"
            continue
        targets.append(name)
    return targets, skipped


def add_lora(model: nn.Module, cfg: Lora, seed: int = 0) -> list[str]:
    """Freeze every parameter, then wrap each matching Linear/Conv2d in place; returns the names.

    Layers skipped (grouped convs) are recorded with their reason in ``model.lora_skipped``.
    Adapters are initialised from one generator seeded with ``seed``, in model order.

    >>> m = nn.Sequential(nn.Flatten(), nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 10))
    >>> add_lora(m, Lora(rank=4, alpha=8.0, layers="*"))
    ['1', '3']
    """
    targets, skipped = lora_targets(model, cfg.layers)
    if not targets:
        why = f" (skipped: {'; '.join(f'{n}: {r}' for n, r in skipped.items())})" if skipped else ""
        raise PetError(f"finetune.techniques.lora.layers = '{cfg.layers}' matches no Linear or Conv2d layer{why}")
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    for name in targets:
        parent, attr = _parent(model, name)
        base = getattr(parent, attr)
        wrapper = LoRALinear if isinstance(base, nn.Linear) else LoRAConv2d
        setattr(parent, attr, wrapper(base, cfg.rank, cfg.alpha, generator))
    model.lora_skipped = skipped
    return targets


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module that owns ``name`` as an attribute, and the attribute."""
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts.

    >>> trainable_parameters(nn.Linear(3, 2))
    (8, 8)
    """
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _adapters(model: nn.Module):
    """(qualified name, parameter) for every adapter parameter, in model order."""
    for name, module in model.named_modules():
        if isinstance(module, LORA_WRAPPERS):
            for pname, p in module.named_parameters():
                if not pname.startswith("base."):
                    yield f"{name}.{pname}" if name else pname, p


def lora_parameter_count(model: nn.Module) -> int:
    """Number of adapter values: r·(in + out) per Linear, r·in·kh·kw + out·r per Conv2d.

    >>> lora_parameter_count(LoRALinear(nn.Linear(64, 10), rank=4, alpha=8.0))
    296
    """
    return sum(p.numel() for _, p in _adapters(model))


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights only (detached copies), keyed like ``model.state_dict()``.

    >>> sorted(lora_state_dict(LoRALinear(nn.Linear(4, 2), rank=1, alpha=1.0)))
    ['lora_A', 'lora_B']
    """
    return {name: p.detach().clone() for name, p in _adapters(model)}


def merge_lora(model: nn.Module) -> nn.Module:
    """A deep copy with every wrapper replaced by a plain layer of weight ``W + scale·B·A``.

    W is the base's effective weight (its parametrizations, e.g. a pruning mask, applied), so the
    merged model computes the same outputs as the adapter model; note the update is dense, so a
    pruned base is no longer sparse after merging. The merged layers are frozen, like the rest.

    >>> m = nn.Sequential(nn.Linear(4, 3)); _ = add_lora(m, Lora(rank=2, alpha=2.0))
    >>> type(merge_lora(m)[0]).__name__
    'Linear'
    """
    merged = copy.deepcopy(model)
    if isinstance(merged, LORA_WRAPPERS):
        return _merged_layer(merged)
    names = [name for name, m in merged.named_modules() if isinstance(m, LORA_WRAPPERS)]
    for name in names:
        parent, attr = _parent(merged, name)
        setattr(parent, attr, _merged_layer(getattr(parent, attr)))
    return merged


@torch.no_grad()
def _merged_layer(wrapper: nn.Module) -> nn.Module:
    """The plain Linear/Conv2d equivalent of one wrapper."""
    base = wrapper.base
    weight = base.weight + wrapper.delta_weight()        # effective weight when parametrized
    bias = base.bias                                    # likewise
    like = dict(device=weight.device, dtype=weight.dtype)
    if isinstance(wrapper, LoRALinear):
        layer = nn.Linear(base.in_features, base.out_features, bias=bias is not None, **like)
    else:
        layer = nn.Conv2d(base.in_channels, base.out_channels, base.kernel_size, base.stride, base.padding,
                          base.dilation, base.groups, bias=bias is not None, padding_mode=base.padding_mode,
                          **like)
    layer.weight.copy_(weight)
    if bias is not None:
        layer.bias.copy_(bias)
    return layer.requires_grad_(False)
