"""Plotly figures from plain data: the app and the HTML report draw the same pictures."""

from __future__ import annotations

import math
from typing import Any, Sequence

import plotly.graph_objects as go
import torch

from pet_core.pareto import directions, pareto_front

MAX_HEATMAP = 256
MAX_LEVELS_DRAWN = 64


def _vline(x: float, color: str, dash: str | None = None, width: float = 2, opacity: float = 1.0) -> dict:
    """A vertical line across the plot at ``x``, as a layout shape (``add_vline`` costs ~13 ms a line)."""
    return dict(type="line", xref="x", yref="paper", x0=x, x1=x, y0=0, y1=1, opacity=opacity, layer="above",
                line=dict(color=color, width=width, dash=dash))


def weight_histogram(name: str, edges: Sequence[float], before: Sequence[int], after: Sequence[int] | None = None,
                     threshold: float | None = None, levels: Sequence[float] | None = None,
                     log_y: bool = False, after_zeros: int = 0, sampled: bool = False,
                     height: int = 360) -> go.Figure:
    """Histogram of a layer's weights with the pruning threshold (±t) and quantisation levels drawn.

    Built in one go (traces and lines as plain data, a few ms): a slider move redraws it.

    >>> fig = weight_histogram("fc1", [-1.0, 0.0, 1.0], [3, 5], threshold=0.5, levels=[-0.5, 0.5])
    >>> [s.x0 for s in fig.layout.shapes]
    [-0.5, 0.5, -0.5, 0.5]
    """
    centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    width = edges[1] - edges[0] if len(edges) > 1 else 1.0
    data = [dict(type="bar", x=centers, y=list(before), width=width, name="baseline", marker_color="#8fa8c8",
                 opacity=0.7)]
    shapes = []
    if after is not None:
        data.append(dict(type="bar", x=centers, y=list(after), width=width, marker_color="#e4572e", opacity=0.6,
                         name=f"compressed (non-zero; {after_zeros:,} zeros not drawn)"))
    if threshold is not None and math.isfinite(threshold):
        shapes += [_vline(x, "#222", dash="dash") for x in (-threshold, threshold)]
        data.append(dict(type="scatter", x=[None], y=[None], mode="lines", line=dict(color="#222", dash="dash"),
                         name=f"pruning threshold ±{threshold:.3g}"))
    if levels:
        lo, hi = edges[0], edges[-1]
        if len(levels) <= MAX_LEVELS_DRAWN:   # more lines than this only hatch the chart
            shapes += [_vline(v, "#2a9d8f", width=1, opacity=0.6) for v in levels if lo <= v <= hi]
            label = f"{len(levels)} levels"
        else:
            label = f"{len(levels)} levels (too dense to draw)"
        data.append(dict(type="scatter", x=[None], y=[None], mode="lines", line_color="#2a9d8f", name=label))
    title = f"{name}: weight distribution" + (" (histogram of a strided sample)" if sampled else "")
    return go.Figure(data=data, _validate=False, layout=dict(   # plain data we built: validating it costs 4x
        title=dict(text=title), barmode="overlay", bargap=0, height=height, margin=dict(t=50, b=40, l=50, r=20),
        xaxis=dict(title=dict(text="weight")), yaxis=dict(title=dict(text="count"), type="log" if log_y else None),
        shapes=shapes,
        legend=dict(orientation="h", y=-0.2)))


def sparsity_bars(names: Sequence[str], sparsity: Sequence[float]) -> go.Figure:
    """Fraction of zero weights per layer."""
    fig = go.Figure(go.Bar(x=list(names), y=list(sparsity), marker_color="#e4572e",
                           text=[f"{s:.0%}" for s in sparsity], textposition="outside"))
    fig.update_layout(title="Sparsity per layer", yaxis=dict(range=[0, 1.1], tickformat=".0%"),
                      height=300, margin=dict(t=50, b=40, l=50, r=20))
    return fig


