"""Per-session state: the source (model, dataset), the recipe, the workbench and the runs.

The recipe in ``st.session_state`` is the single source of truth. The baseline is cached for
all sessions (``st.cache_resource``) and never mutated; each session owns its workbench, a
working copy of that baseline. Every engine error reaches the page as ``st.error``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import streamlit as st

from pet_core.errors import PetError
from pet_core.layers import compressible_layers
from pet_core.loader import Baseline, is_zoo_name, load_baseline
from pet_core.pareto import recipe_key, run_record, summarize_recipe
from pet_core.recipe import Recipe, from_token, to_token
from pet_core.size import model_bytes
from pet_core.steps import resolve
from pet_core.workbench import Workbench
from studio.controls import CONTROL_DEFAULTS, FINETUNE_DEFAULTS, controls_from_default, split_layers

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MNIST = REPO.parent / "shared" / "data" / "mnist"
ss = st.session_state
# What a new session starts with: something visible to move, not "no compression".
START_RECIPE = Recipe(default={"prune": {"method": "magnitude", "scope": "global", "sparsity": 0.7},
                               "quantize": {"bits": 8, "scheme": "symmetric", "granularity": "per_channel"}})


def default_mnist_dir() -> str:
    return os.environ.get("PET_MNIST_DIR") or (str(DEFAULT_MNIST) if DEFAULT_MNIST.is_dir() else "")


def init() -> None:
    """Run at the top of every page: defaults, widget persistence, a recipe from the link."""
    ss.setdefault("source", {"model": "lenet_300_100", "dataset": "digits", "data_dir": None})
    ss.setdefault("table_version", 0)
    if "recipe" not in ss:
        set_recipe(START_RECIPE)
    ss.setdefault("runs", {})
    for key, value in {**CONTROL_DEFAULTS, **FINETUNE_DEFAULTS}.items():
        # Re-assigning keeps a widget's value when its page is not shown (Streamlit drops it otherwise).
        ss[key] = ss[key] if key in ss else value
    if not ss.get("_link_read"):
        ss["_link_read"] = True
        token = st.query_params.get("recipe")
        if token:
            try:
                recipe = from_token(token)
                if is_zoo_name(recipe.model):
                    data_dir = default_mnist_dir() if recipe.dataset == "mnist" else None
                    base = _shared_baseline(recipe.model, recipe.dataset, data_dir)
                    resolve(recipe.default, recipe.layers, list(compressible_layers(base.model)))
                    set_source(recipe.model, recipe.dataset, data_dir)
                set_recipe(recipe)
            except PetError as exc:
                ss["_link_error"] = f"The shared link's recipe was not loaded: {exc}"
    if err := ss.pop("_link_error", None):
        st.error(err)


def source_key() -> str:
    s = ss["source"]
    return f"{s['model']}|{s['dataset']}|{s.get('data_dir') or ''}"


def set_source(model: str, dataset: str, data_dir: str | None = None) -> None:
    ss["source"] = {"model": model, "dataset": dataset, "data_dir": data_dir or None}


def switch_zoo_source(model: str, dataset: str, data_dir: str | None = None) -> bool:
    """Load a zoo model on a dataset; switch to it only if that works (else show why, keep the old one)."""
    bar, update = _training_progress()
    try:
        _shared_baseline(model, dataset, data_dir or None, _progress=update)
    except PetError as exc:
        st.error(f"Could not load {model} on {dataset}: {exc}")
        return False
    finally:
        bar.empty()
    ss.pop("user_baseline", None)
    set_source(model, dataset, data_dir)
    return True


@st.cache_resource(show_spinner=False)
def _baseline_store() -> tuple[dict, threading.Lock]:
    """Baselines shared by all sessions, read-only by contract, with the lock that fills it."""
    return {}, threading.Lock()


MAX_SHARED_BASELINES = 8


def _shared_baseline(model: str, dataset: str, data_dir: str | None, _progress=None) -> Baseline:
    """One baseline per (model, dataset) for all sessions; trains (once) on first use.

    Not ``st.cache_resource`` itself: the progress bar drawn while training must not be replayed.
    """
    store, lock = _baseline_store()
    key = (model, dataset, data_dir)
    with lock:
        if key not in store:
            store[key] = load_baseline(model, dataset, data_dir, progress=_progress)
            while len(store) > MAX_SHARED_BASELINES:
                store.pop(next(iter(store)))
        return store[key]


def _training_progress():
    bar = st.progress(0.0, text="Preparing the model…")

    def update(event: dict[str, Any]) -> None:
        if "epoch" in event and event.get("epochs"):
            done = (event["epoch"] - 1 + event.get("step", 0) / max(1, event.get("steps", 1))) / event["epochs"]
            bar.progress(min(1.0, done), text=f"Training on first use: epoch {event['epoch']}/{event['epochs']}")

    return bar, update


def baseline() -> Baseline | None:
    """The session's baseline, training a zoo model on first use (with a progress bar)."""
    s = ss["source"]
    user = ss.get("user_baseline")
    if user is not None and s["model"] == user.model_name:
        return user
    bar, update = _training_progress()
    try:
        return _shared_baseline(s["model"], s["dataset"], s.get("data_dir"), _progress=update)
    except PetError as exc:
        st.error(f"Could not load {s['model']} on {s['dataset']}: {exc}")
        return None
    finally:
        bar.empty()


