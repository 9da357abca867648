"""The recipe's steps: one frozen dataclass each, with defaults, allowed values and help texts.

Validation reads the field metadata, so the rules live in one place and the docs can be
generated from them (``describe_steps()``). Frozen dataclasses are hashable: the workbench uses a
layer's resolved ``LayerSpec`` as the cache key that decides whether the layer must be recomputed.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field, fields
from typing import Any

from pet_core.bounded import shown, shown_key
from pet_core.errors import PetError

QUANT_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 16)
MAX_INT = 2**53                 # larger integers are refused: floats cannot hold them, and no field needs them


def _f(default: Any, help: str, *, choices: tuple | None = None, lo: float | None = None,
       hi: float | None = None, lo_open: bool = False, kind: type = float) -> Any:
    return field(default=default, metadata=dict(help=help, choices=choices, lo=lo, hi=hi,
                                                lo_open=lo_open, kind=kind))


@dataclass(frozen=True)
class Prune:
    method: str = _f("magnitude", "magnitude (unstructured), l1_channel or l2_channel (whole output channels)",
                     choices=("magnitude", "l1_channel", "l2_channel"), kind=str)
    scope: str = _f("global", "global: one magnitude threshold across all global layers; layer: each layer "
                    "pruned to its own sparsity (channel methods always work per layer)",
                    choices=("global", "layer"), kind=str)
    sparsity: float | None = _f(None, "fraction of weights (or channels) set to zero", lo=0.0, hi=1.0)
    threshold: float | None = _f(None, "zero every weight with |w| <= threshold (or channel with norm <= threshold)",
                                 lo=0.0, hi=math.inf)

    def __post_init__(self) -> None:
        if (self.sparsity is None) == (self.threshold is None):
            raise PetError("prune needs exactly one of sparsity or threshold")


@dataclass(frozen=True)
class Quantize:
    bits: int = _f(8, "bits per weight (uniform levels)", choices=QUANT_BITS, kind=int)
    scheme: str = _f("symmetric", "symmetric (levels around 0) or asymmetric (min..max with an offset)",
                     choices=("symmetric", "asymmetric"), kind=str)
    granularity: str = _f("per_channel", "one scale per output channel or one per tensor",
                          choices=("per_channel", "per_tensor"), kind=str)


@dataclass(frozen=True)
class Share:
    clusters: int = _f(16, "k-means clusters per layer (codebook size); indices take ceil(log2 k) bits",
                       lo=2, hi=256, kind=int)


@dataclass(frozen=True)
class LowRank:
    energy: float | None = _f(None, "fraction of the squared singular values kept", lo=0.0, hi=1.0, lo_open=True)
    rank: int | None = _f(None, "number of singular values kept", lo=1, hi=math.inf, kind=int)

    def __post_init__(self) -> None:
        if (self.energy is None) == (self.rank is None):
            raise PetError("low_rank needs exactly one of energy or rank")


STEPS: dict[str, type] = {"prune": Prune, "quantize": Quantize, "share": Share, "low_rank": LowRank}
# One of these pairs in a layer's steps replaces the other (a layer uses quantize or share).
EXCLUSIVE = {"quantize": "share", "share": "quantize"}
ONE_OF = {"prune": ("sparsity", "threshold"), "low_rank": ("energy", "rank")}


@dataclass(frozen=True)
class LayerSpec:
    """A layer's resolved steps, applied in this order: low_rank, prune, then quantize or share."""

    low_rank: LowRank | None = None
    prune: Prune | None = None
    quantize: Quantize | None = None
    share: Share | None = None

    @property
    def is_identity(self) -> bool:
        return not (self.low_rank or self.prune or self.quantize or self.share)


def _check_value(name: str, value: Any, meta: dict, where: str) -> Any:
    """``value`` checked against a field's metadata and normalised (int or float); PetError otherwise.

    Booleans are not numbers here, integers beyond 2^53 and non-finite numbers are out of range
    (``hi = inf`` means "no upper bound", not that inf itself is allowed).
    """
    kind, choices = meta["kind"], meta["choices"]
    if value is None:
        return None
    what = f"recipe: {where}.{shown_key(name)} = {shown(value)}"
    if kind is str:
        if not isinstance(value, str) or not value or (choices is not None and value not in choices):
            raise PetError(f"{what} is not allowed (allowed: {', '.join(choices or ['a non-empty string'])})")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            kind is int and isinstance(value, float) and math.isfinite(value) and not value.is_integer()):
        raise PetError(f"{what} must be {'an integer' if kind is int else 'a number'}")
    if isinstance(value, float) and not math.isfinite(value) and kind is int:
        raise PetError(f"{what} must be an integer")
    allowed = _allowed(meta)
    if isinstance(value, int) and abs(value) > MAX_INT or isinstance(value, float) and not math.isfinite(value):
        raise PetError(f"{what} is out of range (allowed: {allowed})")
    value = kind(value)
    if choices is not None and value not in choices:
        raise PetError(f"{what} is out of range (allowed: {allowed})")
    lo, hi = meta["lo"], meta["hi"]
    if lo is not None and (value < lo or (meta["lo_open"] and value == lo) or value > hi):
        raise PetError(f"{what} is out of range (allowed: {allowed})")
    return value


