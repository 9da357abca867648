"""Per-layer sensitivity: the metric with one layer alone compressed, at a ladder of settings.

For each compressible layer and each rung of the ladder (magnitude pruning at a sparsity, uniform
quantization at a bit width, k-means sharing at a number of clusters), the layer alone is
compressed, every other layer stays the baseline's, and the working copy is measured: its metric,
the drop from the baseline (positive = worse, whichever way the metric goes) and the layer's
accounted bytes. Layers are ranked by how much they tolerate (the mean drop over the ladder, least
first). Distiller and NNI call this a sensitivity analysis; AIMET's greedy ratio selection starts from it.

Evaluation goes through the workbench's engine: when an exact number would be slow, every point is
first estimated on the engine's stratified subset (``progress`` sees the estimates), then measured
exactly; the result holds exact numbers only.

Example:
    >>> cfg = SensitivityConfig(sparsities=(0.5, 0.9), bits=(4,))
    >>> result = sensitivity(wb, cfg)                                  # doctest: +SKIP
    >>> result["ranking"][0]                                           # the most tolerant layer  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from pet_core.errors import PetError
from pet_core.recipe import Recipe

DEFAULT_SPARSITIES = (0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99)   # dense where harm begins
DEFAULT_BITS = (8, 4, 3, 2)
MAX_RUNGS = 24                 # per ladder: a request cannot ask for an unbounded number of evaluations
ALLOWED_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 16)
TOLERATED_DROP = 0.01          # "tolerates" in the table: drop at most this (1 point of accuracy)
TOLERATED_RELATIVE = 0.01      # for a lower-is-better metric: at most 1% worse than the baseline
STEPS = ("prune", "quantize", "share")


@dataclass(frozen=True)
class SensitivityConfig:
    """The ladder: sparsities (magnitude, per layer), bit widths, and k-means clusters (empty: not run)."""

    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES
    bits: tuple[int, ...] = DEFAULT_BITS
    clusters: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparsities", _ladder(self.sparsities, "sparsities", float, _sparsity_ok,
                                                       "between 0 and 1 (excluded)"))
        object.__setattr__(self, "bits", _ladder(self.bits, "bits", int, lambda b: b in ALLOWED_BITS,
                                                 f"one of {', '.join(map(str, ALLOWED_BITS))}"))
        object.__setattr__(self, "clusters", _ladder(self.clusters, "clusters", int, lambda k: 2 <= k <= 256,
                                                     "between 2 and 256"))
        if not (self.sparsities or self.bits or self.clusters):
            raise PetError("sensitivity: the ladder is empty (give sparsities, bits or clusters)")

    def to_dict(self) -> dict[str, list]:
        return {"sparsities": list(self.sparsities), "bits": list(self.bits), "clusters": list(self.clusters)}

    @classmethod
    def from_dict(cls, data: Any) -> "SensitivityConfig":
        if not isinstance(data, dict) or set(data) - {"sparsities", "bits", "clusters"}:
            raise PetError(f"sensitivity: the ladder must be a mapping of sparsities, bits and clusters, got {data!r:.80}")
        return cls(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in data.items()})

    def points(self) -> list[tuple[str, float | int]]:
        """(step, setting) for every rung, in the order they are measured."""
        return ([("prune", s) for s in self.sparsities] + [("quantize", b) for b in self.bits]
                + [("share", k) for k in self.clusters])


def _sparsity_ok(s: float) -> bool:
    return 0.0 < s < 1.0


def _ladder(values: Any, name: str, kind: type, ok: Callable[[Any], bool], allowed: str) -> tuple:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise PetError(f"sensitivity: {name} must be a list, got {values!r:.60}")
    values = list(values)
    if len(values) > MAX_RUNGS:
        raise PetError(f"sensitivity: {len(values)} {name} is too many (at most {MAX_RUNGS})")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and float(v) != int(v)):
            raise PetError(f"sensitivity: {name} value {v!r:.40} is not a number of the right kind")
        v = kind(v)
        if v != v or not ok(v):
            raise PetError(f"sensitivity: {name} value {v!r} is not allowed ({allowed})")
        out.append(v)
    return tuple(sorted(set(out), reverse=kind is int))   # most compressed last: sparsity up, bits down


def layer_steps(step: str, setting: float | int) -> dict[str, dict[str, Any]]:
    """The recipe steps of one rung, for one layer (``layers: {name: ...}``)."""
    if step == "prune":
        return {"prune": {"method": "magnitude", "scope": "layer", "sparsity": float(setting)}}
    if step == "quantize":
        return {"quantize": {"bits": int(setting)}}
    if step == "share":
        return {"share": {"clusters": int(setting)}}
    raise PetError(f"sensitivity: unknown step {step!r}")


def drop_of(value: float | None, base: float | None, higher_is_better: bool) -> float | None:
    """How much worse ``value`` is than ``base`` (positive = worse)."""
    if value is None or base is None:
        return None
    return (base - value) if higher_is_better else (value - base)


def tolerated(drop: float | None, base: float | None, higher_is_better: bool) -> bool:
    if drop is None:
        return False
    limit = TOLERATED_DROP if higher_is_better else TOLERATED_RELATIVE * abs(base or 0.0)
    return drop <= limit


def sensitivity(wb, config: SensitivityConfig, *, progress: Callable[[dict], None] | None = None,
                cancel: Any = None) -> dict[str, Any]:
    """Measure every (layer, rung) of ``config`` on the workbench ``wb`` (see the module docstring).

    ``cancel``: an object with ``is_set()`` (an Event, a job context), checked between points.
    The working copy is brought back to the recipe it held. Returns plain data::

        {"metric": {...}, "baseline": {"value", "size_bytes"}, "ladder": {...},
         "layers": [{"name", "type", "params", "bytes", "points": [{"step", "setting", "value",
                     "drop", "bytes"}]}], "ranking": [...], "seconds", "evaluations", "exact"}
    """
    if not wb.measures:
        raise PetError("sensitivity needs an evaluation set: this model was loaded without a dataset (weights only)")
    start = time.perf_counter()
    held = wb.recipe
    metric = wb.metric
    base_value = wb.baseline_metric
    points = config.points()
    names = list(wb.names)
    total = len(names) * len(points)
    empty = Recipe(model=held.model if held else "model", dataset=held.dataset if held else "data")
    wb.apply(empty)
    base_bytes = {r.name: r.size_bytes for r in wb.sizes() if r.name in wb.layers}
    rows = {n: {"name": n, "type": wb.layers[n].type, "params": wb.layers[n].weight.numel(),
                "bytes": base_bytes[n], "points": []} for n in names}
    estimate_first = wb.exact_is_slow(0.08)

    def stopped() -> bool:
        return cancel is not None and cancel.is_set()

    def each_point():
        for name in names:
            for step, setting in points:
                wb.apply(empty.replace(layers={name: layer_steps(step, setting)}))
                yield name, step, setting

    done = 0
    if estimate_first:        # a first picture, from the stratified subset, while the exact pass runs
        for name, step, setting in each_point():
            if stopped():
                break
            est = wb.estimate()
            done += 1
            _emit(progress, "estimating", done, 2 * total, name, step, setting, est.value,
                  drop_of(est.value, base_value, metric.higher_is_better), exact=False)
    for name, step, setting in each_point():
        if stopped():
            break
        value = wb.evaluate()
        size = next(r.size_bytes for r in wb.sizes() if r.name == name)
        drop = drop_of(value, base_value, metric.higher_is_better)
        rows[name]["points"].append({"step": step, "setting": setting, "value": value, "drop": drop, "bytes": size})
        done += 1
        _emit(progress, "measuring", done, (2 if estimate_first else 1) * total, name, step, setting, value, drop,
              exact=True)
    if held is not None:
        wb.apply(held)
    layers = [rows[n] for n in names]
    for row in layers:
        drops = [p["drop"] for p in row["points"]]
        row["mean_drop"] = sum(drops) / len(drops) if drops else None
        row["tolerates"] = _tolerates(row["points"], base_value, metric.higher_is_better)
    ranking = [r["name"] for r in sorted(layers, key=lambda r: (r["mean_drop"] is None, r["mean_drop"] or 0.0))]
    complete = all(len(r["points"]) == len(points) for r in layers)
    return {"metric": metric.to_dict(), "baseline": {"value": base_value, "size_bytes": sum(base_bytes.values())},
            "ladder": config.to_dict(), "layers": layers, "ranking": ranking, "complete": complete,
            "seconds": time.perf_counter() - start, "evaluations": sum(len(r["points"]) for r in layers),
            "exact": True, "backend": wb.engine.backend_name}


def _tolerates(points: list[dict], base: float | None, higher_is_better: bool) -> dict[str, Any]:
    """The most compressed rung of each step still within the tolerated drop (None: not even the mildest)."""
    out: dict[str, Any] = {}
    for step in STEPS:
        ok = [p["setting"] for p in points if p["step"] == step and tolerated(p["drop"], base, higher_is_better)]
        if any(p["step"] == step for p in points):
            out[step] = (max(ok) if step == "prune" else min(ok)) if ok else None
    return out


def _emit(progress, stage, done, total, name, step, setting, value, drop, *, exact: bool) -> None:
    if progress is not None:
        progress({"stage": stage, "step": done, "steps": total, "layer": name, "setting_step": step,
                  "setting": setting, "value": value, "drop": drop, "exact": exact})


def curve(result: dict[str, Any], layer: str, step: str) -> list[tuple[float, float, int]]:
    """(setting, drop, bytes) of one layer's rungs of one step, in ladder order."""
    row = next((r for r in result["layers"] if r["name"] == layer), None)
    if row is None:
        raise PetError(f"sensitivity: no layer {layer!r} in this result")
    return [(p["setting"], p["drop"], p["bytes"]) for p in row["points"] if p["step"] == step]


