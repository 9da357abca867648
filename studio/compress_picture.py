"""The picture beside the Compress sliders: one layer's weight histogram, with the pruning threshold and
the quantization levels moving with the recipe, and this session's runs on a small metric-vs-size plot
with the configuration now starred.

Cheap on every slider move: the layer's baseline histogram is computed once per layer (shared with the
Weights page); a move recomputes only that layer's overlay counts, its lines and the star.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import streamlit as st

from pet_core.figures import session_points_figure, weight_histogram
from pet_core.workbench import Workbench
from studio import metric_view, state
from studio.layer_view import baseline_stats, cached, largest_layer, overlay_counts
from studio.pareto_view import run_points

ss = st.session_state
HEIGHT = 260      # px: small enough to sit beside the controls


def show(wb: Workbench, report: dict[str, Any]) -> None:
    """Draw the layer histogram and the session plot of ``report`` (the session's latest) in two columns."""
    left, right = st.columns(2)
    with left:
        layer_histogram(wb)
    with right:
        session_plot(report)


def pick_layer(wb: Workbench) -> str:
    """A small selectbox of the layer to draw: the last one picked (across pages), else the largest."""
    chosen = ss.get("cp_layer_chosen")
    if chosen not in wb.layers:
        chosen = largest_layer(wb)
    name = st.selectbox("Layer drawn", wb.names, index=wb.names.index(chosen), key="cp_layer",
                        format_func=lambda n: f"{n} ({wb.layers[n].type}, {wb.layers[n].weight.numel():,} weights)")
    ss["cp_layer_chosen"] = name      # a widget's own state is dropped while another page shows
    return name


def layer_histogram(wb: Workbench) -> None:
    """The picked layer's baseline histogram, its compressed non-zero weights, the threshold and the levels."""
    if not wb.names:
        st.caption("This model has no compressible layer to draw.")
        return
    name = pick_layer(wb)
    source, recipe = (state.source_key(), id(wb.baseline)), state.recipe_identity()
    # the Weights page's store: a layer's baseline statistics are computed once for both pages
    before = baseline_stats(ss.setdefault("w_cache", OrderedDict()), source, wb, name)

    def figure():
        result = wb.result(name)
        return weight_histogram(
            name, before.hist_edges, before.hist_counts,
            None if result is None else overlay_counts(before, wb.layers[name].weight), log_y=True, height=HEIGHT,
            threshold=None if result is None else result.threshold, levels=None if result is None else result.levels,
            after_zeros=wb.zero_weights(name), sampled=before.hist_sampled)

    # a rerun that changed nothing (a click elsewhere, the exact number arriving) redraws the same figure
    store = ss.setdefault("cp_cache", OrderedDict())
    st.plotly_chart(cached(store, ("histogram", source, name, recipe), figure, limit=4),
                    width="stretch", key="cp_histogram")


def current_point(report: dict[str, Any], metric_name: str) -> dict[str, Any]:
    """The configuration now as a point: its bytes and metric; an estimate (``evaluation.exact`` False)
    says so and carries its bounds where the report gives them.

    >>> current_point({"compressed": {"accuracy": 0.9, "size_bytes": 10}}, "accuracy")["estimate"]
    False
    """
    evaluation = report.get("evaluation") or {}
    return {"size_bytes": report["compressed"]["size_bytes"], "value": report["compressed"][metric_name],
            "estimate": evaluation.get("exact") is False, "low": evaluation.get("low"), "high": evaluation.get("high")}


def session_figure(report: dict[str, Any]):
    """The metric against size: this user's earlier runs of this source and ``report`` starred, once per report.

    The ledger is read when the report changes (each evaluation records a run): runs a background job
    adds appear with the next evaluation. The run ``report`` was recorded as is the star, not a point.
    """
    kept = ss.get("cp_session")
    if kept is None or kept[0] is not report:
        metric = metric_view.metric_of(report)
        points = [p for p in run_points(state.runs(), metric.name) if p["id"] != report.get("run_id")]
        kept = ss["cp_session"] = (report, session_points_figure(points, current_point(report, metric.name),
                                                                 metric.name, metric.higher_is_better, height=HEIGHT))
    return kept[1]


def session_plot(report: dict[str, Any]) -> None:
    """The session plot, or one line where the metric is not measured (weights only)."""
    metric = metric_view.metric_of(report)
    if report["compressed"].get(metric.name) is None or not metric_view.measured(report):
        st.caption(f"{metric_view.title(metric)} is not measured (weights only): no {metric.name}-vs-size plot.")
        return
    st.plotly_chart(session_figure(report), width="stretch", key="cp_session_plot")
