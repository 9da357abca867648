"""Compress: global controls and per-layer overrides; the task's metric and bytes update on every change.

The widgets are views of the recipe: they start from it (keys versioned by the recipe) and a change
writes it. Nothing here rebuilds the recipe from widgets of another version.
"""

import pandas as pd
import streamlit as st
import yaml

from pet_core.errors import PetError
from pet_core.recipe import to_token
from pet_core.steps import resolve
from studio import metric_view, state
from studio import compress_picture
from pet_core.methods import METHODS
from studio.controls import (Control, column_specs, controls_from_default, default_from_controls, groups,
                             layers_from_rows, method_controls, split_layers, table_rows)

ss = st.session_state
state.init()  # also here: a fresh server's first run may execute this page alone
st.title("Compress")
wb = state.workbench()
if wb is None:
    st.stop()

k = state.widget_key
now = controls_from_default(state.recipe().default)   # the widgets' values, from the recipe
ctl = dict(now)


def show(control: Control) -> None:
    """Draw one generated control with the recipe's value; its value goes into ``ctl``."""
    kw, value = dict(control.kwargs), now[control.key]
    if control.widget in ("radio", "selectbox"):
        kw["index"] = kw["options"].index(value)
    else:
        kw["value"] = value
    ctl[control.key] = getattr(st, control.widget)(control.label, key=k(control.key), **kw)


for column, group in zip(st.columns(len(groups())), groups()):
    with column.container(border=True):
        ctl[group.key] = picked = getattr(st, group.picker)(
            group.title, group.options, index=group.options.index(now[group.key]), key=k(group.key),
            format_func=group.labels.get, help=group.help,
            **({"horizontal": True} if group.picker == "radio" else {}))
        if picked != "off":
            for control in method_controls(METHODS[picked], ctl):
                show(control)

# Per-layer overrides: a table built from the recipe, keyed by the recipe version.
table, extra = split_layers(state.recipe().to_dict().get("layers", {}), wb.names)
info = [{"name": n, "type": t.type, "params": t.weight.numel()} for n, t in wb.layers.items()]
columns = {"skip": st.column_config.CheckboxColumn("skip", help="leave this layer uncompressed")}
for name, spec in column_specs().items():
    if "options" in spec:
        columns[name] = st.column_config.SelectboxColumn(name, options=spec["options"], help=spec["help"])
    else:
        columns[name] = st.column_config.NumberColumn(name, min_value=spec["min"], max_value=spec["max"],
                                                      step=spec["step"], help=spec["help"])
with st.expander("Per-layer overrides (empty cell = use the global setting)", expanded=False):
    edited = st.data_editor(pd.DataFrame(table_rows(info, table)), key=k("layer_table"), hide_index=True,
                            width="stretch", disabled=["layer", "type", "params"], column_config=columns)
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

report = state.evaluate(progressive=True)
if report is None:
    st.stop()
st.query_params["recipe"] = to_token(state.recipe())
b, c = report["baseline"], report["compressed"]
metric = metric_view.metric_of(report)
m = st.columns(5)
metric_view.show_report(m[0], report, help=f"{metric.label}, measured on the decoded weights:")
m[1].metric("Size", f"{c['size_bytes']:,} B", help="accounted: bytes of the chosen encoding, see the table")
m[2].metric("Compression", f"{c['compression_ratio']:.2f}×", help=f"baseline {b['size_bytes']:,} B dense fp32")
m[3].metric("Weight sparsity", f"{c['weight_sparsity']:.1%}")
m[4].metric("Non-zero params", f"{c['nonzero_params']:,}")
huff = c.get("size_bytes_huffman")
st.caption((f"{metric.name.capitalize()} is **measured** on the decoded weights "
            f"({metric_view.evaluation_text(report)}"
            + ("; the exact number follows in a moment)" if metric_view.estimated(report) else ")")
            if metric_view.measured(report) else
            f"{metric.name.capitalize()} is **not measured** (weights only: no dataset)")
           + "; sizes are **accounted** (the bytes each tensor's "
           "encoding takes; Export writes the packed file and measures it); masks and fake quantization give "
           "**no speed-up** (simulated: physical pruning and ONNX int8 on Export are the real ones)."
           + (f" With Huffman coding: {huff:,} B ({b['size_bytes'] / huff:.1f}×, accounted)." if huff else
              " The Huffman-coded size comes with the exact number." if metric_view.estimated(report) else
              " The Huffman-coded size of a model this large is computed on Export, not on every move.")
           + (f" Recorded as run #{report['run_id']}." if report.get("run_id") else ""))
if metric_view.estimated(report):
    @st.fragment(run_every=state.poll_seconds())
    def exact_watch() -> None:
        """Polls the background exact evaluation; the whole page reruns with the exact number."""
        if state.exact_ready():
            st.rerun(scope="app")

    exact_watch()
compress_picture.show(wb, report)
rows = pd.DataFrame(state.layer_rows(report))
st.dataframe(rows, hide_index=True, width="stretch", column_config={
    "relative_error": st.column_config.NumberColumn("‖W−Ŵ‖/‖W‖", format="%.4f",
                                                    help="relative reconstruction error of the weight (Frobenius)")})