def workbench() -> Workbench | None:
    """This session's workbench over the current baseline (a private working copy)."""
    base = baseline()
    if base is None:
        return None
    wb = ss.get("workbench")
    if wb is None or ss.get("workbench_of") != id(base.model):
        wb = Workbench(base.model, base.dataset.x_test, base.dataset.y_test)
        ss["workbench"], ss["workbench_of"] = wb, id(base.model)
        ss.pop("report", None)
    return wb


def recipe() -> Recipe:
    return ss["recipe"]


def set_recipe(new: Recipe) -> None:
    """Make ``new`` the session's recipe and fill the widgets from it."""
    ss["recipe"] = new
    for key, value in controls_from_default(new.default).items():
        ss[key] = value
    ss["table_version"] = ss.get("table_version", 0) + 1   # a fresh per-layer table, built from the recipe


def layer_split(wb: Workbench) -> tuple[dict, dict]:
    """The recipe's overrides split into (table rows, advanced overrides)."""
    return split_layers(recipe().layers, wb.names)


def evaluate(series: str = "post-training") -> dict[str, Any] | None:
    """Apply the session's recipe and return the report; the run joins the session's runs."""
    wb = workbench()
    if wb is None:
        return None
    # Post-training numbers: the finetune section does not change them.
    r = recipe().replace(model=ss["source"]["model"], dataset=ss["source"]["dataset"], finetune={})
    key = recipe_key(r.to_dict())
    cached = ss.get("report")
    if cached is not None and cached[0] == key and cached[1] is wb:
        return cached[2]
    try:
        wb.apply(r)
    except PetError as exc:
        st.error(str(exc))
        return None
    report = wb.report()
    ss["report"] = (key, wb, report)
    add_run(run_record(report, series))
    return report


def recipe_key_now() -> str:
    """Identifies the session's model, dataset and recipe: artifacts built for another are stale."""
    return source_key() + recipe_key(recipe().to_dict())


def runs() -> list[dict[str, Any]]:
    """This source's runs, the baseline first."""
    wb = workbench()
    bucket = ss["runs"].setdefault(source_key(), [])
    if wb is not None and not any(r["series"] == "baseline" for r in bucket):
        bucket.insert(0, {"series": "baseline", "label": "baseline (dense fp32)", "recipe": None,
                          "accuracy": wb.baseline_accuracy, "size_bytes": model_bytes(wb.baseline),
                          "compression_ratio": 1.0, "weight_sparsity": 0.0})
    return bucket


def add_run(run: dict[str, Any]) -> None:
    bucket = ss["runs"].setdefault(source_key(), [])
    key = recipe_key(run["recipe"])
    for i, old in enumerate(bucket):
        if old["recipe"] is not None and recipe_key(old["recipe"]) == key and old["series"] == run["series"]:
            bucket[i] = run
            return
    bucket.append(run)


def share_link() -> str:
    return f"?recipe={to_token(recipe().replace(model=ss['source']['model'], dataset=ss['source']['dataset']))}"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} B"


def summary() -> str:
    return summarize_recipe(recipe().to_dict())
