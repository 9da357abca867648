"""Ledger runs as points of the Pareto plot: one series per kind, lineage as parent → child edges."""

from __future__ import annotations

from typing import Any

from pet_core.pareto import summarize_recipe


def run_points(runs: list[dict[str, Any]], metric: str = "accuracy") -> list[dict[str, Any]]:
    """Plot points for the finished runs of ``metric`` that have its value and a size (value under its name)."""
    from pet_core.runs import run_metric

    points = []
    for r in runs:
        m = r.get("metrics") or {}
        if (r["status"] not in ("done", "stopped") or run_metric(r)["name"] != metric or m.get(metric) is None
                or not m.get("size_bytes")):
            continue
        points.append({"id": r["id"], "parent_id": r["parent_id"], "series": r["kind"], "owner": r["owner"],
                       "label": f"#{r['id']} {r['label'] or summarize_recipe(r['recipe'])}",
                       "recipe": r["recipe"], metric: m[metric], "size_bytes": m["size_bytes"],
                       "compression_ratio": m.get("compression_ratio"), "weight_sparsity": m.get("weight_sparsity")})
    return points


def lineage_edges(points: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(parent index, child index) for every point whose parent is also plotted."""
    index = {p["id"]: i for i, p in enumerate(points)}
    return [(index[p["parent_id"]], i) for i, p in enumerate(points)
            if p["parent_id"] in index and p["series"] != "post-training" and p["series"] != "sweep"]
