"""Weights: one layer's distribution with the threshold and levels drawn, its statistics before and after,
sparsity per layer; the spectrum and every layer's statistics on request.

Statistics are computed once per (layer, recipe) and kept in the session, so a click elsewhere reruns
this page without recomputing them; nothing here walks the whole model on every interaction.
"""

from collections import OrderedDict

import pandas as pd
import streamlit as st

from pet_core.analysis import layer_stats, singular_values
from pet_core.figures import singular_value_figure, sparsity_bars, weight_heatmap, weight_histogram
from pet_core.methods.low_rank import rank_for_energy
from studio import state
from studio.layer_view import baseline_stats, cached, overlay_counts, relative_error

ss = st.session_state
state.init()  # also here: a fresh server's first run may execute this page alone
st.title("Weights")
report = state.evaluate(progressive=True)   # no metric shown here: an estimate is enough, no wait
wb = state.workbench()
if report is None or wb is None:
    st.stop()
store = ss.setdefault("w_cache", OrderedDict())
source, recipe = (state.source_key(), id(wb.baseline)), state.recipe_identity()

name = st.selectbox("Layer", wb.names, key="w_layer", format_func=lambda n: f"{n} ({wb.layers[n].type}"
                    + (f", tied: {', '.join(wb.layers[n].tied)})" if wb.layers[n].tied else ")"))
c1, c2 = st.columns(2)
log_y = c1.toggle("Log-scale counts", value=True)
overlay = c2.toggle("Overlay the compressed weights", value=True)

target = wb.layers[name]
before = baseline_stats(store, source, wb, name)
result = wb.result(name)
after = before if result is None else cached(store, ("after", source, name, recipe),
                                             lambda: layer_stats(name, target.type, target.weight))

after_counts = None
if overlay and result is not None:
    after_counts = cached(store, ("overlay", source, name, recipe), lambda: overlay_counts(before, target.weight))
st.plotly_chart(weight_histogram(
    name, before.hist_edges, before.hist_counts, after_counts,
    threshold=None if result is None else result.threshold, levels=None if result is None else result.levels,
    log_y=log_y, after_zeros=wb.zero_weights(name), sampled=before.hist_sampled,
), width="stretch")
if result is not None and result.levels and (spec := wb.specs[name]).quantize and spec.quantize.granularity == "per_channel":
    st.caption("Levels drawn are those of the widest output channel (each channel has its own scale).")

st.subheader(f"{name}: statistics")
error = cached(store, ("error", source, name, recipe), lambda: relative_error(wb.baseline_weight(name), target.weight))
rows = [{"weights": "baseline", **before.as_dict(with_arrays=False)},
        {"weights": "compressed", **after.as_dict(with_arrays=False)}]
st.dataframe(pd.DataFrame(rows).drop(columns=["name"]), hide_index=True, width="stretch")
st.caption(f"Relative reconstruction error ‖W−Ŵ‖/‖W‖ = {error:.4f}"
           + (f" · tied: this tensor is also {', '.join(target.tied)}" if target.tied else ""))
bars = cached(store, ("sparsity", source, recipe), lambda: sparsity_bars(
    wb.names, [wb.zero_weights(n) / max(1, wb.layers[n].weight.numel()) for n in wb.names]))
st.plotly_chart(bars, width="stretch")

if st.toggle("Statistics of every layer (compressed working copy)", key="w_all",
             help="computed once per recipe; on a large model this takes a few seconds"):
    stats = cached(store, ("all", source, recipe),
                   lambda: [layer_stats(n, t.type, t.weight) for n, t in wb.layers.items()])
    st.dataframe(pd.DataFrame([s.as_dict(with_arrays=False) for s in stats]), hide_index=True, width="stretch")

st.subheader(f"{name}: weights and mask")
st.plotly_chart(cached(store, ("heatmap", source, name, recipe), lambda: weight_heatmap(name, target.weight)),
                width="stretch")
if st.toggle("Singular-value spectrum", key="w_svd", help="an SVD of the layer's baseline weight: computed once "
                                                          "per layer, on request (slow on a large matrix)"):
    sv = cached(store, ("svd", source, name), lambda: singular_values(wb.baseline_weight(name)))
    spec = wb.specs[name]
    rank = None if result is None else result.rank
    if rank is None and spec.low_rank is not None:
        rank = spec.low_rank.rank or rank_for_energy(sv, spec.low_rank.energy)
    st.plotly_chart(singular_value_figure(name, sv.tolist(), rank), width="stretch")
