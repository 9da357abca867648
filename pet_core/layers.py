"""Which modules are compressible, and why the others are skipped."""

from __future__ import annotations

import torch
from torch import nn

COMPRESSIBLE_TYPES = ("Linear", "Conv1d", "Conv2d")
COMPRESSIBLE_CLASSES = (nn.Linear, nn.Conv1d, nn.Conv2d)   # subclasses too: MultiheadAttention's out_proj
SKIP_REASONS = {
    "BatchNorm1d": "per-channel affine (2 values a channel): kept at fp32, folded into the conv on export",
    "BatchNorm2d": "per-channel affine (2 values a channel): kept at fp32, folded into the conv on export",
    "LayerNorm": "per-feature affine: kept at fp32",
    "Embedding": "not supported yet: kept at fp32",
    "ConvTranspose2d": "not supported yet: kept at fp32",
    "Conv3d": "not supported yet: kept at fp32",
}


def module_type(module: nn.Module) -> str:
    """The class name, also for TorchScript modules (which keep it as ``original_name``)."""
    if isinstance(module, torch.jit.ScriptModule):
        return getattr(module, "original_name", type(module).__name__)
    return type(module).__name__


def is_compressible(module: nn.Module) -> bool:
    """A Linear or Conv1d/2d with a weight: by class (subclasses included), or by TorchScript's
    original class name."""
    kind = isinstance(module, COMPRESSIBLE_CLASSES) or module_type(module) in COMPRESSIBLE_TYPES
    return kind and isinstance(getattr(module, "weight", None), torch.Tensor)


def compressible_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Linear and Conv1d/2d modules (and their subclasses) with a weight, by qualified name, in model order."""
    return {name: m for name, m in model.named_modules() if name and is_compressible(m)}


def layer_bias(module: nn.Module) -> torch.Tensor | None:
    """A layer's bias, or None: also for TorchScript modules, which drop a ``bias=None`` attribute."""
    return getattr(module, "bias", None)


def own_tensors(module: nn.Module, skip: tuple[str, ...] = ()) -> list[torch.Tensor]:
    """Parameters and buffers held directly by ``module`` (not its children), minus ``skip``."""
    params = [t for n, t in module.named_parameters(recurse=False) if n not in skip]
    buffers = [t for n, t in module.named_buffers(recurse=False) if n not in skip]
    return params + buffers


def skipped_layers(model: nn.Module) -> list[dict]:
    """Modules that own tensors but are not compressed, with the reason."""
    rows = []
    layers = compressible_layers(model)
    for name, m in model.named_modules():
        if name in layers or not own_tensors(m):
            continue
        kind = module_type(m)
        reason = SKIP_REASONS.get(kind, "not a Linear/Conv layer: kept at its stored precision")
        rows.append(dict(name=name or "(model)", type=kind, reason=reason))
    return rows
