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
