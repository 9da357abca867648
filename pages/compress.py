"""Compress: global controls and per-layer overrides; accuracy and bytes update on every change."""

import pandas as pd
import streamlit as st
import yaml

from pet_core.errors import PetError
from pet_core.layers import module_type
from pet_core.recipe import to_token
from pet_core.steps import resolve
from studio import state
from studio.controls import (BITS_CHOICES, CODINGS, LOW_RANK_MODES, PRUNE_METHODS, TABLE_BITS,
                             default_from_controls, layers_from_rows, split_layers, table_rows)

ss = st.session_state
state.init()  # also here: a fresh server's first run may execute this page alone
st.title("🎚️ Compress")
wb = state.workbench()
if wb is None:
    st.stop()

c1, c2, c3 = st.columns(3)
with c1.container(border=True):
    st.selectbox("✂️ Pruning", PRUNE_METHODS, key="c_prune_method",
                 help="magnitude: smallest |w| anywhere; l1/l2_channel: whole output channels by norm")
    if ss["c_prune_method"] != "off":
        st.radio("By", ["sparsity", "threshold"], key="c_prune_by", horizontal=True)
        if ss["c_prune_by"] == "sparsity":
            st.slider("Sparsity", 0.0, 1.0, step=0.01, key="c_sparsity", help="fraction of weights set to zero")
        else:
            st.number_input("Threshold", min_value=0.0, step=0.005, format="%.4f", key="c_threshold")
        if ss["c_prune_method"] == "magnitude":
            st.radio("Scope", ["global", "layer"], key="c_scope", horizontal=True,
                     help="global: one threshold across layers; layer: every layer at the same sparsity")
with c2.container(border=True):
    st.radio("🔢 Weights stored as", CODINGS, key="c_coding", horizontal=True,
             format_func={"none": "fp32", "quantize": "k-bit levels", "share": "k-means codebook"}.get)
    if ss["c_coding"] == "quantize":
        st.select_slider("Bits", BITS_CHOICES, key="c_bits")
        st.radio("Scheme", ["symmetric", "asymmetric"], key="c_scheme", horizontal=True)
        st.radio("Granularity", ["per_channel", "per_tensor"], key="c_granularity", horizontal=True)
    elif ss["c_coding"] == "share":
        st.slider("Clusters (k)", 2, 256, key="c_clusters", help="indices take ⌈log2 k⌉ bits")
with c3.container(border=True):
    st.radio("📉 Low rank (SVD)", LOW_RANK_MODES, key="c_low_rank", horizontal=True)
    if ss["c_low_rank"] == "energy":
        st.slider("Energy kept", 0.01, 1.0, step=0.01, key="c_energy")
    elif ss["c_low_rank"] == "rank":
        st.number_input("Rank", min_value=1, max_value=100_000, step=1, key="c_rank")

# Per-layer overrides: a table built from the recipe once per loaded recipe (table_version).
version = ss["table_version"]
if ss.get("table_base", (None,))[0] != version or ss.get("table_base")[3] != wb.names:
    table, extra = split_layers(state.recipe().layers, wb.names)
    info = [{"name": n, "type": module_type(m), "params": m.weight.numel()} for n, m in wb.layers.items()]
    ss["table_base"] = (version, pd.DataFrame(table_rows(info, table)), extra, wb.names)
_, base_rows, extra, _ = ss["table_base"]
with st.expander("Per-layer overrides (empty cell = use the global setting)", expanded=False):
    edited = st.data_editor(
        base_rows, key=f"layer_table_{version}", hide_index=True, width="stretch",
        disabled=["layer", "type", "params"],
        column_config={
            "skip": st.column_config.CheckboxColumn("skip", help="leave this layer uncompressed"),
            "sparsity": st.column_config.NumberColumn("sparsity", min_value=0.0, max_value=1.0, step=0.01),
            "bits": st.column_config.SelectboxColumn("bits", options=list(TABLE_BITS)),
            "clusters": st.column_config.NumberColumn("clusters", min_value=2, max_value=256, step=1),
            "rank": st.column_config.NumberColumn("rank", min_value=1, step=1),
        },
    )
    if extra:
        st.caption("Advanced overrides from the loaded recipe (globs or other fields), applied before the table:")
        st.code(yaml.safe_dump(extra, sort_keys=False), language="yaml")

src = ss["source"]
layers = {**extra, **layers_from_rows(edited.to_dict("records"))}
try:
    candidate = state.recipe().replace(model=src["model"], dataset=src["dataset"],   # replace() validates
                                       default=default_from_controls(ss), layers=layers)
    resolve(candidate.default, candidate.layers, wb.names)   # and this the layer names
    ss["recipe"] = candidate
except PetError as exc:
    st.error(f"These settings are not valid, the last valid ones are kept: {exc}")

report = state.evaluate()
if report is None:
    st.stop()
st.query_params["recipe"] = to_token(state.recipe())
b, c = report["baseline"], report["compressed"]
m = st.columns(5)
m[0].metric("Accuracy", f"{c['accuracy']:.2%}", f"{(c['accuracy'] - b['accuracy']) * 100:+.2f} pts")
m[1].metric("Size", f"{c['size_bytes']:,} B", help="accounted: bytes of the chosen encoding, see the table")
m[2].metric("Compression", f"{c['compression_ratio']:.2f}×", help=f"baseline {b['size_bytes']:,} B dense fp32")
m[3].metric("Weight sparsity", f"{c['weight_sparsity']:.1%}")
m[4].metric("Non-zero params", f"{c['nonzero_params']:,}")
huff = c.get("size_bytes_huffman")
st.caption("Accuracy is **measured** on the decoded weights; sizes are **accounted** (the bytes each tensor's "
           "encoding takes; Export writes the packed file and measures it); masks and fake quantization give "
           "**no speed-up** (simulated: physical pruning and ONNX int8 on Export are the real ones)."
           + (f" With Huffman coding: {huff:,} B ({b['size_bytes'] / huff:.1f}×, accounted)." if huff else ""))
rows = pd.DataFrame(report["layers"]).drop(columns=["tensors"])
st.dataframe(rows, hide_index=True, width="stretch")
