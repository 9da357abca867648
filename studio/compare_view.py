"""The Compare page's parts: run choices, a cached comparison, and how its numbers are drawn.

The numbers all come from :func:`pet_core.compare.compare_runs` and the figures from
:mod:`pet_core.compare_figures`; this module only lays them out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from pet_core.compare_figures import confusion_diff_figure, layer_diff_figure, per_class_change_figure
from pet_core.metrics import METRICS, Metric
from pet_core.pareto import summarize_recipe
from studio import metric_view
from studio.text import plain

GALLERY = 48            # flipped items fetched and drawn
GALLERY_COLUMNS = 8
IMAGE_PIXELS = 84       # small images are enlarged (nearest neighbour) to about this many pixels a side
CACHED_COMPARISONS = 8  # comparisons kept for all sessions


def run_label(run: dict[str, Any]) -> str:
    """"#7 post-training · magnitude 95% global · accuracy 30.00%" for a selectbox."""
    m = run.get("metrics") or {}
    name = m.get("metric") or "accuracy"
    metric = METRICS.get(name) or Metric(name, True, name)
    label = run.get("label") or ("" if run["kind"] == "baseline" else summarize_recipe(run.get("recipe")))
    return " · ".join(p for p in (f"#{run['id']} {run['kind']}", label, f"{name} {metric.format(m.get(name))}") if p)


def default_pair(runs: list[dict[str, Any]]) -> tuple[int, int]:
    """(A, B): the baseline run (else the oldest) and the newest other run (A itself when alone)."""
    base = next((r for r in runs if r["kind"] == "baseline"), min(runs, key=lambda r: r["id"]))
    others = [r["id"] for r in runs if r["id"] != base["id"]]
    return base["id"], max(others) if others else base["id"]


def compare(ledger_path: str, run_a: dict[str, Any], run_b: dict[str, Any], trust_code: bool) -> dict[str, Any]:
    """The comparison of two ledger rows, cached by ledger, ids and each row's last update."""
    return _compare(ledger_path, run_a["id"], run_a["updated_at"], run_b["id"], run_b["updated_at"], trust_code)


@st.cache_data(max_entries=CACHED_COMPARISONS, show_spinner="Running both models over the test set…")
def _compare(ledger_path: str, a: int, updated_a: float, b: int, updated_b: float,
             trust_code: bool) -> dict[str, Any]:
    from pet_core.compare import compare_runs
    from pet_core.ledger import Ledger

    return compare_runs(Ledger(ledger_path), a, b, trust_code=trust_code, examples=GALLERY, images=True)


def show(out: dict[str, Any]) -> None:
    """Counts, per-class table and chart, confusion change, flipped gallery and layer differences."""
    metric = METRICS.get(out["metric"]["name"]) or Metric(out["metric"]["name"], out["metric"]["higher_is_better"],
                                                          out["metric"]["name"])
    unit = out["unit"]
    cols = st.columns(5)
    cols[0].metric("Agreement", f"{out['agreement']:.2%}", help=f"{unit}s of {out['n']:,} predicted alike")
    cols[1].metric("Flipped", f"{out['flipped_count']:,}", help=f"{unit}s whose prediction differs")
    cols[2].metric("Fixed", f"{out['fixed']:,}", help="A wrong → B right")
    cols[3].metric("Broken", f"{out['broken']:,}", help="A right → B wrong")
    metric_view.show(cols[4], metric, out["metric_b"], out["metric_a"], label=f"{metric_view.title(metric)} B",
                     help=f"measured here on the test set; A: {metric.format(out['metric_a'])}")
    st.caption(f"{out['both_wrong_differently']:,} {unit}s both wrong, differently · {out['both_right']:,} both "
               f"right · {out['both_wrong_same']:,} both wrong alike · dataset {plain(out['dataset'], 60)}")
    for note in out["notes"]:
        st.info(note)
    if out["per_class"] is not None:
        st.subheader("Per class")
        c1, c2 = st.columns(2)
        c1.dataframe(pd.DataFrame(out["per_class"]), hide_index=True, width="stretch")
        c2.plotly_chart(per_class_change_figure(out), width="stretch")
    if out["confusion_diff"] is not None:
        st.plotly_chart(confusion_diff_figure(out), width="stretch")
    st.subheader(f"Flipped {unit}s")
    st.caption(f"{len(out['flipped'])} of {out['flipped_total']:,}, by {out['flipped_order']}")
    if out["flipped"] and "image" in out["flipped"][0]:
        gallery(out["flipped"])
    elif out["flipped"]:
        st.dataframe(pd.DataFrame([_token_row(f) for f in out["flipped"]]), hide_index=True, width="stretch")
    st.subheader("Weights")
    if out["layers"]:
        st.plotly_chart(layer_diff_figure(out), width="stretch")
        st.dataframe(pd.DataFrame(out["layers"]), hide_index=True, width="stretch")
    if out["layers_not_comparable"]:
        st.caption("Not comparable: " + ", ".join(plain(f"{r['name']} ({r['reason']})", 120)
                                                  for r in out["layers_not_comparable"]))


def caption(item: dict[str, Any]) -> str:
    """ "true 3 · A: 3 (0.98) → B: 5 (0.61)" """
    return (f"true {item['label']} · A: {item['pred_a']} ({item['conf_a']:.2f}) → "
            f"B: {item['pred_b']} ({item['conf_b']:.2f})")


def enlarged(image: list[list[int]]) -> np.ndarray:
    """A (H, W) 0..255 image as uint8, repeated pixel by pixel up to about :data:`IMAGE_PIXELS` a side."""
    a = np.asarray(image, dtype=np.uint8)                      # (H, W)
    k = max(1, IMAGE_PIXELS // max(a.shape))
    return np.kron(a, np.ones((k, k), dtype=np.uint8))


def gallery(items: list[dict[str, Any]]) -> None:
    for start in range(0, len(items), GALLERY_COLUMNS):
        cols = st.columns(GALLERY_COLUMNS)
        for col, item in zip(cols, items[start:start + GALLERY_COLUMNS]):
            col.image(enlarged(item["image"]), caption=caption(item))


def _token_row(item: dict[str, Any]) -> dict[str, Any]:
    """One flipped token item as a table row: where, context (text or ids), true and both predictions."""
    where = {"block": item["block"], "position": item["position"]} if "block" in item else {"index": item["index"]}
    context = item.get("context_text", " ".join(map(str, item.get("context_ids", []))))
    names = {k: item.get(f"{k}_text", item[k]) for k in ("label", "pred_a", "pred_b")}
    return {**where, "context": context, "true": names["label"], "A": f"{names['pred_a']} ({item['conf_a']:.2f})",
            "B": f"{names['pred_b']} ({item['conf_b']:.2f})", "p_true A→B": f"{item['p_true_a']:.2f} → "
            f"{item['p_true_b']:.2f}"}
