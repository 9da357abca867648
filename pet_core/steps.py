"""The recipe's steps, generated from the method registry: validation, layer overrides, resolution.

A step is a recipe key (``prune``, ``quantize``, ``share``, ``low_rank``); its methods are the
registered methods with that ``step`` (``prune: {method: l1_channel, ...}`` picks one, the first
registered is the default). A layer's steps apply in one order: factor (low rank), then prune,
then one coding (quantize or share: steps of one kind exclude each other).

Frozen configs are hashable: the workbench uses a layer's resolved :class:`LayerSpec` as the cache
key that decides whether the layer must be recomputed.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Iterator

from pet_core.bounded import shown
from pet_core.errors import PetError
from pet_core.fields import allowed_text, check_fields
from pet_core.methods import METHODS
from pet_core.methods.base import CodeMethod, FactorMethod, Method, PruneMethod, StepConfig

STEPS: dict[str, list[Method]] = {}
for _m in METHODS.values():
    STEPS.setdefault(_m.step, []).append(_m)
KINDS = (FactorMethod, PruneMethod, CodeMethod)          # the order steps apply in


def kind_of(step: str) -> type:
    """FactorMethod, PruneMethod or CodeMethod: what the step's methods do."""
    return next(k for k in KINDS if isinstance(STEPS[step][0], k))


ORDER = tuple(s for kind in KINDS for s in STEPS if kind_of(s) is kind)
# Steps of one kind replace each other in a layer (a layer uses quantize or share).
EXCLUSIVE: dict[str, str] = {a: b for a in STEPS for b in STEPS if a != b and kind_of(a) is kind_of(b)}


def clashing(steps: dict[str, Any]) -> tuple[str, str] | None:
    """Two steps of one kind that are both set, e.g. ("quantize", "share"); None when there are none."""
    for a, b in EXCLUSIVE.items():
        if steps.get(a) is not None and steps.get(b) is not None and list(STEPS).index(a) < list(STEPS).index(b):
            return a, b
    return None


def method_of(step: str, cfg: StepConfig) -> Method:
    """The registered method a step config belongs to."""
    return METHODS[getattr(cfg, "method", step)]


def _method_name(step: str, data: dict[str, Any], where: str) -> str:
    methods = STEPS[step]
    if len(methods) == 1 and methods[0].name == step:
        return step
    name = data.get("method", methods[0].name)
    names = [m.name for m in methods]
    if name not in names:
        raise PetError(f"recipe: {where}.method = {shown(name)} is not allowed (allowed: {', '.join(names)})")
    return name


def step_config(step: str, data: Any, where: str) -> StepConfig:
    """A complete step from recipe fields: the chosen method's config, validated."""
    if not isinstance(data, dict):
        raise PetError(f"recipe: {where} must be a mapping of fields, got {shown(data)}")
    return METHODS[_method_name(step, data, where)].config.from_fields(data, where)


@dataclass(frozen=True)
class Patch:
    """A layer override of one step: checked fields; the default supplies the others."""

    step: str
    items: tuple[tuple[str, Any], ...]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.items)


def step_fields(step: str) -> dict[str, dict]:
    """Every field any method of ``step`` has, with its metadata (the first method's wins)."""
    out: dict[str, dict] = {}
    for m in STEPS[step]:
        for f in m.config.data_fields():
            out.setdefault(f.name, f.metadata)
    return out


def step_patch(step: str, data: Any, where: str) -> Patch:
    """A layer override's fields, each checked (against the named method's config, if any)."""
    if not isinstance(data, dict):
        raise PetError(f"recipe: {where} must be a mapping of fields, got {shown(data)}")
    if "method" in data:
        config = METHODS[_method_name(step, data, where)].config
        metas = {f.name: f.metadata for f in config.data_fields()}
        one_of = config.ONE_OF
    else:
        metas = step_fields(step)
        one_of = tuple({p for m in STEPS[step] for p in m.config.ONE_OF})
    out = check_fields(data, metas, where, one_of, complete=False)
    return Patch(step, tuple(out.items()))


