"""Fine-tune: recover accuracy by training the compressed model; live curves; joins the Pareto plot."""

import streamlit as st

from pet_core.errors import PetError
from pet_core.figures import training_curves
from pet_core.pareto import run_record
from pet_core.training import pick_device
from studio import state
from studio.controls import finetune_from_controls
from studio.finetune_jobs import FinetuneJob, JobQueue
from studio.jobs import JobHandle

ss = st.session_state
state.init()  # also here: a fresh server's first run may execute this page alone
st.title("🏋️ Fine-tune")
wb = state.workbench()
if wb is None or state.evaluate() is None:
    st.stop()


@st.cache_resource
def job_queue() -> JobQueue:
    """One queue for the whole server (PET_MAX_JOBS running at once)."""
    return JobQueue()


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
    st.error(f"These settings are not valid: {exc}")
    st.stop()

handle = ss.get("finetune_job")
job: FinetuneJob | None = handle.job if handle else None
running = job is not None and not job.done
b1, b2 = st.columns(2)
if b1.button("▶️ Start", type="primary", disabled=running):
    base = state.baseline()
    job = FinetuneJob(job_queue(), wb, recipe, base.dataset, label=state.summary())
    ss["finetune_job"] = JobHandle(job_queue().submit(job))
    st.rerun()
if b2.button("⏹️ Stop", disabled=not running):
    job.stop_flag.set()


@st.fragment(run_every=1.0 if running else None)
def live() -> None:
    handle = ss.get("finetune_job")
    if handle is None:
        st.info("Choose techniques and press Start. A short run on digits takes seconds.")
        return
    job = handle.job
    if job.state == "queued":
        st.info(f"Waiting for a free slot: {job_queue().position(job)} job(s) ahead "
                f"(the server runs {job_queue().max_jobs} at a time).")
    last = job.history[-1] if job.history else {}
    if job.state == "running" and last:
        eta = job.eta_s()
        st.progress(min(1.0, last["step"] / max(1, last["steps"])),
                    text=f"step {last['step']}/{last['steps']} · {last.get('samples_per_s', 0):,.0f} samples/s · "
                         f"{last.get('device', '')} · ETA {eta:.0f} s" if eta is not None else "starting…")
    if job.history:
        st.plotly_chart(training_curves(job.history), width="stretch")
    if job.error:
        st.error(f"Fine-tuning failed: {job.error}. A checkpoint was written; the compressed model is unchanged.")
    if job.result is not None and ss.get("finetune_seen") is not job:
        ss["finetune_seen"] = job
        report = job.result.report
        state.add_run(run_record(report, "fine-tuned", label=f"fine-tuned: {job.label}"))
        state.set_recipe(job.recipe)
        ss["finetuned"] = job.result
        st.rerun()
    if job.result is not None:
        b, c = job.result.report["baseline"], job.result.report["compressed"]
        m = st.columns(4)
        m[0].metric("Accuracy after fine-tuning", f"{c['accuracy']:.2%}",
                    f"{(c['accuracy'] - b['accuracy']) * 100:+.2f} pts vs baseline")
        m[1].metric("Size", f"{c['size_bytes']:,} B", help="accounted bytes of the fine-tuned compressed model")
        m[2].metric("Compression", f"{c['compression_ratio']:.2f}×")
        m[3].metric("State", job.state)
        st.caption("The run joined the Pareto plot as 'fine-tuned'; Export now downloads its recipe.")


live()