def _allowed(meta: dict) -> str:
    """A numeric field's allowed values as the messages and docs print them: "[0, 1]", "1-8 or 16"."""
    choices = meta["choices"]
    if choices is not None:
        return "1-8 or 16" if choices == QUANT_BITS else ", ".join(map(str, choices))
    hi = "inf)" if meta["hi"] == math.inf else f"{meta['hi']:g}]"
    return f"{'(' if meta['lo_open'] else '['}{meta['lo']:g}, {hi}"


def validate_step(step: str, data: Any, where: str, *, partial: bool) -> dict[str, Any]:
    """Check one step's fields; returns them normalised (ints as int, numbers as float).

    ``partial`` (layer overrides) allows leaving out fields that the default supplies.
    """
    cls = STEPS[step]
    if not isinstance(data, dict):
        raise PetError(f"recipe: {where} must be a mapping of fields, got {shown(data)}")
    metas = {f.name: f.metadata for f in fields(cls)}
    out = {}
    for name, value in data.items():
        if name not in metas:
            raise PetError(f"recipe: unknown key '{where}.{shown_key(name)}' (allowed: {', '.join(metas)})")
        if value is None:
            raise PetError(f"recipe: {where}.{name} = null is not allowed (leave the key out instead)")
        out[name] = _check_value(name, value, metas[name], where)
    pair = ONE_OF.get(step)
    if pair and all(k in out for k in pair):
        raise PetError(f"recipe: {where} sets both {pair[0]} and {pair[1]} (give one)")
    if pair and not partial and not any(k in out for k in pair):
        raise PetError(f"recipe: {where} needs {pair[0]} or {pair[1]}")
    return out


def merge_step(step: str, base: dict[str, Any] | None, override: dict[str, Any]) -> dict[str, Any]:
    """A layer override on top of the default: field by field.

    Setting one of sparsity/threshold (energy/rank) drops the other. A prune override that sets
    its own sparsity or threshold prunes that layer on its own (scope ``layer``) unless it says
    otherwise, because "fc3: {prune: {sparsity: 0.5}}" means "fc3 at 50%".
    """
    merged = dict(base or {})
    pair = ONE_OF.get(step)
    if pair:
        for a, b in (pair, pair[::-1]):
            if a in override:
                merged.pop(b, None)
    merged.update(override)
    if step == "prune" and pair and any(k in override for k in pair) and "scope" not in override:
        merged["scope"] = "layer"
    return merged


def resolve(default: dict, layers: dict, layer_names: list[str]) -> dict[str, LayerSpec]:
    """Each layer's steps: the default, then every matching override in the recipe's order.

    Raises PetError when a layer name or glob matches no layer, or a layer ends with both
    quantize and share.
    """
    steps_by_layer = {name: dict(default) for name in layer_names}
    for pattern, override in layers.items():
        matched = [n for n in layer_names if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            raise PetError(f"recipe: layers key '{pattern}' matches no compressible layer "
                           f"(layers: {', '.join(layer_names)})")
        for name in matched:
            steps = steps_by_layer[name]
            for step, value in override.items():
                steps[step] = None if value is None else merge_step(step, steps.get(step), value)
                if value is not None and step in EXCLUSIVE and EXCLUSIVE[step] not in override:
                    steps[EXCLUSIVE[step]] = None
    specs = {}
    for name, steps in steps_by_layer.items():
        if steps.get("quantize") and steps.get("share"):
            raise PetError(f"recipe: layer {name} has both quantize and share (a layer uses one)")
        built = {}
        for step, value in steps.items():
            if value is None:
                continue
            try:
                built[step] = STEPS[step](**value)
            except PetError as exc:
                raise PetError(f"recipe: layer {name}: {exc}") from None
        specs[name] = LayerSpec(**built)
    return specs


def describe_steps() -> list[dict[str, Any]]:
    """Every step field with its default, allowed values and help (for docs and the app)."""
    rows = []
    for step, cls in STEPS.items():
        for f in fields(cls):
            m = f.metadata
            if m["choices"]:
                allowed = ", ".join(map(str, m["choices"]))
            else:
                hi = "inf)" if m["hi"] == math.inf else f"{m['hi']:g}]"
                allowed = f"{'(' if m['lo_open'] else '['}{m['lo']:g}, {hi}"
            rows.append(dict(step=step, field=f.name, default=f.default, allowed=allowed, help=m["help"]))
    return rows
