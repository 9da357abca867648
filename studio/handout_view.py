"""The participant's handout: their lessons, guesses vs the truth, best runs with recipes, the figures."""

from __future__ import annotations

import datetime as dt
import html
from typing import Any

import streamlit as st

from pet_core.errors import PetError
from pet_core.figures import pareto_figure
from pet_core.handout import build_handout
from pet_core.lessons import how_far
from studio import lesson_view, state, workshop_view

ss = st.session_state
BEST_RUNS = 5


def session_data() -> dict[str, Any]:
    """What :func:`pet_core.handout.build_handout` needs, from this session and the ledger."""
    lessons, _ = lesson_view.lessons()
    done = lesson_view.progress()
    base = state.baseline()
    out_lessons = []
    for lesson in lessons:
        entry = done.get(lesson.id)
        if entry is None:
            continue
        guess = {"question": lesson.exercise.question, "guess": entry["guess"], "truth": entry.get("truth"),
                 "unit": lesson.exercise.unit,
                 "error": None if entry.get("truth") is None else how_far(entry["guess"], entry["truth"],
                                                                          lesson.exercise.unit)["text"]}
        figure = lesson_view.figure(lesson, base) if base is not None else None
        out_lessons.append({"id": lesson.id, "title": lesson.title, "done": entry.get("truth") is not None,
                            "guesses": [guess], "figure": figure})
    runs = state.runs()
    metric = "perplexity" if any((r.get("metrics") or {}).get("perplexity") is not None for r in runs) else "accuracy"
    scored = [r for r in runs if (r.get("metrics") or {}).get(metric) is not None and r["kind"] != "baseline"]
    scored.sort(key=lambda r: (r["metrics"][metric] if metric == "perplexity" else -r["metrics"][metric],
                               r["metrics"].get("size_bytes") or 0))
    best = [{"id": r["id"], "label": r.get("label") or "", "kind": r["kind"], "metric_name": metric,
             "metric": r["metrics"][metric], "size_bytes": r["metrics"].get("size_bytes"),
             "compression_ratio": r["metrics"].get("compression_ratio"), "recipe": r.get("recipe") or {}}
            for r in scored[:BEST_RUNS]]
    points = [{"series": "yours", "size_bytes": r["metrics"]["size_bytes"], metric: r["metrics"][metric],
               "label": r.get("label") or f"run {r['id']}"} for r in runs
              if (r.get("metrics") or {}).get(metric) is not None and r["metrics"].get("size_bytes")]
    figures = [{"title": "Your runs", "figure": pareto_figure(points, metric={"name": metric, "label": metric})}] \
        if points else []
    who = workshop_view.joined()
    src = ss["source"]
    return {"nickname": state.user(), "workshop": who["code"] if who else None,
            "created": dt.datetime.now().isoformat(timespec="seconds"), "model": src["model"],
            "dataset": src["dataset"], "lessons": out_lessons, "runs": best, "figures": figures}


def _html(data: dict[str, Any]) -> str:
    try:
        return build_handout(data)
    except PetError as exc:
        return f"<!doctype html><meta charset=utf-8><p>The handout could not be built: {html.escape(str(exc))}</p>"


def download_button(key: str) -> None:
    """The handout's button; the data is gathered now (cached figures, one ledger query), the HTML built
    only when it is clicked."""
    data = session_data()
    st.download_button("Download my handout (HTML)", lambda: _html(data), file_name=f"pet-studio-handout-{state.user()}.html",
                       mime="text/html", key=f"{key}_handout", icon=":material/description:",
                       help="your lessons, guesses vs the measured answers, your best runs with their recipes "
                            "and the figures, in one file that opens offline")
