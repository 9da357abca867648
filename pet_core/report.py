"""A self-contained HTML report: the metrics table and the same figures the app draws."""

from __future__ import annotations

import html
from typing import Any

import plotly.graph_objects as go

from pet_core.metrics import ACCURACY, METRICS, Metric
from pet_core.recipe import Recipe, dumps

NOTE = ("Accuracy is measured on the decoded weights. Sizes are accounted: the bytes each tensor's "
        "encoding takes (no file written). Masks and fake quantization give no speed-up.")


def cli_command(recipe: Recipe, recipe_path: str = "recipe.yaml", data_dir: str | None = None) -> str:
    """The command that reproduces a report's numbers headless."""
    verb = "finetune" if recipe.finetune else "evaluate"
    cmd = f"python -m pet_core {verb} --model {recipe.model} --dataset {recipe.dataset}"
    if data_dir:
        cmd += f" --data-dir {data_dir}"
    return cmd + f" --recipe {recipe_path} --json"


def metric_for_report(report: dict[str, Any]) -> Metric:
    """The report's metric (accuracy for reports written before metrics had names)."""
    return METRICS.get((report.get("metric") or {}).get("name"), ACCURACY)


def html_report(report: dict[str, Any], figures: list[go.Figure], command: str) -> str:
    """One HTML file, plotly.js embedded once (no CDN), readable offline."""
    b, c = report["baseline"], report["compressed"]
    metric = metric_for_report(report)
    recipe = Recipe.from_dict(report["recipe"])
    cols = ("name", "type", "params", "nonzero", "bits", "encoding", "size_bytes")
    head = "".join(f"<th>{h}</th>" for h in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r[k]))}</td>" for k in cols) + "</tr>"
                   for r in report["layers"])
    figs = "".join(f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figures))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>PET Studio report: {html.escape(recipe.model)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}pre{{background:#f4f4f4;padding:1em}}</style></head><body>
<h1>PET Studio report: {html.escape(recipe.model)} on {html.escape(str(recipe.dataset))}</h1>
<table><tr><th></th><th>{html.escape(metric.label)}</th><th>size (bytes)</th><th>ratio</th></tr>
<tr><td>baseline</td><td>{metric.format(b.get(metric.name))}</td><td>{b['size_bytes']:,}</td><td>1.00×</td></tr>
<tr><td>compressed</td><td>{metric.format(c.get(metric.name))}</td><td>{c['size_bytes']:,}</td><td>{c['compression_ratio']:.2f}×</td></tr></table>
<p>{NOTE}</p><h2>Layers</h2><table><tr>{head}</tr>{body}</table>
<h2>Recipe</h2><pre>{html.escape(dumps(recipe))}</pre><h2>Reproduce</h2><pre>{html.escape(command)}</pre>
{figs}</body></html>"""
