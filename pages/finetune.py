"""Fine-tune: recover accuracy by training the compressed model in a worker process; live curves.

The run is a row of the ledger (kind "fine-tuned", parent: the compressed configuration it started
from) with its weights stored, so Pareto shows it and Export builds exactly it. A finished run never
changes the Compress settings.
"""

import streamlit as st

from pet_core.errors import PetError
from pet_core.figures import training_curves
from pet_core.runs import identity
from pet_core.training import pick_device
from studio import jobs, metric_view, state
from studio.text import plain
from studio.controls import finetune_from_controls, fit_length

ss = st.session_state
state.init()  # also here: a fresh server's first run may execute this page alone
st.title("Fine-tune")
wb = state.workbench()
report = state.evaluate()
if wb is None or report is None:
    st.stop()
if not wb.measures:
    st.info("Fine-tuning trains the compressed model on data, and this model was loaded without a dataset "
            "(weights only). Load it with a dataset on the Model page to fine-tune it.")
    st.page_link("pages/model.py", label="Choose a dataset", icon=":material/neurology:")
    st.stop()
metric = metric_view.metric_of(report)
fit_length(ss, state.source_key(), len(state.baseline().dataset.y_train))   # ~500 steps by default


st.caption(f"Trains a copy of the compressed model (never the baseline) on **{pick_device().type.upper()}**. "
           f"Recipe: {state.summary()}")
c1, c2, c3 = st.columns(3)
with c1.container(border=True):
    st.number_input("Epochs", 0.1, 100.0, step=0.5, format="%g", key="f_epochs")
    st.number_input("Learning rate", 1e-6, 1.0, format="%.5f", key="f_lr")
    st.select_slider("Batch size", [32, 64, 128, 256, 512], key="f_batch_size")
    st.radio("Optimizer", ["adam", "adamw", "sgd"], key="f_optimizer", horizontal=True)
    st.radio("Schedule", ["cosine", "constant"], key="f_schedule", horizontal=True)
with c2.container(border=True):
    st.checkbox("Quantization-aware training (STE; k-means: centroids)", key="f_qat")
    if st.checkbox("Distillation from the baseline", key="f_distill"):
        st.slider("Temperature T", 1.0, 10.0, key="f_temperature")
        st.slider("alpha (soft-loss weight)", 0.0, 1.0, key="f_alpha")
    if st.checkbox("L1 regularisation, then prune", key="f_l1"):
        st.number_input("λ", 0.0, 1.0, format="%.6f", key="f_l1_strength")
with c3.container(border=True):
    if st.checkbox("Gradual pruning (Zhu & Gupta)", key="f_gradual"):
        st.slider("Initial sparsity", 0.0, 1.0, key="f_initial_sparsity")
        st.number_input("Start epoch", 0.0, 100.0, key="f_start_epoch")
        st.number_input("End epoch", 0.0, 100.0, key="f_end_epoch")
        st.number_input("Steps between mask updates", 1, 10_000, key="f_frequency")
    if st.checkbox("Lottery ticket (prune and rewind)", key="f_lottery"):
        st.slider("Rounds", 1, 10, key="f_rounds")
        st.radio("Rewind to", ["early", "init"], key="f_rewind", horizontal=True)
    if st.checkbox("LoRA adapters (base frozen)", key="f_lora"):
        st.slider("Rank", 1, 64, key="f_lora_rank")
        st.number_input("alpha", 0.1, 1024.0, key="f_lora_alpha")
        st.text_input("Layers (glob)", key="f_lora_layers")

try:
    recipe = state.recipe().replace(model=ss["source"]["model"], dataset=ss["source"]["dataset"],
                                    finetune=finetune_from_controls(ss))
except PetError as exc:
    st.error("These settings are not valid:")
    st.code(str(exc), language=None, wrap_lines=True)
    st.stop()

