"""The Plan page's parts: the ladder, the sensitivity picture, the plan's target and its result.

The analysis and the plan run as jobs in a worker process (``pet_core.jobs.tasks``); a finished
analysis is read back from the run ledger (one per model, dataset and ladder, shared by everybody),
so a second participant asking for the same ladder sees it at once.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from pet_core.errors import PetError
from pet_core.recipe import Recipe
from pet_core.sensitivity import DEFAULT_BITS, DEFAULT_SPARSITIES, SensitivityConfig, cached
from pet_core.sensitivity_figures import STEP_TITLE, curves, heatmap, partial_layers
from studio import jobs, state
from studio.text import plain

SPARSITY_CHOICES = sorted({0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99,
                           *DEFAULT_SPARSITIES})
BITS_CHOICES = [8, 6, 5, 4, 3, 2, 1]
CLUSTER_CHOICES = [4, 8, 16, 32, 64]
TARGETS = ("Compression ratio", "Size in bytes", "Largest metric drop")


def ladder() -> SensitivityConfig | None:
    """The ladder chosen on the page (None, with a message, when it is empty)."""
    c1, c2, c3 = st.columns(3)
    sparsities = c1.multiselect("Sparsities (magnitude, one layer at a time)", SPARSITY_CHOICES,
                                default=list(DEFAULT_SPARSITIES), key="pl_sparsities")
    bits = c2.multiselect("Bit widths", BITS_CHOICES, default=list(DEFAULT_BITS), key="pl_bits")
    clusters = c3.multiselect("k-means clusters (optional)", CLUSTER_CHOICES, default=[], key="pl_clusters")
    try:
        return SensitivityConfig(sparsities=tuple(sparsities), bits=tuple(bits), clusters=tuple(clusters))
    except PetError as exc:
        st.warning(plain(exc))
        return None


def recorded(config: SensitivityConfig) -> dict[str, Any] | None:
    """The analysis of this source and ladder from the ledger, if anybody made it."""
    return cached(state.ledger(), state.baseline(), config)


def submit(task: str, kwargs: dict[str, Any], label: str, key: str) -> None:
    base = state.baseline()
    try:
        st.session_state[key] = jobs.submit(task, {"source": state.job_source(base),
                                                   "ledger_path": str(state.ledger().path), "owner": state.user(),
                                                   **kwargs}, label=label)
    except PetError as exc:
        st.error(plain(exc))


def job_state(key: str) -> tuple[Any, dict[str, Any] | None]:
    """(handle, status) of this session's job under ``key`` (None, None when there is none)."""
    handle = st.session_state.get(key)
    return (handle, None) if handle is None else (handle, handle.job.status())


def running(key: str) -> bool:
    return jobs.running(st.session_state.get(key))


def show_failure(status: dict[str, Any], what: str) -> None:
    if status["state"] == "failed":
        st.error(f"The {what} stopped with an error:")
        st.code(str(status.get("error")), language=None, wrap_lines=True)
    elif status["state"] in ("stopped", "cancelled"):
        st.warning(f"The {what} was stopped ({plain(status.get('reason') or status['state'])}); nothing was kept.")


def show_progress(status: dict[str, Any], what: str) -> None:
    p = status.get("progress") or {}
    steps = max(1, int(p.get("steps") or 1))
    text = f"{what}: {p.get('stage', status['state'])} {p.get('step', 0)}/{p.get('steps', '?')}"
    if p.get("best_value") is not None:
        text += f" · best so far {p['best_value']:.4f} at {p.get('best_size_bytes', 0):,} B"
    st.progress(min(1.0, float(p.get("step", 0)) / steps) if "steps" in p else 0.0, text=text)


def show_partial(status: dict[str, Any], metric: dict[str, Any]) -> None:
    layers = partial_layers(status.get("history") or [])
    if layers:
        st.caption("So far (estimates on a stratified subset first, exact numbers replace them):")
        st.plotly_chart(heatmap(layers, metric), key="pl_partial", width="stretch")


