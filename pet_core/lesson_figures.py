"""The live figure of each lesson, drawn on the current model (a fresh working copy; the baseline and the
session's copy are never touched). ``lesson_figure(kind, baseline, recipe)`` → a plotly figure.

Kinds: ``histogram`` (the largest layer's weights with the pruning threshold, quantization levels or
k-means centroids of ``recipe``), ``channels`` (output-channel L2 norms, the pruned ones marked),
``spectrum`` (singular values with the rank cut), ``nm_pattern`` (a corner of the N:M mask),
``temperature`` (one test example's softmax at T = 1 and T = 4), ``pipeline`` (bytes after each Deep
Compression stage), ``sparsity_curve`` (accuracy against global magnitude sparsity, no retraining).
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import torch

from pet_core.errors import PetError
from pet_core.figures import singular_value_figure, weight_histogram
from pet_core.lessons import applied, teacher_logits
from pet_core.recipe import Recipe

CURVE_SPARSITIES = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
HEIGHT = 340


def _largest(wb) -> str:
    if not wb.names:
        raise PetError("this model has no compressible layer to draw")
    return max(wb.names, key=lambda n: wb.layers[n].weight.numel())


def histogram(baseline, recipe: dict) -> go.Figure:
    from pet_core.analysis import layer_stats

    wb = applied(baseline, recipe)
    name = _largest(wb)
    before = layer_stats(name, wb.layers[name].type, wb.baseline_weight(name))
    result = wb.result(name)
    import numpy as np

    w = wb.layers[name].weight.detach().float().flatten().numpy()
    kept = w[w != 0]
    counts, _ = np.histogram(kept, bins=len(before.hist_counts), range=(before.hist_edges[0], before.hist_edges[-1]))
    return weight_histogram(name, before.hist_edges, before.hist_counts, counts.tolist(), log_y=True,
                            threshold=None if result is None else result.threshold,
                            levels=None if result is None else result.levels, after_zeros=int((w == 0).sum()),
                            height=HEIGHT)


def channels(baseline, recipe: dict) -> go.Figure:
    wb = applied(baseline, recipe)
    name = _largest(wb)
    before = wb.baseline_weight(name).detach().float()
    after = wb.layers[name].weight.detach().float()
    norms = before.flatten(1).norm(dim=1)
    removed = after.flatten(1).abs().sum(dim=1) == 0
    order = torch.argsort(norms)
    colors = ["#e4572e" if removed[i] else "#8fa8c8" for i in order.tolist()]
    fig = go.Figure(go.Bar(x=list(range(len(order))), y=norms[order].tolist(), marker_color=colors,
                           hovertext=[f"channel {i}" for i in order.tolist()]))
    fig.update_layout(title=f"{name}: output channels by L2 norm (red: removed, {int(removed.sum())} of {len(norms)})",
                      xaxis_title="channel (sorted by norm)", yaxis_title="‖W_c‖₂", height=HEIGHT,
                      margin=dict(t=50, b=40, l=50, r=20))
    return fig


def spectrum(baseline, recipe: dict) -> go.Figure:
    from pet_core.analysis import singular_values

    wb = applied(baseline, recipe)
    name = _largest(wb)
    s = singular_values(wb.baseline_weight(name))
    result = wb.result(name)
    rank = getattr(result, "rank", None) if result is not None else None
    fig = singular_value_figure(name, s.tolist(), rank)
    fig.update_layout(height=HEIGHT)
    return fig


def nm_pattern(baseline, recipe: dict) -> go.Figure:
    wb = applied(baseline, recipe)
    name = _largest(wb)
    w = wb.layers[name].weight.detach().float().flatten(1)[:16, :32]
    fig = go.Figure(go.Heatmap(z=(w != 0).int().tolist(), colorscale=[[0, "#f4f4f4"], [1, "#e4572e"]], showscale=False,
                               xgap=1, ygap=1))
    fig.update_layout(title=f"{name}: kept weights (red) in the first 16 outputs × 32 inputs",
                      xaxis_title="input", yaxis_title="output", yaxis_autorange="reversed", height=HEIGHT,
                      margin=dict(t=50, b=40, l=50, r=20))
    return fig


def temperature(baseline, recipe: dict, temperatures: tuple[float, ...] = (1.0, 4.0)) -> go.Figure:
    logits = teacher_logits(baseline, 1)[0]
    fig = go.Figure()
    for t, color in zip(temperatures, ("#8fa8c8", "#e4572e", "#2a9d8f")):
        p = torch.softmax(logits / t, dim=0)
        fig.add_bar(x=[str(i) for i in range(len(p))], y=p.tolist(), name=f"T = {t:g}", marker_color=color)
    fig.update_layout(title="The teacher's soft targets for one test example", xaxis_title="class",
                      yaxis_title="probability", barmode="group", height=HEIGHT, margin=dict(t=50, b=40, l=50, r=20))
    return fig


def pipeline(baseline, recipe: dict) -> go.Figure:
    """Bytes after each stage of ``recipe`` (prune, then + quantize/share), and with Huffman coding."""
    from pet_core.loader import open_workbench

    default = (recipe.get("default") or {})
    stages = [("dense fp32", {})]
    if "prune" in default:
        stages.append(("pruned", {"prune": default["prune"]}))
    if set(default) - {"prune"}:
        stages.append(("+ " + ", ".join(k for k in default if k != "prune"), default))
    wb = open_workbench(baseline)
    names, sizes = [], []
    for label, steps in stages:
        wb.apply(Recipe.from_dict({"pet_recipe": 1, "default": steps}))
        names.append(label)
        sizes.append(sum(r.size_bytes for r in wb.sizes()))
    names.append("+ Huffman")
    sizes.append(wb.size_bytes_huffman())
    fig = go.Figure(go.Bar(x=names, y=sizes, text=[f"{s:,} B" for s in sizes], textposition="outside",
                           marker_color=["#8fa8c8"] + ["#e4572e"] * (len(sizes) - 1)))
    fig.update_layout(title="Accounted bytes after each Deep Compression stage", yaxis_title="bytes",
                      yaxis_type="log", height=HEIGHT, margin=dict(t=50, b=40, l=50, r=20))
    return fig


def sparsity_curve(baseline, recipe: dict) -> go.Figure:
    from pet_core.loader import open_workbench

    wb = open_workbench(baseline)
    if not wb.measures:
        raise PetError("the sparsity curve needs a dataset")
    values = []
    for s in CURVE_SPARSITIES:
        wb.apply(Recipe.from_dict({"pet_recipe": 1, "default": {"prune": {"sparsity": s}} if s else {}}))
        values.append(wb.evaluate())
    fig = go.Figure(go.Scatter(x=[100 * s for s in CURVE_SPARSITIES], y=values, mode="lines+markers",
                               line=dict(color="#e4572e")))
    fig.update_layout(title=f"{wb.metric.name} after pruning, before any retraining", xaxis_title="sparsity (%)",
                      yaxis_title=wb.metric.name, height=HEIGHT, margin=dict(t=50, b=40, l=50, r=20))
    return fig


FIGURES = {"histogram": histogram, "channels": channels, "spectrum": spectrum, "nm_pattern": nm_pattern,
           "temperature": temperature, "pipeline": pipeline, "sparsity_curve": sparsity_curve}


def lesson_figure(kind: str, baseline, recipe: dict[str, Any]) -> go.Figure:
    if kind not in FIGURES:
        raise PetError(f"no lesson figure {kind!r} (allowed: {', '.join(FIGURES)})")
    return FIGURES[kind](baseline, recipe)
