"""Plotly figures from plain data: the app and the HTML report draw the same pictures."""

from __future__ import annotations

import math
from typing import Any, Sequence

import plotly.graph_objects as go
import torch

from pet_core.pareto import directions, pareto_front

MAX_HEATMAP = 256
MAX_LEVELS_DRAWN = 64


def weight_histogram(name: str, edges: Sequence[float], before: Sequence[int], after: Sequence[int] | None = None,
                     threshold: float | None = None, levels: Sequence[float] | None = None,
                     log_y: bool = False, after_zeros: int = 0, sampled: bool = False) -> go.Figure:
    """Histogram of a layer's weights with the pruning threshold (±t) and quantisation levels drawn."""
    centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    width = edges[1] - edges[0] if len(edges) > 1 else 1.0
    fig = go.Figure()
    fig.add_bar(x=centers, y=list(before), width=width, name="baseline", marker_color="#8fa8c8", opacity=0.7)
    if after is not None:
        fig.add_bar(x=centers, y=list(after), width=width, marker_color="#e4572e", opacity=0.6,
                    name=f"compressed (non-zero; {after_zeros:,} zeros not drawn)")
    if threshold is not None and math.isfinite(threshold):
        for x in (-threshold, threshold):
            fig.add_vline(x=x, line_dash="dash", line_color="#222")
        fig.add_scatter(x=[None], y=[None], mode="lines", line=dict(color="#222", dash="dash"),
                        name=f"pruning threshold ±{threshold:.3g}")
    if levels:
        lo, hi = edges[0], edges[-1]
        if len(levels) <= MAX_LEVELS_DRAWN:   # more lines than this only hatch the chart
            for v in levels:
                if lo <= v <= hi:
                    fig.add_vline(x=v, line_width=1, line_color="#2a9d8f", opacity=0.6)
            label = f"{len(levels)} levels"
        else:
            label = f"{len(levels)} levels (too dense to draw)"
        fig.add_scatter(x=[None], y=[None], mode="lines", line_color="#2a9d8f", name=label)
    title = f"{name}: weight distribution" + (" (histogram of a strided sample)" if sampled else "")
    fig.update_layout(title=title, barmode="overlay", bargap=0, height=360, margin=dict(t=50, b=40, l=50, r=20),
                      xaxis_title="weight", yaxis_title="count", legend=dict(orientation="h", y=-0.2))
    if log_y:
        fig.update_yaxes(type="log")
    return fig


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
    fig.add_heatmap(z=m.tolist(), colorscale="RdBu", zmin=-lim, zmax=lim, row=1, col=1,
                    colorbar=dict(x=1.02, len=0.9, title="w"))
    fig.add_heatmap(z=(m != 0).int().tolist(), colorscale=[[0, "#ffffff"], [1, "#222222"]], showscale=False,
                    row=1, col=2)
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
