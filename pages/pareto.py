"""Pareto: the task's metric (accuracy, perplexity) against bytes for every run of this model and dataset.

Runs survive reloads and restarts; lines join a run to the run made from it (lineage). Click a
point to load its recipe into Compress. Sweeps run as jobs in a worker process.
"""

import pandas as pd
import streamlit as st

from pet_core.errors import PetError
from pet_core.figures import pareto_figure
from pet_core.recipe import Recipe
from studio import jobs, state
from studio.text import plain
from studio.pareto_view import lineage_edges, run_points

ss = st.session_state
state.init()  # also here: a fresh server's first run may execute this page alone
st.title("Pareto")
wb = state.workbench()
report = state.evaluate()
if wb is None or report is None:
    st.stop()
if not wb.measures:
    st.info(f"The Pareto plot compares measured runs, and this model was loaded without a dataset (weights only): "
            f"its {wb.metric.name} is not measured. Load it with a dataset on the Model page to compare runs; "
            f"Compress shows its sizes and errors meanwhile.")
    st.page_link("pages/model.py", label="Choose a dataset", icon=":material/neurology:")
    st.stop()
metric = wb.metric.to_dict()

with st.expander("Sweep a grid in a worker process (sparsity × bits)"):
    c1, c2 = st.columns(2)
    sparsities = c1.multiselect("Sparsities", [0.5, 0.7, 0.8, 0.9, 0.95, 0.98], default=[0.5, 0.8, 0.9, 0.95])
    bits = c2.multiselect("Bits", [2, 3, 4, 5, 6, 8], default=[2, 4, 8])
    handle = ss.get("sweep")
    running = jobs.running(handle)
    if c1.button("Run sweep", disabled=running or not sparsities or not bits, key="p_sweep",
                 icon=":material/play_arrow:"):
        source = state.job_source(state.baseline())
        try:
            ss["sweep"] = jobs.submit("sweep", {"source": source, "recipe": state.recipe().to_dict(),
                                                "sparsities": sorted(sparsities), "bits": sorted(bits),
                                                "ledger_path": str(state.ledger().path), "owner": state.user()},
                                      label=f"sweep {len(sparsities)}×{len(bits)}")
            st.rerun()
        except PetError as exc:
            st.error(plain(exc))
    if c2.button("Stop sweep", disabled=not running, key="p_stop", icon=":material/stop:"):
        jobs.runner().cancel(handle.job.id)

c1, c2 = st.columns(2)
everyone = c1.toggle("Show everyone's runs", key="p_everyone", help=f"you are **{state.user()}**")
kinds = c2.multiselect("Kinds", ["baseline", "post-training", "sweep", "fine-tuned"],
                       default=["baseline", "post-training", "sweep", "fine-tuned"], key="p_kinds")


@st.fragment(run_every=1.0 if jobs.running(ss.get("sweep")) else None)
def chart() -> None:
    handle = ss.get("sweep")
    if handle is not None:
        status = handle.job.status()
        p = status.get("progress") or {}
        if status["state"] in ("queued", "running"):
            st.progress(p.get("step", 0) / max(1, p.get("steps", 1)),
                        text=f"Sweep: {p.get('step', 0)}/{p.get('steps', '?')} points ({status['state']})")
        elif status["state"] == "failed":
            st.error("The sweep stopped with an error:")
            st.code(str(status.get("error")), language=None, wrap_lines=True)
        jobs.rerun_once_done(handle, "sweep_seen")
    points = run_points(state.runs(everyone=everyone, kinds=kinds), metric["name"])
    event = st.plotly_chart(pareto_figure(points, ss.get("pareto_selected"), lineage_edges(points), metric),
                            on_select="rerun", selection_mode="points", key="pareto_chart", width="stretch")
    chosen = event.selection.points if event and event.selection else []
    if chosen:
        index = chosen[0].get("customdata")
        index = index[0] if isinstance(index, list) else index
        if index is not None and index != ss.get("pareto_selected") and index < len(points):
            ss["pareto_selected"] = index
            run = points[index]
            recipe = Recipe.from_dict(run["recipe"]) if run["recipe"] else Recipe()
            state.set_recipe(recipe.replace(finetune={}))
            st.success(f"Loaded run #{run['id']} into Compress.")
            st.page_link("pages/compress.py", label="Open Compress", icon=":material/tune:")
    table = pd.DataFrame([{"run": p["id"], "parent": p["parent_id"], "kind": p["series"], "owner": p["owner"],
                           "label": p["label"], metric["name"]: p[metric["name"]], "size_bytes": p["size_bytes"],
                           "compression_ratio": p["compression_ratio"]} for p in points])
    st.dataframe(table, hide_index=True, width="stretch")


chart()
