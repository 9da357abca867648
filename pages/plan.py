"""Plan: which layers can take it (per-layer sensitivity) and what recipe hits a target (inverse design).

Both run as jobs in a worker process. The analysis is kept in the run ledger per model, dataset and
ladder (shared by everybody); a plan is recorded as a run under it, lands on Pareto and loads into
Compress in one click.
"""

import streamlit as st

from pet_core.size import model_bytes
from studio import jobs, plan_view, state

ss = st.session_state
state.init()  # also here: a fresh server's first run may execute this page alone
st.title("Sensitivity & plan")
wb = state.workbench()
report = state.evaluate()
if wb is None or report is None:
    st.stop()
if not wb.measures:
    st.info(f"Sensitivity and plans measure the {wb.metric.name} of each setting, and this model was loaded "
            "without a dataset (weights only). Load it with a dataset on the Model page.")
    st.page_link("pages/model.py", label="Choose a dataset", icon=":material/neurology:")
    st.stop()
metric = wb.metric.to_dict()

st.subheader("1 · Which layers can take it")
st.caption("Each compressible layer alone is pruned at every sparsity and, separately, quantized at every "
           "bit width (and shared with k-means, when chosen); every other layer stays the baseline's.")
config = plan_view.ladder()
result = None if config is None else plan_view.recorded(config)
if config is not None and result is None:
    c1, c2 = st.columns(2)
    busy = plan_view.running("pl_sens_job")
    label = f"{len(wb.names)} layers × {len(config.points())} settings"
    if c1.button(f"Analyse ({label})", disabled=busy, key="pl_sens_go", type="primary",
                 icon=":material/play_arrow:"):
        plan_view.submit("sensitivity", {"ladder": config.to_dict()}, f"sensitivity {label}", "pl_sens_job")
        st.rerun()
    if c2.button("Stop", disabled=not busy, key="pl_sens_stop", icon=":material/stop:"):
        jobs.runner().cancel(ss["pl_sens_job"].job.id)


@st.fragment(run_every=1.0 if plan_view.running("pl_sens_job") else None)
def sensitivity_live() -> None:
    handle, status = plan_view.job_state("pl_sens_job")
    if handle is None or result is not None:
        return
    if status["state"] in ("queued", "running"):
        plan_view.show_progress(status, "Sensitivity")
        plan_view.show_partial(status, metric)
    else:
        plan_view.show_failure(status, "analysis")
    jobs.rerun_once_done(handle, "pl_sens_seen")   # reads the finished job's result, stops the timer


sensitivity_live()
if result is not None:
    plan_view.show_sensitivity(result)

st.subheader("2 · What recipe hits my target")
st.caption("Per-layer sparsity and bits chosen from the sensitivity curves (a knapsack on accounted bytes vs "
           "predicted drop), then measured and refined: the result is a measured number, not a prediction.")
asked = plan_view.target_controls(model_bytes(wb.baseline), metric["name"])
c1, c2 = st.columns(2)
busy = plan_view.running("pl_plan_job")
if c1.button("Plan", disabled=busy or config is None, key="pl_plan_go", type="primary", icon=":material/target:"):
    ss.pop("pl_plan_result", None)
    plan_view.submit("plan", {"target": asked["target"], "ladder": config.to_dict(), "budget_s": asked["budget_s"]},
                     "plan", "pl_plan_job")
    st.rerun()
if c2.button("Stop planning", disabled=not busy, key="pl_plan_stop", icon=":material/stop:"):
    jobs.runner().cancel(ss["pl_plan_job"].job.id)


@st.fragment(run_every=1.0 if plan_view.running("pl_plan_job") else None)
def plan_live() -> None:
    handle, status = plan_view.job_state("pl_plan_job")
    if handle is None:
        return
    if status["state"] in ("queued", "running"):
        plan_view.show_progress(status, "Planning")
    elif status["state"] == "done" and status.get("result"):
        ss["pl_plan_result"] = status["result"]
    else:
        plan_view.show_failure(status, "plan")
    jobs.rerun_once_done(handle, "pl_plan_seen")   # reads the finished job's result, stops the timer


plan_live()
if ss.get("pl_plan_result"):
    plan_view.show_plan(ss["pl_plan_result"])
