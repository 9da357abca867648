"""A workshop participant's handout: one self-contained HTML file of their session.

``build_handout(session)`` returns the HTML text. The file opens offline: no request leaves the
machine (no CDN script, no web font, no remote image). The charts are the app's plotly figures,
still interactive: the official plotly.js *cartesian* partial bundle (fetched by ``make setup``, see
:mod:`pet_core.plotly_bundle` and ``assets/vendor/PLOTLY_LICENSE.txt``) rides along gzip-compressed and base64-encoded, and the browser unpacks it with
the native ``DecompressionStream('gzip')`` before drawing each figure with ``Plotly.newPlot``.

The file stays under :data:`MAX_BYTES`: when it would not, the largest figures are left out first
(the handout says which, and why); when even a handout without any figure is too big,
:class:`~pet_core.errors.PetError` is raised. Every string from the session is escaped.

``session`` is plain data::

    {"nickname": str, "workshop": str | None, "created": ISO datetime str, "model": str, "dataset": str,
     "lessons": [{"id", "title", "done": bool,
                  "guesses": [{"question", "guess", "truth", "unit", "error"}],
                  "figure": plotly Figure | dict | None}],
     "runs": [{"id", "label", "kind", "metric_name", "metric": float | None, "size_bytes",
               "compression_ratio", "recipe": dict}],
     "figures": [{"title": str, "figure": plotly Figure | dict}]}

This module never imports streamlit.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import math
from datetime import datetime
from typing import Any

import yaml

from pet_core import plotly_bundle
from pet_core.errors import PetError

MAX_BYTES = 1_000_000

BUNDLE_NAME, BUNDLE_VERSION = plotly_bundle.NAME, plotly_bundle.VERSION
# The trace types the cartesian bundle registers; a figure with any other trace is left out.
BUNDLE_TRACES = frozenset({"bar", "box", "contour", "heatmap", "histogram", "histogram2d",
                           "histogram2dcontour", "image", "pie", "scatter", "scatterternary", "violin"})
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


# --- small formatting helpers ----------------------------------------------------------------------

def _e(value: Any) -> str:
    """Escape anything for HTML text or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def _num(x: Any, digits: int = 4) -> str:
    if x is None:
        return "—"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return _e(x)
    if math.isnan(v):
        return "—"
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    if v.is_integer() and abs(v) < 1e15:
        return f"{int(v):,}"
    if abs(v) >= 1e15 or (v != 0 and abs(v) < 1e-3):
        return f"{v:.{digits - 1}e}"
    return f"{v:,.0f}" if abs(v) >= 10 ** digits else f"{v:.{digits}g}"


def _bytes(n: Any) -> str:
    try:
        v = int(n)
    except (TypeError, ValueError):
        return "—"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(v) >= size:
            return f"{v / size:.2f} {unit}"
    return f"{v} B"


def _when(created: Any) -> str:
    try:
        return datetime.fromisoformat(str(created)).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return str(created or "")


