"""Which tensors are compressible ("targets"), and why the others are skipped.

A target is a parameter of two or more dimensions that a known operation uses as a weight:
``nn.Linear`` and its subclasses (MultiheadAttention's ``out_proj``), ``Conv1d/2d/3d`` and the
transposed convs, Hugging Face's ``Conv1D`` (GPT-2; its weight is stored ``(in, out)``),
``Embedding``/``EmbeddingBag`` (one row per token), and MultiheadAttention's packed
``in_proj_weight``. The engine always sees a target's weight in the canonical layout
``(out, in, *kernel)`` (rows = output channels, or embedding rows); :meth:`Target.write` stores it
back in the module's own layout.

Tied tensors (GPT-2's ``lm_head.weight`` *is* ``transformer.wte.weight``) are found by storage:
the first module in model order owns the target; the others are listed in ``Target.tied`` and are
never compressed or counted on their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# TorchScript keeps only class names (``original_name``); the swapped flag: dims 0 and 1 stored swapped
SCRIPTED_KINDS = {"Linear": False, "Conv1d": False, "Conv2d": False, "Conv3d": False, "Embedding": False,
                  "ConvTranspose1d": True, "ConvTranspose2d": True, "ConvTranspose3d": True, "Conv1D": True}
COMPRESSIBLE_CLASSES = (nn.Linear, nn.Conv1d, nn.Conv2d)   # fine-tuning's layers: subclasses too
SKIP_REASONS = {
    "BatchNorm1d": "per-channel affine (2 values a channel): kept at fp32, folded into the conv on export",
    "BatchNorm2d": "per-channel affine (2 values a channel): kept at fp32, folded into the conv on export",
    "LayerNorm": "per-feature affine: kept at fp32",
}


def module_type(module: nn.Module) -> str:
    """The class name, also for TorchScript modules (which keep it as ``original_name``)."""
    if isinstance(module, torch.jit.ScriptModule):
        return getattr(module, "original_name", type(module).__name__)
    return type(module).__name__


def storage_key(t: torch.Tensor) -> tuple:
    """Two tensors with the same key are one tensor in memory (tied weights)."""
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


@dataclass(eq=False)
class Target:
    """One compressible weight tensor of a model, seen in the canonical ``(out, in, *kernel)`` layout."""

    name: str                  # the recipe's and the table's name: the module path, "<mha>.in_proj" for MHA
    module: nn.Module          # the module holding the parameter
    path: str                  # the module's qualified name
    weight_attr: str = "weight"
    bias_attr: str | None = "bias"
    type: str = ""             # "Linear", "Conv2d", "Conv1D", "Embedding", "MultiheadAttention.in_proj" ...
    swapped: bool = False      # stored with dims 0 and 1 swapped (HF Conv1D (in, out), transposed convs)
    tied: tuple[str, ...] = ()  # other modules' names for the same tensor

    @property
    def parameter(self) -> torch.Tensor:
        return getattr(self.module, self.weight_attr)

    @property
    def weight(self) -> torch.Tensor:
        """The weight, detached, in the canonical layout (a view, no copy)."""
        w = self.parameter.detach()
        return w.transpose(0, 1) if self.swapped else w

    @property
    def bias(self) -> torch.Tensor | None:
        b = getattr(self.module, self.bias_attr, None) if self.bias_attr else None
        return b.detach() if isinstance(b, torch.Tensor) else None

    @property
    def state_key(self) -> str:
        """The weight's key in ``model.state_dict()``."""
        return f"{self.path}.{self.weight_attr}" if self.path else self.weight_attr

    @property
    def bias_key(self) -> str | None:
        if self.bias is None:
            return None
        return f"{self.path}.{self.bias_attr}" if self.path else self.bias_attr

    def covered(self) -> list[torch.Tensor]:
        """The module's tensors this target stands for: its weight and its bias."""
        return [self.parameter] + ([] if self.bias is None else [getattr(self.module, self.bias_attr)])

    @torch.no_grad()
    def write(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, adopt: bool = False) -> None:
        """Put a canonical-layout weight (and bias) into the module.

        ``adopt``: the parameter takes ``weight``'s storage (no copy; a swapped layout becomes a
        transposed view of it, which matmuls read as they are). The caller must own ``weight``:
        never a baseline tensor. Otherwise the values are copied into the parameter in place.
        """
        param = self.parameter
        if adopt and weight.dtype == param.dtype and weight.device == param.device:
            param.data = weight.transpose(0, 1) if self.swapped else weight
        else:
            param.copy_(weight.transpose(0, 1) if self.swapped else weight)
        if bias is not None and self.bias is not None:
            getattr(self.module, self.bias_attr).copy_(bias)


