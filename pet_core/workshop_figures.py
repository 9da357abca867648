"""The class board's figures: everybody's runs on one accuracy-vs-size plot, and the room's guesses."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from pet_core.pareto import directions, pareto_front

PALETTE = ("#1f77b4", "#e4572e", "#2a9d8f", "#9467bd", "#f4a261", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#264653", "#d62728", "#7f7f7f")


def board_figure(group: dict[str, Any], budget_bytes: int | None = None, height: int = 480) -> go.Figure:
    """One group of the board (a model and dataset): each nickname's runs, the room's frontier, the budget."""
    metric = group["metric"]
    name, percent = metric["name"], metric["name"] == "accuracy"
    runs = [r for r in group["runs"] if r["metrics"].get(name) is not None and r["metrics"].get("size_bytes")]
    fig = go.Figure()
    owners = sorted({r["owner"] for r in runs})
    for i, owner in enumerate(owners):
        mine = [r for r in runs if r["owner"] == owner]
        fig.add_scatter(x=[r["metrics"]["size_bytes"] for r in mine], y=[r["metrics"][name] for r in mine],
                        mode="markers", name=owner, marker=dict(size=10, color=PALETTE[i % len(PALETTE)],
                                                                line=dict(width=1, color="white")),
                        text=[f"{owner} · run {r['id']} · {r['kind']}" for r in mine],
                        hovertemplate="%{text}<br>%{y:" + (".2%" if percent else ".2f") + "} · %{x:,} B<extra></extra>")
    points = [{"size_bytes": r["metrics"]["size_bytes"], name: r["metrics"][name]} for r in runs]
    front = sorted(pareto_front(points, directions(name)), key=lambda i: points[i]["size_bytes"])
    if len(front) > 1:
        fig.add_scatter(x=[points[i]["size_bytes"] for i in front], y=[points[i][name] for i in front], mode="lines",
                        line=dict(shape="hv", dash="dot", color="#444"), name="room's frontier", hoverinfo="skip")
    shapes = []
    if budget_bytes:
        shapes.append(dict(type="line", xref="x", yref="paper", x0=budget_bytes, x1=budget_bytes, y0=0, y1=1,
                           line=dict(color="#e4572e", width=2, dash="dash")))
    fig.update_layout(title=f"{group['model']} on {group['dataset']}: {len(runs)} runs by {len(owners)} {'person' if len(owners) == 1 else 'people'}",
                      xaxis=dict(title="size (bytes, log)", type="log"), shapes=shapes,
                      yaxis=dict(title=metric.get("label", name), tickformat=".1%" if percent else None),
                      height=height, margin=dict(t=50, b=40, l=60, r=20), legend=dict(title="nickname"),
                      showlegend=True)
    return fig


def guesses_figure(guesses: list[dict[str, Any]], truth: float | None, unit: str, title: str,
                   height: int = 300) -> go.Figure:
    """The room's guesses for one exercise: every guess a dot over their spread (a box), the measured
    answer a line; as readable with 2 guesses as with 30."""
    fig = go.Figure(go.Box(x=[g["guess"] for g in guesses], name="guesses", boxpoints="all", jitter=0.6,
                           pointpos=0, marker=dict(color="#1f77b4", size=8), line=dict(color="#8fa8c8"),
                           fillcolor="rgba(143,168,200,0.25)", orientation="h",
                           text=[g.get("nickname") or "" for g in guesses], hoverinfo="x+text"))
    shapes = []
    if truth is not None:
        shapes.append(dict(type="line", xref="x", yref="paper", x0=truth, x1=truth, y0=0, y1=1,
                           line=dict(color="#e4572e", width=3)))
        fig.add_scatter(x=[truth], y=["guesses"], mode="markers", marker=dict(color="#e4572e", size=1),
                        name="measured", showlegend=True)
    fig.update_layout(title=title, xaxis_title=f"guess ({unit})" if unit else "guess", yaxis=dict(visible=False),
                      shapes=shapes, height=height, margin=dict(t=50, b=40, l=20, r=20), showlegend=False)
    return fig
