"""The participant's handout: their lessons, guesses vs the truth, best runs with recipes, the figures."""

from __future__ import annotations

import datetime as dt
import html
from typing import Any

import streamlit as st

from pet_core.errors import PetError
from pet_core.figures import pareto_figure
from pet_core.handout import build_handout
from pet_core.lesson_figures import lesson_figure
from pet_core.lessons import how_far, load_lessons
from studio import lesson_view, state, workshop_view

ss = st.session_state
BEST_RUNS = 5


def session_data(progress: dict[str, dict], base, runs: list[dict], nickname: str, workshop: str | None,
                 source: dict[str, Any]) -> dict[str, Any]:
    """What :func:`pet_core.handout.build_handout` needs; plain Python (it runs when the button is clicked)."""
    lessons, _ = load_lessons()
    out_lessons = []
    for lesson in lessons:
        entry = progress.get(lesson.id)
        if entry is None:
            continue
        truth = entry.get("truth")
        guess = {"question": lesson.exercise.question, "guess": entry["guess"], "truth": truth,
                 "unit": lesson.exercise.unit,
                 "error": None if truth is None else how_far(entry["guess"], truth, lesson.exercise.unit)["text"]}
        try:
            figure = None if base is None else lesson_figure(lesson.figure, base, lesson.figure_recipe)
        except Exception:                     # drawn on the page already, or said why there
            figure = None
        out_lessons.append({"id": lesson.id, "title": lesson.title, "done": truth is not None,
                            "guesses": [guess], "figure": figure})
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
    return {"nickname": nickname, "workshop": workshop, "created": dt.datetime.now().isoformat(timespec="seconds"),
            "model": source["model"], "dataset": source["dataset"], "lessons": out_lessons, "runs": best,
            "figures": figures}


def _html(*args) -> str:
    try:
        return build_handout(session_data(*args))
    except PetError as exc:
        return f"<!doctype html><meta charset=utf-8><p>The handout could not be built: {html.escape(str(exc))}</p>"


def download_button(key: str, base) -> None:
    """The handout's button: what it needs is captured now (a copy of the guesses, one ledger query), the
    figures and the HTML are made only when it is clicked."""
    who = workshop_view.joined()
    args = ({k: dict(v) for k, v in lesson_view.progress().items()}, base, state.runs() if base is not None else [],
            state.user(), who["code"] if who else None, dict(ss["source"]))
    st.download_button("Download my handout (HTML)", lambda: _html(*args),
                       file_name=f"pet-studio-handout-{state.user()}.html", mime="text/html", key=f"{key}_handout",
                       icon=":material/description:",
                       help="your lessons, guesses vs the measured answers, your best runs with their recipes "
                            "and the figures, in one file that opens offline")