def _module_targets(path: str, m: nn.Module) -> list[Target]:
    """The targets a module holds directly (its own parameters, not its children's)."""
    kind = module_type(m)
    if isinstance(m, nn.MultiheadAttention) or kind == "MultiheadAttention":
        if isinstance(getattr(m, "in_proj_weight", None), torch.Tensor):
            return [Target(f"{path}.in_proj", m, path, "in_proj_weight", "in_proj_bias",
                           "MultiheadAttention.in_proj")]
        return [Target(f"{path}.{p}", m, path, f"{p}_weight", None, f"MultiheadAttention.{p}")
                for p in ("q_proj", "k_proj", "v_proj") if isinstance(getattr(m, f"{p}_weight", None), torch.Tensor)]
    weight = getattr(m, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        return []
    if isinstance(m, (nn.Linear, nn.Embedding, nn.EmbeddingBag)):
        swapped = False
    elif isinstance(m, nn.modules.conv._ConvNd):
        swapped = bool(m.transposed)
    elif kind in SCRIPTED_KINDS:       # TorchScript modules, and HF's Conv1D (weight (in, out))
        swapped = SCRIPTED_KINDS[kind]
    else:
        return []
    return [Target(path, m, path, "weight", "bias", kind, swapped)]


def targets(model: nn.Module) -> dict[str, Target]:
    """Every compressible weight tensor by name, in model order; a tied tensor once, at its first user."""
    out: dict[str, Target] = {}
    owner: dict[tuple, Target] = {}
    for path, m in model.named_modules(remove_duplicate=False):
        if not path:
            continue
        for t in _module_targets(path, m):
            key = storage_key(t.parameter)
            if key in owner:
                if t.name not in out and t.name != owner[key].name and t.name not in owner[key].tied:
                    owner[key].tied += (t.name,)
                continue
            owner[key] = t
            out[t.name] = t
    return out


def is_compressible(module: nn.Module) -> bool:
    """A Linear or Conv1d/2d (subclasses too, or TorchScript's by name) with a standard ``weight``:
    the layers fine-tuning, lottery tickets and physical export work on."""
    kind = isinstance(module, COMPRESSIBLE_CLASSES) or module_type(module) in ("Linear", "Conv1d", "Conv2d")
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


def _skip_reason(kind: str, tensors: list[torch.Tensor]) -> str:
    if kind in SKIP_REASONS:
        return SKIP_REASONS[kind]
    big = max((t.dim() for t in tensors), default=0)
    if big >= 2:
        return (f"holds a {big}-D tensor that no known weight operation (Linear, Conv, Conv1D, Embedding, "
                f"attention projection) uses: kept at its stored precision")
    return "1-D tensors (biases, scales, norms): kept at their stored precision"


def skipped_layers(model: nn.Module, found: dict[str, Target] | None = None) -> list[dict]:
    """Modules that own tensors no target covers (and is not tied to one), with the reason."""
    found = targets(model) if found is None else found
    covered = {storage_key(t) for tg in found.values() for t in tg.covered()}
    rows = []
    for name, m in model.named_modules():
        rest = [t for t in own_tensors(m) if storage_key(t) not in covered]
        if rest:
            kind = module_type(m)
            rows.append(dict(name=name or "(model)", type=kind, reason=_skip_reason(kind, rest)))
    return rows