class LayerSpec:
    """A layer's resolved steps (frozen, hashable), applied in :data:`ORDER`.

    ``spec.prune`` is the prune config or None, likewise every step name.

    >>> from pet_core.methods.quantize import QuantizeConfig
    >>> LayerSpec(quantize=QuantizeConfig(bits=4)).quantize.bits
    4
    """

    __slots__ = ("_steps",)

    def __init__(self, **configs: StepConfig | None) -> None:
        unknown = set(configs) - set(STEPS)
        if unknown:
            raise TypeError(f"LayerSpec: unknown step {sorted(unknown)[0]!r}")
        object.__setattr__(self, "_steps", tuple((s, configs[s]) for s in ORDER if configs.get(s) is not None))

    def __getattr__(self, name: str) -> StepConfig | None:
        if name in STEPS:
            return dict(self._steps).get(name)
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("LayerSpec is frozen")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LayerSpec) and self._steps == other._steps

    def __hash__(self) -> int:
        return hash(self._steps)

    def __repr__(self) -> str:
        return f"LayerSpec({', '.join(f'{s}={c!r}' for s, c in self._steps)})"

    def __iter__(self) -> Iterator[tuple[str, StepConfig]]:
        """(step, config) in the order they apply."""
        return iter(self._steps)

    def of_kind(self, kind: type) -> tuple[Method, StepConfig] | None:
        """(method, config) of the step of this kind (FactorMethod, PruneMethod, CodeMethod), or None."""
        for step, cfg in self._steps:
            if kind_of(step) is kind:
                return method_of(step, cfg), cfg
        return None

    @property
    def is_identity(self) -> bool:
        return not self._steps


def resolve(default: dict[str, StepConfig], layers: dict[str, dict[str, Patch | None]],
            layer_names: list[str]) -> dict[str, LayerSpec]:
    """Each layer's steps: the default, then every matching override in the recipe's order.

    Raises PetError when a layer name or glob matches no layer, or a layer ends with two steps of
    one kind (quantize and share).
    """
    base = {step: cfg.to_dict() for step, cfg in default.items()}
    steps_by_layer = {name: dict(base) for name in layer_names}
    for pattern, override in layers.items():
        matched = [n for n in layer_names if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            raise PetError(f"recipe: layers key '{pattern}' matches no compressible layer "
                           f"(layers: {', '.join(layer_names)})")
        for name in matched:
            steps = steps_by_layer[name]
            for step, patch in override.items():
                if patch is None:
                    steps[step] = None
                    continue
                fields = patch.as_dict()
                config = METHODS[_method_name(step, {**(steps.get(step) or {}), **fields}, step)].config
                steps[step] = config.merge(steps.get(step), fields)
                if step in EXCLUSIVE and EXCLUSIVE[step] not in override:
                    steps[EXCLUSIVE[step]] = None
    specs = {}
    for name, steps in steps_by_layer.items():
        if clash := clashing(steps):
            raise PetError(f"recipe: layer {name} has both {clash[0]} and {clash[1]} (a layer uses one)")
        built = {}
        for step, fields in steps.items():
            if fields is None:
                continue
            try:
                built[step] = step_config(step, fields, f"layer {name}: {step}")
            except PetError as exc:
                text = str(exc).removeprefix("recipe: ")
                raise PetError(f"recipe: {text}") from None
        specs[name] = LayerSpec(**built)
    return specs


def describe_steps() -> list[dict[str, Any]]:
    """Every method's fields with default, allowed values and help (for docs, the CLI and the app)."""
    rows = []
    for step, methods in STEPS.items():
        for m in methods:
            for f in m.config.data_fields():
                method_field = f.name == "method"
                rows.append(dict(step=step, method=m.name, field=f.name,
                                 default=m.name if method_field else f.default,
                                 allowed=(", ".join(x.name for x in methods) if method_field else
                                          allowed_text(f.metadata, short=False)),
                                 help=f.metadata["help"]))
    return rows


def describe_methods() -> list[dict[str, str]]:
    """Every registered method: its step, name and one-line summary."""
    return [dict(step=m.step, name=m.name, summary=m.summary) for m in METHODS.values()]
