"""Weights: per-layer distributions with the threshold and levels drawn, statistics, sparsity, spectra."""

import pandas as pd
import streamlit as st

from pet_core.analysis import analyze, histogram, layer_stats, singular_values
from pet_core.figures import singular_value_figure, sparsity_bars, weight_heatmap, weight_histogram
from pet_core.methods.low_rank import rank_for_energy
from studio import state

state.init()  # also here: a fresh server's first run may execute this page alone
st.title("📊 Weights")
report = state.evaluate()
wb = state.workbench()
if report is None or wb is None:
    st.stop()

name = st.selectbox("Layer", wb.names, key="w_layer")
c1, c2 = st.columns(2)
log_y = c1.toggle("Log-scale counts", value=True)
overlay = c2.toggle("Overlay the compressed weights", value=True)

before = layer_stats(name, "", wb.baseline_weight(name))
after_w = wb.layers[name].weight.detach()
result = wb.result(name)
after_counts, zeros = None, 0
if overlay and result is not None:
    nonzero = after_w[after_w != 0]
    zeros = after_w.numel() - nonzero.numel()
    after_counts, _, _ = histogram(nonzero, len(before.hist_counts), before.hist_edges[0], before.hist_edges[-1])
st.plotly_chart(weight_histogram(
    name, before.hist_edges, before.hist_counts, after_counts,
    threshold=None if result is None else result.threshold,
    levels=None if result is None else result.levels, log_y=log_y, after_zeros=zeros, sampled=before.hist_sampled,
), width="stretch")
if result is not None and result.levels and (spec := wb.specs[name]).quantize and spec.quantize.granularity == "per_channel":
    st.caption("Levels drawn are those of the widest output channel (each channel has its own scale).")

stats = analyze(wb.model)
st.subheader("Statistics (compressed working copy)")
st.dataframe(pd.DataFrame([s.as_dict(with_arrays=False) for s in stats]), hide_index=True, width="stretch")
st.plotly_chart(sparsity_bars([s.name for s in stats], [s.sparsity for s in stats]), width="stretch")

st.subheader(f"{name}: weights, mask and spectrum")
st.plotly_chart(weight_heatmap(name, after_w), width="stretch")
spec = wb.specs[name]
rank = None if result is None else result.rank
sv = singular_values(wb.baseline_weight(name))
if rank is None and spec.low_rank is not None:
    rank = spec.low_rank.rank or rank_for_energy(sv, spec.low_rank.energy)
st.plotly_chart(singular_value_figure(name, sv.tolist(), rank), width="stretch")
