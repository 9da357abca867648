"""Pareto: accuracy against bytes for every run of the session; click a point to load its recipe."""

import pandas as pd
import streamlit as st

from pet_core.figures import pareto_figure
from pet_core.recipe import Recipe
from studio import state
from studio.jobs import JobHandle, SweepJob

ss = st.session_state
state.init()  # also here: a fresh server's first run may execute this page alone
st.title("📈 Pareto")
wb = state.workbench()
if wb is None:
    st.stop()
state.evaluate()

with st.expander("Sweep a grid in the background (sparsity × bits)"):
    c1, c2 = st.columns(2)
    sparsities = c1.multiselect("Sparsities", [0.5, 0.7, 0.8, 0.9, 0.95, 0.98], default=[0.5, 0.8, 0.9, 0.95])
    bits = c2.multiselect("Bits", [2, 3, 4, 5, 6, 8], default=[2, 4, 8])
    handle = ss.get("sweep")
    running = handle is not None and not handle.job.done
    if c1.button("▶️ Run sweep", disabled=running or not sparsities or not bits):
        base = state.baseline()
        ss["sweep"] = JobHandle(SweepJob(base.model, base.dataset.x_test, base.dataset.y_test,
                                         state.recipe(), sorted(sparsities), sorted(bits)).start())
        ss["sweep_source"] = state.source_key()
        st.rerun()
    if c2.button("⏹️ Stop sweep", disabled=not running):
        handle.job.stop_flag.set()


@st.fragment(run_every=1.0 if (h := ss.get("sweep")) is not None and not h.job.done else None)
def chart() -> None:
    handle = ss.get("sweep")
    if handle is not None and ss.get("sweep_source") == state.source_key():
        for point in list(handle.job.points):
            state.add_run(point)
        job = handle.job
        if job.error:
            st.error(f"The sweep stopped: {job.error}")
        elif not job.done:
            st.progress(len(job.points) / len(job.grid), text=f"Sweep: {len(job.points)}/{len(job.grid)} points")
        elif ss.get("sweep_seen") is not job:
            ss["sweep_seen"] = job
            st.rerun()   # a full rerun turns the timer off
    runs = state.runs()
    event = st.plotly_chart(pareto_figure(runs, ss.get("pareto_selected")), on_select="rerun",
                            selection_mode="points", key="pareto_chart", width="stretch")
    points = event.selection.points if event and event.selection else []
    if points:
        index = points[0].get("customdata")
        index = index[0] if isinstance(index, list) else index
        if index is not None and index != ss.get("pareto_selected") and index < len(runs):
            ss["pareto_selected"] = index
            run = runs[index]
            state.set_recipe(Recipe.from_dict(run["recipe"]) if run["recipe"] else Recipe())
            st.success(f"Loaded **{run['label']}** into Compress.")
            st.page_link("pages/compress.py", label="Open Compress", icon="🎚️")
    table = pd.DataFrame([{k: r[k] for k in ("series", "label", "accuracy", "size_bytes", "compression_ratio")}
                          for r in runs])
    st.dataframe(table, hide_index=True, width="stretch")


chart()
