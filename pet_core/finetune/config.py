"""The recipe's ``finetune:`` section: training options and the techniques to use.

Validated with the same field metadata as the compression steps (``pet_core.fields``), so errors
name the key, the value and the allowed range, and ``describe`` can document every field::

    finetune:
      epochs: 4
      optimizer: adam
      lr: 0.001
      batch_size: 128
      seed: 0
      techniques:
        qat: {}                                   # fake quantisation (STE) at the recipe's bits
        distill: {temperature: 4.0, alpha: 0.7}   # baseline as teacher
        gradual: {initial_sparsity: 0.0, start_epoch: 0, end_epoch: 2, frequency: 50}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from pet_core.bounded import shown, shown_key
from pet_core.errors import PetError
from pet_core.fields import _f
from pet_core.fields import check_value as _check_value


@dataclass(frozen=True)
class Distill:
    temperature: float = _f(4.0, "softmax temperature T for teacher and student", lo=0.0, hi=100.0, lo_open=True)
    alpha: float = _f(0.7, "weight of the soft (teacher) loss; 1 - alpha goes to the labels", lo=0.0, hi=1.0)


@dataclass(frozen=True)
class L1:
    strength: float = _f(1e-5, "lambda: L1 penalty on compressible weights, added to the loss", lo=0.0, hi=1.0)


@dataclass(frozen=True)
class Gradual:
    initial_sparsity: float = _f(0.0, "s_i: sparsity at the first pruning step", lo=0.0, hi=1.0)
    start_epoch: float = _f(0.0, "t0 as a fraction of training: the epoch pruning starts", lo=0.0, hi=math.inf)
    end_epoch: float = _f(1.0, "t0 + n·Δt: the epoch the final sparsity (the recipe's prune) is reached",
                          lo=0.0, hi=math.inf)
    frequency: int = _f(50, "Δt: optimiser steps between mask updates", lo=1, hi=math.inf, kind=int)


@dataclass(frozen=True)
class Lottery:
    rounds: int = _f(3, "prune-and-rewind rounds; each prunes (1 - s)^(1/rounds) of the remaining weights",
                     lo=1, hi=20, kind=int)
    rewind: str = _f("early", "rewind to the architecture's initial weights (init) or an early checkpoint (early)",
                     choices=("init", "early"), kind=str)
    rewind_steps: int = _f(100, "steps of training from init before the early checkpoint", lo=0, hi=math.inf,
                           kind=int)


@dataclass(frozen=True)
class Lora:
    rank: int = _f(4, "rank r of the adapters B (out×r) · A (r×in)", lo=1, hi=1024, kind=int)
    alpha: float = _f(8.0, "scaling: the update is (alpha / r)·B·A", lo=0.0, hi=math.inf, lo_open=True)
    layers: str = _f("*", "glob of layer names that get adapters (others stay frozen)", kind=str)


@dataclass(frozen=True)
class Qat:
    enabled: bool = field(default=True, metadata=dict(help="fake-quantise weights at the recipe's bits with a "
                                                           "straight-through estimator; with share, fine-tune the "
                                                           "centroids", kind=bool))


TECHNIQUES: dict[str, type] = {"qat": Qat, "distill": Distill, "l1": L1, "gradual": Gradual,
                               "lottery": Lottery, "lora": Lora}


@dataclass(frozen=True)
class Finetune:
    """Training options; ``techniques`` maps a technique name to its options."""

    epochs: float = _f(3.0, "passes over the training set (fractions allowed)", lo=0.0, hi=1000.0, lo_open=True)
    steps: int | None = _f(None, "optimiser steps; overrides epochs when given", lo=1, hi=math.inf, kind=int)
    optimizer: str = _f("adam", "adam, adamw or sgd (momentum 0.9)", choices=("adam", "adamw", "sgd"), kind=str)
    lr: float = _f(1e-3, "peak learning rate", lo=0.0, hi=10.0, lo_open=True)
    schedule: str = _f("cosine", "learning-rate schedule over the run", choices=("cosine", "constant"), kind=str)
    weight_decay: float = _f(0.0, "decoupled (adamw) or L2 (adam, sgd) weight decay", lo=0.0, hi=1.0)
    batch_size: int = _f(128, "samples per step", lo=1, hi=65536, kind=int)
    seed: int = _f(0, "seed for shuffling and adapters", lo=0, hi=2**31 - 1, kind=int)
    techniques: dict = field(default_factory=dict, metadata=dict(help="technique name -> options", kind=dict))

    def technique(self, name: str) -> Any:
        """The technique's options dataclass, or None when it is not used."""
        value = self.techniques.get(name)
        return None if value is None else TECHNIQUES[name](**value)


def validate_finetune(data: Any, where: str = "finetune") -> dict[str, Any]:
    """Check the ``finetune`` section; returns it normalised. Raises PetError naming key and value."""
    if not isinstance(data, dict):
        raise PetError(f"recipe: {where} must be a mapping, got {shown(data)}")
    metas = {f.name: f.metadata for f in fields(Finetune)}
    out: dict[str, Any] = {}
    for name, value in data.items():
        if name not in metas:
            raise PetError(f"recipe: unknown key '{where}.{shown_key(name)}' (allowed: {', '.join(metas)})")
        if name == "techniques":
            out[name] = _techniques(value, f"{where}.techniques")
        elif value is None:
            raise PetError(f"recipe: {where}.{name} = null is not allowed (leave the key out instead)")
        else:
            out[name] = _check_value(name, value, metas[name], where)
    return out


def _techniques(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise PetError(f"recipe: {where} must be a mapping of technique names to options, got {shown(data)}")
    out = {}
    for name, options in data.items():
        if name not in TECHNIQUES:
            raise PetError(f"recipe: unknown key '{where}.{shown_key(name)}' (allowed: {', '.join(TECHNIQUES)})")
        options = {} if options is None else options
        if not isinstance(options, dict):
            raise PetError(f"recipe: {where}.{name} must be a mapping of options, got {shown(options)}")
        metas = {f.name: f.metadata for f in fields(TECHNIQUES[name])}
        checked = {}
        for key, value in options.items():
            if key not in metas:
                raise PetError(f"recipe: unknown key '{where}.{name}.{shown_key(key)}' (allowed: {', '.join(metas)})")
            meta = metas[key]
            if value is None:
                raise PetError(f"recipe: {where}.{name}.{key} = null is not allowed (leave the key out instead)")
            if meta["kind"] is bool:
                if not isinstance(value, bool):
                    raise PetError(f"recipe: {where}.{name}.{key} = {shown(value)} must be true or false")
                checked[key] = value
            elif meta["kind"] is str and meta.get("choices") is None:
                if not isinstance(value, str) or not value or len(value) > 1024:
                    raise PetError(f"recipe: {where}.{name}.{key} = {shown(value)} must be a non-empty string (at most 1024 characters)")
                checked[key] = value
            else:
                checked[key] = _check_value(key, value, meta, f"{where}.{name}")
        out[name] = checked
    if "gradual" in out and "lottery" in out:
        raise PetError(f"recipe: {where} has both gradual and lottery (each sets the masks; choose one)")
    g = out.get("gradual")
    if g and g.get("end_epoch", 1.0) < g.get("start_epoch", 0.0):
        raise PetError(f"recipe: {where}.gradual.end_epoch = {g['end_epoch']} is before start_epoch "
                       f"= {g.get('start_epoch', 0.0)}")
    return out


def parse_finetune(data: dict[str, Any]) -> Finetune:
    """A ``Finetune`` from a validated section."""
    return Finetune(**data)