# --- the ledger: one analysis per model, dataset and ladder, shared by everybody ------------------

def ladder_key(config: SensitivityConfig) -> dict[str, Any]:
    """What a sensitivity run stores as its "recipe": the ladder (the cache key with model and data)."""
    return {"sensitivity": config.to_dict()}


def cached(ledger, baseline, config: SensitivityConfig) -> dict[str, Any] | None:
    """The recorded complete analysis of this model, dataset and ladder (with its ``run_id``), or None."""
    from pet_core.runs import identity

    ident = identity(baseline)
    run_id = ledger.find("sensitivity", model_hash=ident["model_hash"], dataset_hash=ident["dataset_hash"],
                         recipe=ladder_key(config))
    if run_id is None:
        return None
    run = ledger.get(run_id)
    result = (run["metrics"] or {}).get("sensitivity")
    if run["status"] != "done" or not isinstance(result, dict) or not result.get("complete"):
        return None
    return {**result, "run_id": run_id, "cached": True}


def record(ledger, baseline, result: dict[str, Any], *, owner: str = "me") -> int:
    """Record a complete analysis as a "sensitivity" run under the baseline's run; returns its id."""
    from pet_core.runs import identity, metric_fields, record_baseline

    if not result.get("complete"):
        raise PetError("sensitivity: only a complete analysis is recorded (this one was stopped)")
    ident = identity(baseline)
    parent = record_baseline(ledger, baseline, owner)
    config = SensitivityConfig.from_dict(result["ladder"])
    label = f"sensitivity: {len(result['layers'])} layers × {len(config.points())} settings"
    return ledger.record("sensitivity", model=ident["model"], model_hash=ident["model_hash"],
                         dataset=ident["dataset"], dataset_hash=ident["dataset_hash"], recipe=ladder_key(config),
                         metrics={**metric_fields(result["metric"], {}), "sensitivity": result},
                         extra=ident["extra"], parent_id=parent, owner=owner, label=label)


def analyse(ledger, baseline, config: SensitivityConfig, *, owner: str = "me", wb=None,
            progress: Callable[[dict], None] | None = None, cancel: Any = None) -> dict[str, Any]:
    """The cached analysis, else a new one (recorded when complete); ``ledger`` None: nothing stored."""
    if ledger is not None and (found := cached(ledger, baseline, config)) is not None:
        return found
    if wb is None:
        from pet_core.loader import open_workbench

        wb = open_workbench(baseline)
    result = sensitivity(wb, config, progress=progress, cancel=cancel)
    result["cached"] = False
    if ledger is not None and result["complete"]:
        result["run_id"] = record(ledger, baseline, result, owner=owner)
    return result