def _downsample(m: torch.Tensor) -> torch.Tensor:
    rs = max(1, -(-m.shape[0] // MAX_HEATMAP))
    cs = max(1, -(-m.shape[1] // MAX_HEATMAP))
    return m[::rs, ::cs]


def weight_heatmap(name: str, weight: torch.Tensor) -> go.Figure:
    """The layer's weights as a matrix (out × in·kh·kw) beside its mask (non-zero positions)."""
    from plotly.subplots import make_subplots

    m = _downsample(weight.detach().float().reshape(weight.shape[0], -1))    # (out, in_flat), strided
    fig = make_subplots(rows=1, cols=2, subplot_titles=("weights", "mask (black = kept)"), horizontal_spacing=0.08)
    lim = float(m.abs().max()) or 1.0
    # numpy, not lists: plotly then sends typed arrays (base64), 10x faster to build and to serialise
    fig.add_heatmap(z=m.numpy(), colorscale="RdBu", zmin=-lim, zmax=lim, row=1, col=1,
                    colorbar=dict(x=1.02, len=0.9, title="w"))
    fig.add_heatmap(z=(m != 0).numpy().astype("uint8"), colorscale=[[0, "#ffffff"], [1, "#222222"]],
                    showscale=False, row=1, col=2)
    strided = " (strided view)" if tuple(m.shape) != (weight.shape[0], weight[0].numel()) else ""
    fig.update_layout(title=f"{name}: weights and mask{strided}", height=380, margin=dict(t=60, b=30, l=40, r=20))
    fig.update_yaxes(autorange="reversed")
    return fig


def singular_value_figure(name: str, singular_values: Sequence[float], rank: int | None = None) -> go.Figure:
    """The singular-value spectrum and its retained energy, with the chosen rank cut."""
    s = [float(v) for v in singular_values]
    total = sum(v * v for v in s) or 1.0
    energy, acc = [], 0.0
    for v in s:
        acc += v * v
        energy.append(acc / total)
    ranks = list(range(1, len(s) + 1))
    fig = go.Figure()
    fig.add_scatter(x=ranks, y=s, name="singular value", mode="lines")
    fig.add_scatter(x=ranks, y=energy, name="energy kept", yaxis="y2", mode="lines", line_dash="dot")
    if rank:
        fig.add_vline(x=rank, line_dash="dash", line_color="#e4572e")
        fig.add_annotation(x=rank, y=1, yref="paper", text=f"rank {rank}", showarrow=False, xanchor="left")
    fig.update_layout(title=f"{name}: singular values", height=320, xaxis_title="rank",
                      yaxis=dict(title="σ", type="log"), margin=dict(t=50, b=40, l=50, r=50),
                      yaxis2=dict(title="energy", overlaying="y", side="right", range=[0, 1.02], tickformat=".0%"),
                      legend=dict(orientation="h", y=-0.25))
    return fig


SERIES_COLORS = {"baseline": "#222222", "post-training": "#3d7dca", "sweep": "#9aa5b1", "fine-tuned": "#e4572e"}


ACCURACY_AXIS = {"name": "accuracy", "higher_is_better": True, "label": "accuracy"}


def pareto_figure(runs: list[dict[str, Any]], selected: int | None = None,
                  edges: list[tuple[int, int]] | None = None, metric: dict[str, Any] | None = None) -> go.Figure:
    """The task's metric against size (log bytes) for every run, the frontier drawn; one trace per series.

    ``metric``: ``report["metric"]`` ({"name", "higher_is_better", "label"}; default accuracy). Each run
    has its value under ``metric["name"]``; the frontier follows the metric's direction (perplexity:
    lower is better) and the y axis is labelled with ``metric["label"]``.
    Each point's ``customdata`` is its index in ``runs`` so a selection maps back to a run.
    ``edges`` (parent index, child index) draw lineage: a line from a run to the run made from it.
    """
    metric = metric or ACCURACY_AXIS
    name, percent = metric["name"], metric["name"] == "accuracy"
    fig = go.Figure()
    for parent, child in edges or []:
        fig.add_scatter(x=[runs[parent]["size_bytes"], runs[child]["size_bytes"]],
                        y=[runs[parent][name], runs[child][name]], mode="lines",
                        line=dict(color="#999999", width=1), showlegend=False, hoverinfo="skip")
    for series in dict.fromkeys(r["series"] for r in runs):
        idx = [i for i, r in enumerate(runs) if r["series"] == series]
        fig.add_scatter(
            x=[runs[i]["size_bytes"] for i in idx], y=[runs[i][name] for i in idx], mode="markers",
            name=series, customdata=idx, text=[runs[i]["label"] for i in idx],
            marker=dict(size=[14 if i == selected else 9 for i in idx], color=SERIES_COLORS.get(series, "#7b2cbf"),
                        line=dict(width=1, color="white")),
            hovertemplate="%{text}<br>%{y:" + (".2%" if percent else ".2f") + "} " + ("" if percent else name)
                          + " · %{x:,} bytes<extra>" + series + "</extra>",
        )
    front = sorted(pareto_front(runs, directions(name)), key=lambda i: runs[i]["size_bytes"])
    if len(front) > 1:
        fig.add_scatter(x=[runs[i]["size_bytes"] for i in front], y=[runs[i][name] for i in front],
                        mode="lines", line=dict(shape="hv", dash="dot", color="#e4572e"), name="frontier",
                        hoverinfo="skip")
    fig.update_layout(title=f"{name.capitalize()} vs size", xaxis=dict(title="size (bytes, log)", type="log"),
                      yaxis=dict(title=metric.get("label", name), tickformat=".1%" if percent else None), height=460,
                      clickmode="event+select", margin=dict(t=50, b=40, l=60, r=20))
    return fig


def _front_2d(points: list[dict[str, Any]], name: str, higher_is_better: bool) -> list[int]:
    """Indices of the points on the (metric, size) frontier, smallest first: one sort, not n² comparisons."""
    sign = 1 if higher_is_better else -1
    order = sorted(range(len(points)), key=lambda i: (points[i]["size_bytes"], -sign * points[i][name]))
    front, best = [], -math.inf
    for i in order:
        if sign * points[i][name] > best:
            front.append(i)
            best = sign * points[i][name]
    return front


def session_points_figure(points: list[dict[str, Any]], current: dict[str, Any] | None, metric_name: str,
                          higher_is_better: bool, label: str | None = None, height: int = 260) -> go.Figure:
    """A small plot of the task's metric against size (log bytes): earlier runs, and the configuration now.

    ``points``: runs as plot points (``size_bytes``, the metric under its name, ``series``, ``label``), as
    the Pareto plot takes them; the frontier of these is drawn dotted. ``current``: ``{"size_bytes",
    "value"}`` drawn as a star labelled "now", or, with ``"estimate": True``, "now (estimate)" with an error
    bar from ``"low"`` to ``"high"`` where those are given.

    >>> fig = session_points_figure([{"size_bytes": 100, "accuracy": 0.9, "series": "baseline", "label": "#1"}],
    ...                             {"size_bytes": 20, "value": 0.85}, "accuracy", True)
    >>> [t.name for t in fig.data], fig.data[-1].marker.symbol
    (['baseline', 'now'], 'star')
    """
    percent = metric_name == "accuracy"
    fmt = ".2%" if percent else ".3g"
    data: list[dict[str, Any]] = []
    for series in dict.fromkeys(p["series"] for p in points):
        mine = [p for p in points if p["series"] == series]
        data.append(dict(type="scatter", mode="markers", name=series, x=[p["size_bytes"] for p in mine],
                         y=[p[metric_name] for p in mine], text=[p["label"] for p in mine],
                         marker=dict(size=7, color=SERIES_COLORS.get(series, "#7b2cbf"),
                                     line=dict(width=1, color="white")),
                         hovertemplate="%{text}<br>%{y:" + fmt + "} · %{x:,} bytes<extra>" + series + "</extra>"))
    front = _front_2d(points, metric_name, higher_is_better)
    if len(front) > 1:
        data.append(dict(type="scatter", mode="lines", name="frontier", hoverinfo="skip",
                         x=[points[i]["size_bytes"] for i in front], y=[points[i][metric_name] for i in front],
                         line=dict(shape="hv", dash="dot", color="#e4572e", width=1)))
    if current is not None:
        estimate = bool(current.get("estimate"))
        label_now = "now (estimate)" if estimate else "now"
        now = dict(type="scatter", mode="markers+text", name=label_now, x=[current["size_bytes"]],
                   y=[current["value"]], text=[label_now], textposition="top center", cliponaxis=False,
                   marker=dict(symbol="star", size=16, color="#f4a261", line=dict(width=1, color="#222")),
                   hovertemplate=label_now + "<br>%{y:" + fmt
                                 + "} · %{x:,} bytes<extra></extra>")
        if estimate and current.get("low") is not None and current.get("high") is not None:
            now["error_y"] = dict(type="data", symmetric=False, array=[current["high"] - current["value"]],
                                  arrayminus=[current["value"] - current["low"]], color="#f4a261", thickness=2)
        data.append(now)
    better = "higher" if higher_is_better else "lower"
    return go.Figure(data=data, _validate=False, layout=dict(   # plain data we built: validating it costs 4x
        title=dict(text=f"{metric_name.capitalize()} vs size: this session"), height=height,
        xaxis=dict(title=dict(text="size (bytes, log)"), type="log"),
        yaxis=dict(title=dict(text=label or f"{metric_name} ({better} is better)"),
                   tickformat=".2%" if percent else None),
        margin=dict(t=40, b=40, l=60, r=10), showlegend=False))   # the star is labelled, the rest on hover


def training_curves(history: list[dict[str, Any]]) -> go.Figure:
    """Loss and train/validation accuracy against optimiser steps, from a fine-tuning history."""
    from plotly.subplots import make_subplots

    steps = [h["step"] for h in history]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    fig.add_scatter(x=steps, y=[h.get("loss") for h in history], name="loss", mode="lines", row=1, col=1)
    fig.add_scatter(x=steps, y=[h.get("train_accuracy") for h in history], name="train", mode="lines",
                    row=1, col=2)
    val = [(h["step"], h["val_accuracy"]) for h in history if h.get("val_accuracy") is not None]
    if val:
        fig.add_scatter(x=[v[0] for v in val], y=[v[1] for v in val], name="validation", mode="lines+markers",
                        row=1, col=2)
    fig.update_yaxes(tickformat=".0%", row=1, col=2)
    fig.update_xaxes(title_text="step")
    fig.update_layout(height=340, margin=dict(t=40, b=40, l=50, r=20), legend=dict(orientation="h", y=-0.25))
    return fig
