"""Figures of a sensitivity analysis (plotly, no streamlit): a layer × setting heatmap and per-layer curves.

Both read the plain result of :func:`pet_core.sensitivity.sensitivity` (or the partial rows a running
job reports), so the app and a notebook draw the same pictures.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

STEP_LABEL = {"prune": "s", "quantize": "b", "share": "k"}
STEP_TITLE = {"prune": "sparsity", "quantize": "bits", "share": "k-means clusters"}


def setting_label(step: str, setting: float | int) -> str:
    """"s0.9", "b4", "k16": a column of the heatmap."""
    return f"{STEP_LABEL.get(step, step)}{setting:g}"


def heatmap(layers: list[dict[str, Any]], metric: dict[str, Any]) -> go.Figure:
    """Layers (rows, most tolerant on top when the rows come ranked) × settings (columns), coloured by drop."""
    columns: list[tuple[str, Any]] = []
    for row in layers:
        for p in row["points"]:
            if (p["step"], p["setting"]) not in columns:
                columns.append((p["step"], p["setting"]))
    z, text = [], []
    for row in layers:
        at = {(p["step"], p["setting"]): p["drop"] for p in row["points"]}
        values = [at.get(c) for c in columns]
        z.append([None if v is None else (100 * v if metric["name"] == "accuracy" else v) for v in values])
        text.append(["" if v is None else (f"{100 * v:.1f}" if metric["name"] == "accuracy" else f"{v:.2f}")
                     for v in values])
    unit = "points" if metric["name"] == "accuracy" else metric["name"]
    fig = go.Figure(go.Heatmap(z=z, x=[setting_label(*c) for c in columns], y=[r["name"] for r in layers],
                               text=text, texttemplate="%{text}", colorscale="Reds", zmin=0,
                               colorbar={"title": {"text": f"drop ({unit})"}},
                               hovertemplate="%{y} at %{x}: drop %{text}<extra></extra>"))
    fig.update_layout(title={"text": f"{metric['name']} drop with one layer compressed alone"},
                      yaxis={"autorange": "reversed", "type": "category"}, xaxis={"type": "category"},
                      height=max(260, 60 + 28 * len(layers)), margin={"t": 50, "b": 40})
    return fig


def curves(layers: list[dict[str, Any]], metric: dict[str, Any], step: str) -> go.Figure:
    """One line per layer: the metric against the setting of ``step`` (sparsity, bits or clusters)."""
    fig = go.Figure()
    for row in layers:
        pts = [p for p in row["points"] if p["step"] == step]
        if pts:
            fig.add_trace(go.Scatter(x=[p["setting"] for p in pts], y=[p["value"] for p in pts], mode="lines+markers",
                                     name=row["name"], hovertemplate=row["name"] + ": %{y:.4f} at %{x}<extra></extra>"))
    fig.update_layout(title={"text": f"{metric['name']} with one layer at each {STEP_TITLE[step]}"},
                      xaxis={"title": {"text": STEP_TITLE[step]},
                             **({"autorange": "reversed"} if step != "prune" else {})},
                      yaxis={"title": {"text": metric["name"]}}, height=360, margin={"t": 50, "b": 40})
    return fig


def partial_layers(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows a running job has reported so far (its progress history), estimates included."""
    rows: dict[str, dict[str, Any]] = {}
    for event in history:
        if "layer" not in event or event.get("drop") is None:
            continue
        row = rows.setdefault(event["layer"], {"name": event["layer"], "points": []})
        point = {"step": event["setting_step"], "setting": event["setting"], "value": event["value"],
                 "drop": event["drop"]}
        row["points"] = [p for p in row["points"] if (p["step"], p["setting"]) != (point["step"], point["setting"])]
        row["points"].append(point)
    return list(rows.values())
