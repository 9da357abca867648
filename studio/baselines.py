"""Baselines shared by all sessions, behind one lock per model key; first-use training in a worker.

A zoo model in the model cache loads in the server process (well under a second); one that is not
is trained by a ``pretrain`` job in a worker process while the page shows its progress, so one
user's first MNIST model never freezes another user's slider. Shared baselines are read-only by
contract: every session works on its own copy (``Workbench``), exports on private copies.
"""

from __future__ import annotations

import threading

import streamlit as st

from pet_core.loader import Baseline, is_run_source
from pet_core.runs import load_source
from studio import jobs
from studio.text import plain

ss = st.session_state


@st.cache_resource(show_spinner=False)
def _baseline_store() -> tuple[dict, dict, threading.Lock]:
    """Baselines shared by all sessions (read-only by contract), a lock per key, and the lock of that dict."""
    return {}, {}, threading.Lock()


MAX_SHARED_BASELINES = 8


def shared_baseline(model: str, dataset: str, data_dir: str | None, *, train: bool = True) -> Baseline | None:
    """The shared baseline of a zoo model on a dataset; None while a worker trains it on first use.

    With ``train=False`` only the dataset is checked (a bad MNIST folder raises PetError).
    """
    from pet_core.pretrained import is_cached
    from pet_core.data import load_dataset
    from pet_core.zoo import adapt_dataset

    store, locks, guard = _baseline_store()
    key = (model, dataset, data_dir)
    with guard:
        lock = locks.setdefault(key, threading.Lock())
    with lock:                                   # only this key waits: other models load meanwhile
        if key in store:
            return store[key]
        if not is_run_source(model):
            ds = adapt_dataset(load_dataset(dataset, data_dir), model)
            if not is_cached(model, ds):
                if train:
                    _start_pretraining(model, dataset, data_dir)
                return None
        base = load_source(model, dataset, data_dir)
        with guard:
            store[key] = base
            while len(store) > MAX_SHARED_BASELINES:
                store.pop(next(iter(store)))
        return base


def _start_pretraining(model: str, dataset: str, data_dir: str | None) -> None:
    """Train a zoo model in a worker process (once per session and key)."""
    handle = ss.get("pretrain_job")
    if handle is not None and handle.job.kwargs["source"] == {"model": model, "dataset": dataset,
                                                              "data_dir": data_dir} and not handle.job.done:
        return
    ss["pretrain_job"] = jobs.submit("pretrain", {"source": {"model": model, "dataset": dataset, "data_dir": data_dir}},
                                     label=f"{model} on {dataset}")


def show_pretraining() -> None:
    """Progress of the first-use training; reruns the page when the model is ready."""
    @st.fragment(run_every=1.0)
    def progress() -> None:
        handle = ss.get("pretrain_job")
        if handle is None:
            return
        status = handle.job.status()
        p = status.get("progress") or {}
        if status["state"] in ("queued",):
            st.info(f"Training {handle.job.label} on first use: waiting for a free worker…",
                    icon=":material/hourglass_top:")
        elif status["state"] == "running":
            done = 0.0
            if p.get("epochs"):
                done = (p["epoch"] - 1 + p.get("step", 0) / max(1, p.get("steps", 1))) / p["epochs"]
            st.progress(min(1.0, done), text=f"Training {handle.job.label} on first use (in a worker process): "
                                             f"epoch {p.get('epoch', 0)}/{p.get('epochs', '?')}")
        elif status["state"] == "done":
            ss.pop("pretrain_job", None)
            st.rerun()
        else:
            st.error(f"Training {plain(handle.job.label, 80)} did not finish ({status['state']}):")
            st.code(str(status.get("error") or status.get("reason") or ""), language=None, wrap_lines=True)

    progress()