handle = ss.get("finetune_job")
running = jobs.running(handle)
b1, b2 = st.columns(2)
if b1.button("Start", type="primary", disabled=running, key="f_start", icon=":material/play_arrow:"):
    base = state.baseline()
    ident = identity(base)
    source = state.job_source(base)
    ledger = state.ledger()
    run_id = ledger.record("fine-tuned", model=ident["model"], model_hash=ident["model_hash"],
                           dataset=ident["dataset"], dataset_hash=ident["dataset_hash"], recipe=recipe.to_dict(),
                           parent_id=report.get("run_id"), status="queued", owner=state.user(),
                           label=state.summary(), extra=ident.get("extra", {}))
    try:
        ss["finetune_job"] = jobs.submit("finetune", {
            "source": source, "recipe": recipe.to_dict(), "ledger_path": str(ledger.path), "run_id": run_id,
            "owner": state.user()}, label=state.summary())
        ss["finetune_run"] = run_id
        st.rerun()
    except PetError as exc:
        ledger.update(run_id, status="cancelled", error=str(exc))
        st.error(plain(exc))
if b2.button("Stop", disabled=not running, key="f_stop", icon=":material/stop:"):
    jobs.runner().cancel(handle.job.id)


@st.fragment(run_every=1.0 if running else None)
def live() -> None:
    handle = ss.get("finetune_job")
    if handle is None:
        st.info("Choose techniques and press Start. Training runs in a worker process; a short run on digits "
                "takes seconds.")
        return
    job = handle.job
    status = job.status()
    history = status.get("history") or []
    if status["state"] == "queued":
        st.info(f"Waiting for a free worker: {jobs.runner().position(job)} job(s) ahead "
                f"(the server runs {jobs.runner().max_workers} at a time).")
    last = status.get("progress") or {}
    if status["state"] == "running" and not last.get("steps"):
        st.info(f"Preparing in a worker process (loading the model and data)… {status.get('elapsed_s', 0):.0f} s",
                icon=":material/hourglass_top:")
    if status["state"] == "running" and last.get("steps"):
        st.progress(min(1.0, last["step"] / max(1, last["steps"])),
                    text=f"step {last['step']}/{last['steps']} · {last.get('samples_per_s', 0):,.0f} samples/s · "
                         f"{last.get('device', '')} · {status.get('elapsed_s', 0):.0f} s")
    if history:
        st.plotly_chart(training_curves(history), width="stretch")
    run = state.ledger().get(ss["finetune_run"])
    jobs.rerun_once_done(handle, "finetune_seen")    # turns the timer off and enables Start
    if status["state"] in ("failed", "cancelled"):
        st.error(f"Fine-tuning {status['state']}: the compressed model and the recipe are unchanged.")
        st.code(str(status.get("error") or status.get("reason") or run.get("error") or ""), language=None,
                wrap_lines=True)
    if run["status"] in ("done", "stopped") and run["metrics"].get(metric.name) is not None:
        c = run["metrics"]
        m = st.columns(4)
        metric_view.show(m[0], metric, c[metric.name], metric_view.value(report, "baseline"),
                         label=f"{metric_view.title(metric)} after fine-tuning", suffix=" vs baseline")
        m[1].metric("Size", f"{c['size_bytes']:,} B", help="accounted bytes of the fine-tuned compressed model")
        m[2].metric("Compression", f"{c['compression_ratio']:.2f}×")
        m[3].metric("Run", f"#{run['id']} {run['status']}")
        if run["status"] == "stopped":
            st.caption(f"Stopped early ({status.get('reason') or 'on request'}): the weights at that step were "
                       "re-compressed and recorded; no checkpoint is kept by the app.")
        st.caption("The run is in the ledger: Pareto shows it, Export builds exactly these weights. "
                   "Your Compress settings are unchanged.")
        e1, e2 = st.columns(2)
        if e1.button("Export this run", key="f_export", icon=":material/package_2:"):
            ss["export_run"] = run["id"]
            st.switch_page("pages/export.py")
        if e2.button("Continue from this run", key="f_continue", icon=":material/redo:",
                     help="make this fine-tuned model the baseline and compress it further (its runs keep this "
                          "run as their parent)"):
            state.continue_from_run(run)
            st.switch_page("pages/compress.py")


live()
