"""The task's metric on a page: its name, its value ("not measured" without a dataset) and its change,
coloured by its direction (a perplexity that rises is shown red, as an accuracy that falls is)."""

from __future__ import annotations

from typing import Any

from pet_core.metrics import METRICS, Metric

NOT_MEASURED_HELP = ("No dataset was given (weights only): sizes, sparsity and reconstruction errors are "
                     "computed, the model is not run. Load a dataset on the Model page to measure it.")


def metric_of(report: dict[str, Any]) -> Metric:
    """The metric a ``Workbench.report()`` names (accuracy for a report from before metrics were named)."""
    m = report.get("metric") or {"name": "accuracy", "higher_is_better": True, "label": "accuracy"}
    return METRICS.get(m["name"]) or Metric(m["name"], bool(m["higher_is_better"]), m.get("label", m["name"]))


def measured(report: dict[str, Any]) -> bool:
    return bool((report.get("metric") or {}).get("measured", True))


def value(report: dict[str, Any], part: str) -> float | None:
    """The metric's value in ``report[part]`` ("baseline" or "compressed"); None when not measured."""
    return report[part].get(metric_of(report).name)


def title(metric: Metric) -> str:
    """The label of a metric widget: "Accuracy", "Perplexity"."""
    return metric.name.capitalize()


def change(metric: Metric, now: float | None, before: float | None) -> str | None:
    """"+1.23 pts" for accuracy, "+4.56" for perplexity; None when either is not measured.

    >>> change(METRICS["accuracy"], 0.95, 0.9625), change(METRICS["perplexity"], 43.0, 40.5)
    ('-1.25 pts', '+2.50')
    """
    if now is None or before is None:
        return None
    if metric.name == "accuracy":
        return f"{(now - before) * 100:+.2f} pts"
    return f"{now - before:+.2f}"


def show(where, metric: Metric, now: float | None, before: float | None = None, *, label: str | None = None,
         suffix: str = "", help: str | None = None) -> None:
    """One ``st.metric`` for the task's metric in ``where`` (a column or ``st``)."""
    delta = change(metric, now, before)
    shown = "—" if now is None else metric.format(now)      # "not measured" is in the label: a column is narrow
    name = label or title(metric)
    where.metric(f"{name} (not measured)" if now is None else name, shown, None if delta is None else delta + suffix,
                 delta_color="normal" if metric.higher_is_better else "inverse",
                 help=NOT_MEASURED_HELP if now is None else help or f"{metric.label}, measured")


def estimated(report: dict[str, Any]) -> bool:
    """True when the report's metric is an estimate on a subset (the exact number is pending)."""
    return not (report.get("evaluation") or {}).get("exact", True)


def evaluation_text(report: dict[str, Any]) -> str:
    """How the report's metric was obtained, in words: "exact, all 10,000 test items (onnxruntime)" or
    "estimate on 1,000 of 10,000 test items, 95% interval 96.50%–97.70%"."""
    ev = report.get("evaluation")
    if not ev:
        return "not measured"
    metric = metric_of(report)
    how = f" ({ev['backend']})" if ev.get("backend") else ""
    if ev.get("exact", True):
        return f"exact, all {ev['total']:,} test items{how}"
    return (f"estimate on {ev['n']:,} of {ev['total']:,} test items{how}, 95% interval "
            f"{metric.format(ev['low'])}–{metric.format(ev['high'])}")


def show_report(where, report: dict[str, Any], *, help: str = "") -> None:
    """The compressed model's metric of ``report``, labelled exact or estimate ("Accuracy (estimate) ± 0.60":
    "≈ 97.10%")."""
    metric = metric_of(report)
    now, before = value(report, "compressed"), value(report, "baseline")
    if not estimated(report) or now is None:
        show(where, metric, now, before, help=(help + " " if help else "") + evaluation_text(report))
        return
    ev = report["evaluation"]
    half = (ev["high"] - ev["low"]) / 2
    spread = f"± {100 * half:.2f}" if metric.name == "accuracy" else f"± {half:.2f}"
    delta = change(metric, now, before)
    # the interval goes in the label: a narrow column cuts the value's end off
    where.metric(f"{title(metric)} (estimate) {spread}", f"≈ {metric.format(now)}",
                 None if delta is None else delta, delta_color="normal" if metric.higher_is_better else "inverse",
                 help=evaluation_text(report) + "; the exact number follows")
