"""Compress: global controls and per-layer overrides; accuracy and bytes update on every change.

The widgets are views of the recipe: they start from it (keys versioned by the recipe) and a change
writes it. Nothing here rebuilds the recipe from widgets of another version.
"""

import pandas as pd
import streamlit as st
import yaml

from pet_core.errors import PetError
from pet_core.layers import module_type
from pet_core.recipe import to_token
from pet_core.steps import resolve
from studio import state
from studio.controls import (BITS_CHOICES, CODINGS, LOW_RANK_MODES, PRUNE_METHODS, TABLE_BITS,
                             controls_from_default, default_from_controls, layers_from_rows, split_layers, table_rows)

ss = st.session_state
state.init()  # also here: a fresh server's first run may execute this page alone
st.title("🎚️ Compress")
wb = state.workbench()
if wb is None:
    st.stop()

k = state.widget_key
now = controls_from_default(state.recipe().default)   # the widgets' values, from the recipe
ctl = dict(now)
c1, c2, c3 = st.columns(3)
with c1.container(border=True):
    ctl["c_prune_method"] = st.selectbox("✂️ Pruning", PRUNE_METHODS, index=PRUNE_METHODS.index(now["c_prune_method"]),
                                       key=k("c_prune_method"),
                                       help="magnitude: smallest |w| anywhere; l1/l2_channel: whole output channels by norm")
    if ctl["c_prune_method"] != "off":
        ctl["c_prune_by"] = st.radio("By", ["sparsity", "threshold"], index=["sparsity", "threshold"].index(now["c_prune_by"]),
                                   key=k("c_prune_by"), horizontal=True)
        if ctl["c_prune_by"] == "sparsity":
            ctl["c_sparsity"] = st.slider("Sparsity", 0.0, 1.0, value=float(now["c_sparsity"]), step=0.01,
                                        key=k("c_sparsity"), help="fraction of weights set to zero")
        else:
            ctl["c_threshold"] = st.number_input("Threshold", min_value=0.0, value=float(now["c_threshold"]), step=0.005,
                                               format="%.4f", key=k("c_threshold"))
        if ctl["c_prune_method"] == "magnitude":
            ctl["c_scope"] = st.radio("Scope", ["global", "layer"], index=["global", "layer"].index(now["c_scope"]),
                                    key=k("c_scope"), horizontal=True,
                                    help="global: one threshold across layers; layer: every layer at the same sparsity")
with c2.container(border=True):
    ctl["c_coding"] = st.radio("🔢 Weights stored as", CODINGS, index=CODINGS.index(now["c_coding"]), key=k("c_coding"),
                             horizontal=True,
                             format_func={"none": "fp32", "quantize": "k-bit levels", "share": "k-means codebook"}.get)
    if ctl["c_coding"] == "quantize":
        ctl["c_bits"] = st.select_slider("Bits", BITS_CHOICES, value=now["c_bits"], key=k("c_bits"))
        ctl["c_scheme"] = st.radio("Scheme", ["symmetric", "asymmetric"], key=k("c_scheme"), horizontal=True,
                                 index=["symmetric", "asymmetric"].index(now["c_scheme"]))
        ctl["c_granularity"] = st.radio("Granularity", ["per_channel", "per_tensor"], key=k("c_granularity"),
                                      horizontal=True, index=["per_channel", "per_tensor"].index(now["c_granularity"]))
    elif ctl["c_coding"] == "share":
        ctl["c_clusters"] = st.slider("Clusters (k)", 2, 256, value=int(now["c_clusters"]), key=k("c_clusters"),
                                    help="indices take ⌈log2 k⌉ bits")
with c3.container(border=True):
    ctl["c_low_rank"] = st.radio("📉 Low rank (SVD)", LOW_RANK_MODES, index=LOW_RANK_MODES.index(now["c_low_rank"]),
                               key=k("c_low_rank"), horizontal=True)
    if ctl["c_low_rank"] == "energy":
        ctl["c_energy"] = st.slider("Energy kept", 0.01, 1.0, value=float(now["c_energy"]), step=0.01, key=k("c_energy"))
    elif ctl["c_low_rank"] == "rank":
        ctl["c_rank"] = st.number_input("Rank", min_value=1, max_value=100_000, value=int(now["c_rank"]), step=1,
                                      key=k("c_rank"))

# Per-layer overrides: a table built from the recipe, keyed by the recipe version.
table, extra = split_layers(state.recipe().layers, wb.names)
info = [{"name": n, "type": module_type(m), "params": m.weight.numel()} for n, m in wb.layers.items()]
with st.expander("Per-layer overrides (empty cell = use the global setting)", expanded=False):
    edited = st.data_editor(
        pd.DataFrame(table_rows(info, table)), key=k("layer_table"), hide_index=True, width="stretch",
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
                                       default=default_from_controls(ctl), layers=layers)
    resolve(candidate.default, candidate.layers, wb.names)   # and this the layer names
    if candidate.to_dict() != state.recipe().to_dict():
        state.write_recipe(candidate)
except PetError as exc:
    st.error("These settings are not valid, the last valid ones are kept:")
    st.code(str(exc), language=None, wrap_lines=True)

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
           + (f" With Huffman coding: {huff:,} B ({b['size_bytes'] / huff:.1f}×, accounted)." if huff else "")
           + (f" Recorded as run #{report['run_id']}." if report.get("run_id") else ""))
rows = pd.DataFrame(report["layers"]).drop(columns=["tensors"])
st.dataframe(rows, hide_index=True, width="stretch")