def show_sensitivity(result: dict[str, Any]) -> None:
    metric = result["metric"]
    ranked = sorted(result["layers"], key=lambda r: result["ranking"].index(r["name"]))
    how = (f"from the ledger (run #{result['run_id']})" if result.get("cached") else
           f"{result['evaluations']} exact evaluations in {result['seconds']:.1f} s")
    st.caption(f"Drop = baseline − value ({metric['name']}, baseline {result['baseline']['value']:.4f}); "
               f"every other layer untouched; {how}. Layers ranked most tolerant first (mean drop over the ladder).")
    st.plotly_chart(heatmap(ranked, metric), key="pl_heatmap", width="stretch")
    steps = [s for s in ("prune", "quantize", "share") if any(p["step"] == s for r in ranked for p in r["points"])]
    for tab, step in zip(st.tabs([STEP_TITLE[s].capitalize() for s in steps]), steps):
        with tab:
            st.plotly_chart(curves(ranked, metric, step), key=f"pl_curve_{step}", width="stretch")
    rows = [{"rank": i + 1, "layer": r["name"], "type": r["type"], "params": r["params"], "bytes": r["bytes"],
             "mean drop": r["mean_drop"], "sparsity tolerated": r["tolerates"].get("prune"),
             "bits tolerated": r["tolerates"].get("quantize")} for i, r in enumerate(ranked)]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    st.caption("“tolerated”: the harshest rung whose drop is at most 1 point of accuracy (1% of a "
               "lower-is-better metric); empty when not even the mildest is.")


def target_controls(base_bytes: int, metric_name: str) -> dict[str, Any]:
    """The plan's target as PlanTarget fields, and the time budget (None: stop when no neighbour helps)."""
    c1, c2, c3 = st.columns([2, 2, 2])
    kind = c1.radio("Target", TARGETS, key="pl_target_kind")
    if kind == TARGETS[0]:
        target = {"ratio": c2.number_input("Ratio (×)", 1.1, 10_000.0, value=20.0, step=1.0, key="pl_ratio")}
        c2.caption(f"≈ {int(base_bytes / target['ratio']):,} bytes accounted")
    elif kind == TARGETS[1]:
        target = {"size_bytes": int(c2.number_input("Bytes", 1, max(1, base_bytes), value=max(1, base_bytes // 20),
                                                    step=1000, key="pl_bytes"))}
    else:
        scale = 100.0 if metric_name == "accuracy" else 1.0
        drop = c2.number_input("Largest drop" + (" (points)" if scale == 100.0 else f" ({metric_name})"),
                               0.0, 100.0, value=1.0, step=0.5, key="pl_drop")
        target = {"max_drop": drop / scale}
    budget = c3.number_input("Time budget (s, 0: until no neighbour helps)", 0, 3600, value=0, step=10,
                             key="pl_budget")
    return {"target": target, "budget_s": float(budget) or None}


def show_plan(result: dict[str, Any]) -> None:
    metric = result["metric"]
    name = metric["name"]
    m, b = result["measured"], result["baseline"]
    cols = st.columns(4)
    cols[0].metric(f"{name.capitalize()} (measured)", f"{m[name]:.4f}", f"{-m['drop']:+.4f} vs baseline",
                   delta_color="normal" if metric["higher_is_better"] else "inverse")
    cols[1].metric("Size (accounted)", f"{m['size_bytes']:,} B", f"{m['compression_ratio']:.1f}× smaller",
                   delta_color="off")
    cols[2].metric("Target", "met" if result["met"] else "not met",
                   help="not met: nothing measured reached it; this is the closest")
    s = result["search"]
    cols[3].metric("Search", f"{s['evaluations']} measured", f"{s['seconds']:.1f} s · {s['stopped']}",
                   delta_color="off")
    st.dataframe(pd.DataFrame([{"layer": r["name"], "setting": r["setting"], "bytes": r["bytes"],
                                "predicted drop": r["predicted_drop"]} for r in result["layers"]]),
                 hide_index=True, width="stretch")
    st.caption(f"Baseline {b[name]:.4f} at {b['size_bytes']:,} B. Found by: {m['found_by']} (knapsack: the "
               f"predicted optimum; filled/refined: a measured neighbour that did better). Recorded as run "
               f"#{result.get('run_id')}, under its sensitivity run, on the Pareto plot.")
    c1, c2 = st.columns(2)
    if c1.button("Load into Compress", key="pl_load", type="primary", icon=":material/tune:"):
        now = state.recipe()
        state.set_recipe(Recipe.from_dict(result["recipe"]).replace(model=now.model, dataset=now.dataset, finetune={}))
        st.success("Loaded the planned recipe into Compress.")
    c2.page_link("pages/compress.py", label="Open Compress", icon=":material/tune:")
    c2.page_link("pages/pareto.py", label="See it on the Pareto plot", icon=":material/show_chart:")
