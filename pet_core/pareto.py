"""Runs and their Pareto frontier: the task's metric in its direction (accuracy up, perplexity down), bytes down.

Each metric's direction is declared once, in :mod:`pet_core.metrics`; :func:`directions` reads it.
"""

from __future__ import annotations

import json
from typing import Any

from pet_core.errors import PetError
from pet_core.metrics import METRICS
from pet_core.recipe import Recipe
from pet_core.steps import method_of


def directions(metric: str = "accuracy") -> dict[str, str]:
    """The Pareto directions of a task metric (from :data:`pet_core.metrics.METRICS`) and of bytes.

    >>> directions("perplexity")
    {'perplexity': 'lower', 'size_bytes': 'lower'}
    """
    if metric not in METRICS:
        raise PetError(f"unknown metric {str(metric)[:40]!r}; use one of {', '.join(METRICS)}")
    return {metric: "higher" if METRICS[metric].higher_is_better else "lower", "size_bytes": "lower"}


METRIC_DIRECTIONS = directions("accuracy")


def _better_or_equal(a: dict, b: dict, directions: dict[str, str]) -> bool:
    return all((a[m] >= b[m]) if d == "higher" else (a[m] <= b[m]) for m, d in directions.items())


def pareto_front(points: list[dict[str, Any]], directions: dict[str, str] = METRIC_DIRECTIONS) -> list[int]:
    """Indices of the points no other point dominates (as good in every metric, better in one).

    ``directions``: metric name -> "higher" or "lower" (:func:`directions`); every point has each one.

    Example:
        >>> pareto_front([{"accuracy": .9, "size_bytes": 10}, {"accuracy": .8, "size_bytes": 20},
        ...               {"accuracy": .95, "size_bytes": 30}])
        [0, 2]
        >>> pareto_front([{"perplexity": 40, "size_bytes": 10}, {"perplexity": 30, "size_bytes": 20},
        ...               {"perplexity": 50, "size_bytes": 30}], directions("perplexity"))
        [0, 1]
    """
    front = []
    for i, p in enumerate(points):
        dominated = any(
            j != i and _better_or_equal(q, p, directions) and any(q[m] != p[m] for m in directions)
            for j, q in enumerate(points)
        )
        if not dominated:
            front.append(i)
    return front


def recipe_key(recipe: dict) -> str:
    """A canonical string for a recipe, to tell runs apart."""
    return json.dumps(recipe, sort_keys=True)


def run_record(report: dict[str, Any], series: str, label: str | None = None) -> dict[str, Any]:
    """One point of the Pareto plot from a workbench report: the metric under its name (and ``metric``)."""
    c = report["compressed"]
    name = (report.get("metric") or {}).get("name", "accuracy")
    return {
        "series": series,
        "label": label or summarize_recipe(report["recipe"]),
        "recipe": report["recipe"],
        "metric": name,
        name: c[name],
        "size_bytes": c["size_bytes"],
        "compression_ratio": c["compression_ratio"],
        "weight_sparsity": c["weight_sparsity"],
    }


def summarize_recipe(recipe: dict | None) -> str:
    """A short human label from each step's method: 'magnitude 90% global · int4 sym per_channel · 1 override'.

    >>> summarize_recipe({"pet_recipe": 1, "default": {"quantize": {"bits": 4}}})
    'int4 sym per_channel'
    """
    if not recipe:
        return "baseline"
    try:
        parsed = Recipe.from_dict(recipe)
    except PetError:
        return "invalid recipe"
    parts = [method_of(step, cfg).label(cfg) for step, cfg in parsed.default.items()]
    if n := len(parsed.layers):
        parts.append(f"{n} override{'s' if n > 1 else ''}")
    return " · ".join(parts) or "no compression"
