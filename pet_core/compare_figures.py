"""Plotly figures of a run comparison (:func:`pet_core.compare.compare_runs`'s data): plain data in, figure out.

>>> out = {"confusion_diff": [[-1, 1], [0, 0]],
...        "per_class": [{"class": 0, "change": -0.5}, {"class": 1, "change": 0.0}],
...        "layers": [{"name": "fc1", "relative_diff": 0.7}], "runs": {"a": {"id": 1}, "b": {"id": 2}}}
>>> confusion_diff_figure(out).data[0].zmid, per_class_change_figure(out).data[0].y, layer_diff_figure(out).data[0].x
(0, (-0.5, 0.0), (0.7,))
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

DIVERGING = [[0.0, "#c0392b"], [0.5, "#f7f7f7"], [1.0, "#2a9d8f"]]   # fewer (red), none, more (green)


def _ab(out: dict[str, Any]) -> str:
    return f"run {out['runs']['a']['id']} → run {out['runs']['b']['id']}"


def confusion_diff_figure(out: dict[str, Any], height: int = 440) -> go.Figure:
    """Heatmap of confusion B − A (rows = true class, columns = predicted), centred at zero, counts written in.

    On the diagonal green means B gets more of that class right; off it, red means fewer of those mistakes.
    """
    diff = out["confusion_diff"]
    classes = list(range(len(diff)))
    text = [[f"{v:+d}" if v else "" for v in row] for row in diff]
    trace = dict(type="heatmap", z=diff, x=classes, y=classes, zmid=0, colorscale=DIVERGING, text=text,
                 texttemplate="%{text}", hovertemplate="true %{y}, predicted %{x}: %{z:+d}<extra></extra>",
                 colorbar=dict(title=dict(text="B − A")))
    return go.Figure(data=[trace], layout=dict(
        title=dict(text=f"Confusion change, {_ab(out)}"), height=height, margin=dict(t=50, b=50, l=60, r=20),
        xaxis=dict(title=dict(text="predicted class"), dtick=1),
        yaxis=dict(title=dict(text="true class"), dtick=1, autorange="reversed")))


def per_class_change_figure(out: dict[str, Any], height: int = 320) -> go.Figure:
    """Bars of each class's accuracy change B − A (classes without test items are left out)."""
    rows = [r for r in out["per_class"] if r["change"] is not None]
    changes = [r["change"] for r in rows]
    colors = ["#2a9d8f" if c > 0 else "#c0392b" if c < 0 else "#8fa8c8" for c in changes]
    trace = dict(type="bar", x=[str(r["class"]) for r in rows], y=changes, marker_color=colors,
                 hovertemplate="class %{x}: %{y:+.2%}<extra></extra>")
    return go.Figure(data=[trace], layout=dict(
        title=dict(text=f"Accuracy change per class, {_ab(out)}"), height=height,
        margin=dict(t=50, b=40, l=60, r=20), xaxis=dict(title=dict(text="class"), type="category"),
        yaxis=dict(title=dict(text="B − A"), tickformat="+.0%")))


def layer_diff_figure(out: dict[str, Any], height: int | None = None) -> go.Figure:
    """Horizontal bars of each layer's relative weight difference ||W_B − W_A||_F / ||W_A||_F."""
    rows = [r for r in out["layers"] if r["relative_diff"] is not None]
    trace = dict(type="bar", orientation="h", x=[r["relative_diff"] for r in rows],
                 y=[r["name"] for r in rows], marker_color="#e4572e",
                 hovertemplate="%{y}: %{x:.4f}<extra></extra>")
    return go.Figure(data=[trace], layout=dict(
        title=dict(text=f"Relative weight difference, {_ab(out)}"),
        height=height or max(220, 60 + 24 * len(rows)), margin=dict(t=50, b=40, l=140, r=20),
        xaxis=dict(title=dict(text="‖W_B − W_A‖ / ‖W_A‖")),
        yaxis=dict(autorange="reversed", type="category")))


__all__ = ["confusion_diff_figure", "layer_diff_figure", "per_class_change_figure"]