def _script_json(obj: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">``: no ``<``, ``>``, ``&``."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


@functools.lru_cache(maxsize=1)
def _bundle_b64() -> str:
    path = plotly_bundle.bundle_path()
    try:
        return base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError as exc:
        raise PetError(f"the plotly.js bundle for handouts is missing: {path} ({exc.strerror}); "
                       "`make setup` fetches it from the npm registry") from exc


# --- figures -------------------------------------------------------------------------------------

class _Fig:
    """One figure slot: where it goes, its JSON (data/layout/template index) or why it is left out."""

    def __init__(self, slot: str, title: str, spec: dict | None, why_not: str | None = None):
        self.slot, self.title, self.spec, self.why_not = slot, title, spec, why_not
        self.size = len(_script_json(spec)) if spec is not None else 0

    @property
    def shown(self) -> bool:
        return self.spec is not None and self.why_not is None


def _figure_dict(fig: Any) -> dict:
    """A plotly Figure or figure dict as plain JSON data (numpy arrays as plotly's typed arrays)."""
    import plotly.io as pio

    try:
        return json.loads(pio.to_json(fig, validate=True, remove_uids=True))
    except (ValueError, TypeError) as exc:
        raise PetError(f"not a plotly figure: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc


def _collect_figures(session: dict) -> tuple[list[_Fig], list[dict]]:
    """Every figure of the session, in page order, and the shared list of layout templates."""
    figs: list[_Fig] = []
    templates: list[dict] = []
    keys: dict[str, int] = {}

    def add(slot: str, title: str, fig: Any) -> None:
        if fig is None:
            return
        d = _figure_dict(fig)
        data, layout = d.get("data") or [], dict(d.get("layout") or {})
        kinds = sorted({str(t.get("type") or "scatter") for t in data} - BUNDLE_TRACES)
        if kinds:
            figs.append(_Fig(slot, title, None, f"its chart type ({', '.join(kinds)}) cannot be drawn offline "
                                                f"by the handout's plotly.js bundle"))
            return
        spec: dict = {"data": data, "layout": layout}
        template = layout.pop("template", None)
        if template is not None:   # the same ~7 kB template in every figure: store it once
            key = json.dumps(template, sort_keys=True, separators=(",", ":"))
            if key not in keys:
                keys[key] = len(templates)
                templates.append(template)
            spec["t"] = keys[key]
        figs.append(_Fig(slot, title, spec))

    for i, lesson in enumerate(session.get("lessons") or []):
        add(f"lesson-{i}", str(lesson.get("title") or lesson.get("id") or f"Lesson {i + 1}"), lesson.get("figure"))
    for i, item in enumerate(session.get("figures") or []):
        add(f"figure-{i}", str(item.get("title") or f"Figure {i + 1}"), item.get("figure"))
    return figs, templates


def _figure_block(f: _Fig, index: dict[str, int], caption: bool = True) -> str:
    cap = f"<figcaption>{_e(f.title)}</figcaption>" if caption else ""
    if f.shown:
        n = index[f.slot]
        return (f'<figure class="chart">{cap}'
                f'<div class="plot" id="plot-{n}" data-fig="{n}" role="img" aria-label="{_e(f.title)}">'
                f'<p class="placeholder">Loading the interactive chart…</p></div></figure>')
    return (f'<figure class="chart dropped">{cap}'
            f'<p class="note">This chart is not in the handout: {_e(f.why_not)}.</p></figure>')


# --- page ----------------------------------------------------------------------------------------

CSS = """
:root{--fg:#1d2330;--muted:#5b6475;--line:#dde1e8;--bg:#f6f7f9;--card:#fff;--accent:#3b5bdb;--ok:#2b8a3e;--warn:#b35c00}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
 font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans",sans-serif}
main{max-width:980px;margin:0 auto;padding:28px 20px 60px}
header.top{border-bottom:3px solid var(--accent);margin-bottom:24px;padding-bottom:12px}
h1{font-size:28px;margin:0 0 4px}
h2{font-size:20px;margin:32px 0 12px}
h3{font-size:16px;margin:0 0 8px}
.meta{color:var(--muted);margin:0}
.meta b{color:var(--fg);font-weight:600}
section.card,article.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px 18px;margin:14px 0}
.badge{display:inline-block;font-size:12px;padding:1px 8px;border-radius:10px;margin-left:8px;vertical-align:2px;
 border:1px solid currentColor}
.badge.done{color:var(--ok)}.badge.todo{color:var(--muted)}
table{border-collapse:collapse;width:100%;margin:6px 0 10px;font-variant-numeric:tabular-nums}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:13px;color:var(--muted);font-weight:600;background:#fafbfc}
td.n,th.n{text-align:right}
pre{background:#f1f3f6;border:1px solid var(--line);border-radius:6px;padding:10px 12px;overflow:auto;
 font:12.5px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;margin:6px 0}
details summary{cursor:pointer;color:var(--accent)}
figure.chart{margin:12px 0;background:var(--card);border:1px solid var(--line);border-radius:10px;padding:10px 12px}
figcaption{font-weight:600;margin-bottom:6px}
.plot{min-height:380px;width:100%}
.placeholder,.note,.empty{color:var(--muted);font-style:italic}
.note{color:var(--warn)}
.notice{background:#fff4e6;border:1px solid #ffd8a8;border-radius:8px;padding:10px 14px;margin:12px 0}
#chart-status:empty{display:none}
footer{color:var(--muted);font-size:12.5px;margin-top:40px;border-top:1px solid var(--line);padding-top:10px}
@media print{body{background:#fff}section.card,article.card,figure.chart{break-inside:avoid}}
"""

LOADER_JS = """
(async function () {
  var status = document.getElementById("chart-status");
  function fail(msg) {
    status.textContent = "The interactive charts could not be drawn: " + msg;
    document.querySelectorAll(".plot .placeholder").forEach(function (p) { p.textContent = "Chart unavailable."; });
  }
  try {
    if (typeof DecompressionStream === "undefined") {
      throw new Error("this browser has no DecompressionStream; open the file in a current Chrome, Edge, Firefox or Safari");
    }
    var b64 = document.getElementById("plotly-bundle").textContent.trim();
    var raw = atob(b64), bytes = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    var code = await new Response(new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"))).text();
    var url = URL.createObjectURL(new Blob([code], {type: "text/javascript"}));
    await new Promise(function (resolve, reject) {
      var s = document.createElement("script");
      s.src = url;
      s.onload = resolve;
      s.onerror = function () { reject(new Error("the plotly.js bundle did not load")); };
      document.head.appendChild(s);
    });
    URL.revokeObjectURL(url);
    if (!window.Plotly) throw new Error("plotly.js did not start");
    var payload = JSON.parse(document.getElementById("figure-data").textContent);
    var nodes = document.querySelectorAll(".plot[data-fig]");
    for (var k = 0; k < nodes.length; k++) {
      var div = nodes[k], f = payload.figures[+div.getAttribute("data-fig")];
      var layout = f.layout || {};
      if (f.t !== undefined) layout.template = payload.templates[f.t];
      div.textContent = "";
      div.style.minHeight = "0";
      await Plotly.newPlot(div, f.data, layout, payload.config);
    }
    document.body.setAttribute("data-charts", "drawn");
  } catch (err) {
    fail(err && err.message ? err.message : String(err));
    document.body.setAttribute("data-charts", "failed");
  }
})();
"""


def _lesson_html(i: int, lesson: dict, figs: dict[str, _Fig], index: dict[str, int]) -> str:
    done = bool(lesson.get("done"))
    badge = '<span class="badge done">done</span>' if done else '<span class="badge todo">not finished</span>'
    parts = [f'<article class="card" id="lesson-{i}"><h3>{_e(lesson.get("title") or lesson.get("id") or f"Lesson {i + 1}")}'
             f'{badge}</h3>']
    guesses = lesson.get("guesses") or []
    if guesses:
        rows = []
        for g in guesses:
            unit = _e(g.get("unit") or "")
            rows.append(f'<tr><td>{_e(g.get("question"))}</td><td class="n">{_num(g.get("guess"))} {unit}</td>'
                        f'<td class="n">{_num(g.get("truth"))} {unit}</td><td class="n">{_num(g.get("error"), 3)}</td></tr>')
        parts.append('<table><thead><tr><th>Question</th><th class="n">Your guess</th><th class="n">Measured</th>'
                     '<th class="n">How far off</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>")
    else:
        parts.append('<p class="empty">No guesses recorded.</p>')
    if f"lesson-{i}" in figs:
        parts.append(_figure_block(figs[f"lesson-{i}"], index, caption=False))
    parts.append("</article>")
    return "".join(parts)


def _runs_html(runs: list[dict]) -> str:
    if not runs:
        return '<p class="empty">No runs recorded.</p>'
    rows, recipes = [], []
    for r in runs:
        ratio = r.get("compression_ratio")
        ratio_s = f"{_num(ratio, 3)}×" if ratio is not None else "—"
        metric_name = _e(r.get("metric_name") or "metric")
        rows.append(f'<tr><td class="n">{_e(r.get("id"))}</td><td>{_e(r.get("label"))}</td><td>{_e(r.get("kind"))}</td>'
                    f'<td class="n">{_num(r.get("metric"))} <small>{metric_name}</small></td>'
                    f'<td class="n" title="{_e(r.get("size_bytes"))} bytes">{_bytes(r.get("size_bytes"))}</td>'
                    f'<td class="n">{ratio_s}</td></tr>')
        recipe = r.get("recipe")
        if recipe:
            try:
                text = yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True, default_flow_style=False)
            except yaml.YAMLError:
                text = json.dumps(recipe, indent=2, default=str)
            recipes.append(f'<details><summary>Run {_e(r.get("id"))}: {_e(r.get("label"))}</summary>'
                           f'<pre>{_e(text)}</pre></details>')
    table = ('<table><thead><tr><th class="n">#</th><th>Label</th><th>Kind</th><th class="n">Metric</th>'
             '<th class="n">Size</th><th class="n">Compression</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>")
    if recipes:
        table += '<h3>Recipes</h3>' + "".join(recipes)
    return table


def _render(session: dict, figs: list[_Fig], templates: list[dict]) -> str:
    shown = [f for f in figs if f.shown]
    index = {f.slot: n for n, f in enumerate(shown)}
    by_slot = {f.slot: f for f in figs}
    nickname = str(session.get("nickname") or "participant")
    workshop = session.get("workshop")
    title = f"PET Studio handout — {nickname}"
    meta = [f'<b>{_e(nickname)}</b>']
    if workshop:
        meta.append(f'workshop <b>{_e(workshop)}</b>')
    if session.get("created"):
        meta.append(f'{_e(_when(session.get("created")))}')
    meta.append(f'model <b>{_e(session.get("model"))}</b> on <b>{_e(session.get("dataset"))}</b>')

    body = [f'<header class="top"><h1>PET Studio handout</h1><p class="meta">{" · ".join(meta)}</p></header>']
    dropped = [f for f in figs if not f.shown]
    if dropped:
        names = ", ".join(f"“{_e(f.title)}”" for f in dropped)
        body.append(f'<div class="notice">{len(dropped)} chart{"s" if len(dropped) != 1 else ""} left out of this '
                    f'handout: {names}. Each place says why.</div>')
    if shown:
        body.append('<noscript><div class="notice">The charts are interactive plotly charts and need JavaScript; '
                    'the tables below are complete without it.</div></noscript>')
        body.append('<div class="notice" id="chart-status" role="status"></div>')

    lessons = session.get("lessons") or []
    body.append("<h2>Lessons</h2>")
    if lessons:
        body.extend(_lesson_html(i, lesson, by_slot, index) for i, lesson in enumerate(lessons))
    else:
        body.append('<p class="empty">No lessons recorded.</p>')
    body.append(f'<h2>Runs</h2><section class="card">{_runs_html(session.get("runs") or [])}</section>')
    extra = [by_slot[f"figure-{i}"] for i in range(len(session.get("figures") or [])) if f"figure-{i}" in by_slot]
    if extra:
        body.append("<h2>Charts</h2>")
        body.extend(_figure_block(f, index) for f in extra)
    footer = "Made with PET Studio. This file is self-contained and works offline."
    if shown:
        footer += (f" Charts drawn with plotly.js {BUNDLE_VERSION} (cartesian bundle, MIT license, © Plotly), "
                   "embedded in this file.")
    body.append(f"<footer>{_e(footer)}</footer>")

    scripts = ""
    if shown:
        payload = {"config": PLOT_CONFIG, "templates": templates, "figures": [f.spec for f in shown]}
        scripts = (f'<script type="application/json" id="figure-data">{_script_json(payload)}</script>\n'
                   f'<script type="application/octet-stream" id="plotly-bundle" data-name="{BUNDLE_NAME}" '
                   f'data-version="{BUNDLE_VERSION}" data-encoding="gzip+base64">{_bundle_b64()}</script>\n'
                   f'<script>{LOADER_JS}</script>\n')
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "script-src 'unsafe-inline' 'unsafe-eval' blob:; style-src 'unsafe-inline'; img-src data: blob:; "
            "font-src data:; connect-src data: blob:\">"
            f"<title>{_e(title)}</title><style>{CSS}</style></head>\n"
            f'<body><main>{"".join(body)}</main>\n{scripts}</body></html>\n')


def build_handout(session: dict) -> str:
    """The handout HTML of one workshop session, at most :data:`MAX_BYTES` bytes (UTF-8).

    When the whole session does not fit, figures are left out, the largest first, and the handout
    names them; raises :class:`PetError` when even the handout without figures is too big.
    """
    if not isinstance(session, dict):
        raise PetError(f"a handout needs a session dict, not {type(session).__name__}")
    figs, templates = _collect_figures(session)
    while True:
        shown = [f for f in figs if f.shown]
        used = sorted({f.spec["t"] for f in shown if "t" in f.spec})
        remap = {old: new for new, old in enumerate(used)}
        for f in shown:
            if "t" in f.spec:
                f.spec = {**f.spec, "t": remap[f.spec["t"]]}
        templates = [templates[t] for t in used]
        text = _render(session, figs, templates)
        size = len(text.encode("utf-8"))
        if size <= MAX_BYTES:
            return text
        if not shown:
            raise PetError(f"the handout is {size:,} bytes even without any chart, over the {MAX_BYTES:,}-byte "
                           "limit: too many runs, guesses or recipe text")
        largest = max(shown, key=lambda f: f.size)
        largest.why_not = (f"at {largest.size / 1e3:,.0f} kB of chart data it would push the handout over its "
                           f"{MAX_BYTES / 1e6:g} MB limit (largest charts are left out first)")
