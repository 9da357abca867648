"""The workshop handout (pet_core/handout.py): one self-contained HTML file under 1 MB that draws the
session's plotly figures offline, escapes every user string, and keeps to its size limit.

The browser test opens the file from ``file://`` in Debian's Chromium (``/usr/bin/chromium``) with
Playwright, aborting and recording every request that is not ``file:``/``data:``/``blob:``; its
screenshot lands in ``artifacts/screenshots/handout.png``.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import os
import re
import tarfile
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import plotly.graph_objects as go
import pytest

from pet_core import plotly_bundle
from pet_core.errors import PetError
from pet_core.handout import BUNDLE_TRACES, BUNDLE_VERSION, MAX_BYTES, build_handout
from pet_core.plotly_bundle import bundle_path

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL_SCHEMES = {"file", "data", "blob"}
HOSTILE_NICK = "<script>alert(1)</script>"
HOSTILE_LABEL = '"><img src=x onerror=alert(2)>run & <b>bold</b>'
HOSTILE_TITLE = "</figcaption><script>alert(3)</script>"
HOSTILE_RECIPE = "</pre><script>alert(4)</script>"


# --- a session ------------------------------------------------------------------------------------

def pareto_figure() -> go.Figure:
    rng = np.random.default_rng(0)
    size = rng.uniform(0.05, 1.2, 12) * 1e6
    acc = 0.99 - 0.04 / (1 + size / 2e5) + rng.normal(0, 0.002, 12)
    fig = go.Figure(go.Scatter(x=size, y=acc, mode="markers+lines", name="runs",
                               text=[f"run {i}" for i in range(12)], marker=dict(size=9)))
    fig.update_layout(title="Accuracy vs size", xaxis=dict(type="log", title="bytes"),
                      yaxis=dict(title="accuracy"), height=380)
    return fig


def histogram_figure() -> go.Figure:
    w = np.random.default_rng(1).normal(0, 0.05, 4000)
    return go.Figure(go.Histogram(x=w, nbinsx=80), layout=dict(title="Weights of fc1", height=340))


def heatmap_figure(n: int = 12, m: int = 8, seed: int = 2) -> go.Figure:
    z = np.random.default_rng(seed).uniform(0, 1, (n, m))
    return go.Figure(go.Heatmap(z=z, x=[f"{b} bit" for b in range(1, m + 1)], y=[f"layer {i}" for i in range(n)],
                                colorscale="Viridis"), layout=dict(title="Sensitivity", height=380))


def bar_figure() -> go.Figure:
    return go.Figure(go.Bar(x=["fc1", "fc2", "fc3"], y=[235_200, 30_000, 1_000], name="params"),
                     layout=dict(title="Parameters per layer", height=320))


def line_figure() -> go.Figure:
    x = np.arange(50)
    return go.Figure(go.Scatter(x=x, y=np.exp(-x / 12), mode="lines"), layout=dict(title="Loss", height=320))


def make_session(figures: list | None = None, lesson_figure=None) -> dict:
    if figures is None:
        figures = [("Pareto: " + HOSTILE_TITLE, pareto_figure()), ("Sensitivity", heatmap_figure()),
                   ("Parameters", bar_figure().to_dict())]   # a figure dict as well as Figures
    lesson_figure = histogram_figure() if lesson_figure is None else lesson_figure
    return {
        "nickname": HOSTILE_NICK, "workshop": "Tiny models, big savings <2026>", "created": "2026-12-07T14:30:00",
        "model": "lenet_300_100", "dataset": "mnist",
        "lessons": [
            {"id": "sizes", "title": "How big is a model?", "done": True,
             "guesses": [{"question": "Size of fc1 in float32?", "guess": 500_000.0, "truth": 940_800.0,
                          "unit": "bytes", "error": 0.47},
                         {"question": "Accuracy after 90% pruning <b>?", "guess": 0.9, "truth": 0.978,
                          "unit": "", "error": 0.08}],
             "figure": lesson_figure},
            {"id": "quant", "title": "Quantize", "done": False, "guesses": [], "figure": None},
        ],
        "runs": [
            {"id": 1, "label": "baseline", "kind": "identity", "metric_name": "accuracy", "metric": 0.981,
             "size_bytes": 1_066_440, "compression_ratio": 1.0, "recipe": {"steps": []}},
            {"id": 2, "label": HOSTILE_LABEL, "kind": "prune", "metric_name": "accuracy", "metric": 0.975,
             "size_bytes": 120_000, "compression_ratio": 8.89,
             "recipe": {"steps": [{"prune": {"sparsity": 0.9, "note": HOSTILE_RECIPE}}]}},
            {"id": 3, "label": "int4", "kind": "quantize", "metric_name": "accuracy", "metric": None,
             "size_bytes": 133_305, "compression_ratio": 8.0,
             "recipe": {"steps": [{"quantize": {"bits": 4, "per_channel": True}}]}},
        ],
        "figures": [{"title": t, "figure": f} for t, f in figures],
    }


def without_bundle(text: str) -> str:
    return re.sub(r'(<script[^>]*id="plotly-bundle"[^>]*>).*?(</script>)', r"\1\2", text, flags=re.S)


def n_plots(text: str) -> int:
    return len(re.findall(r'<div class="plot" id="plot-\d+" data-fig=', text))


REMOTE = [r'src\s*=\s*["\']?\s*(https?:)?//', r'href\s*=\s*["\']?\s*(https?:)?//', r"@import", r"url\(\s*['\"]?\s*(https?:)?//",
          r"<link\b", r"@font-face", r"<iframe\b", r"<img\b"]


def test_the_fetcher_refuses_a_tarball_that_is_not_the_pinned_one():
    fake = io.BytesIO()
    with tarfile.open(fileobj=fake, mode="w:gz") as tar:
        body = b"alert('not plotly')"
        info = tarfile.TarInfo(plotly_bundle.MEMBER)
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    with pytest.raises(PetError, match="SHA-1"):
        plotly_bundle.extract(fake.getvalue())


def test_a_missing_bundle_is_a_message_naming_make_setup(tmp_path, monkeypatch):
    from pet_core import handout

    monkeypatch.setenv("PET_VENDOR_DIR", str(tmp_path))
    handout._bundle_b64.cache_clear()
    try:
        with pytest.raises(PetError, match="make setup"):
            handout._bundle_b64()
    finally:
        monkeypatch.undo()
        handout._bundle_b64.cache_clear()


# --- the file -------------------------------------------------------------------------------------

def test_bundle_matches_python_plotly():
    from plotly.offline import get_plotlyjs_version

    raw = gzip.decompress(bundle_path().read_bytes())
    assert hashlib.sha256(raw).hexdigest() == plotly_bundle.FILE_SHA256        # the pinned file, as fetched
    js = raw.decode("utf-8")
    assert f"plotly.js (cartesian - minified) v{BUNDLE_VERSION}" in js[:300]
    assert BUNDLE_VERSION.split(".")[0] == get_plotlyjs_version().split(".")[0]
    assert (ROOT / "assets" / "vendor" / "PLOTLY_LICENSE.txt").read_text().count("MIT License") == 1
    for trace in BUNDLE_TRACES:
        assert f'moduleType:"trace",name:"{trace}"' in js


def test_app_trace_types_are_in_the_bundle():
    """The trace types the app's figure modules use are all in the cartesian bundle."""
    used = set()
    for name in ("figures.py", "pareto.py", "sensitivity_figures.py", "compare_figures.py"):
        src = (ROOT / "pet_core" / name).read_text()
        used |= {m.lower() for m in re.findall(r"go\.(Scatter\w*|Bar\w*|Heatmap\w*|Histogram\w*|Box|Violin|Pie|"
                                                r"Contour\w*|Image|Scatter3d|Surface|Mesh3d|Table|Sankey)\(", src)}
        used |= set(re.findall(r'\btype="(scatter\w*|bar|heatmap|histogram\w*|box|violin|pie)"', src))
    assert used and used <= BUNDLE_TRACES, used - BUNDLE_TRACES


def test_handout_small_offline_and_escaped():
    text = build_handout(make_session())
    size = len(text.encode("utf-8"))
    assert size < MAX_BYTES, size
    assert n_plots(text) == 4
    assert "left out" not in text
    rest = without_bundle(text)
    assert len(rest) < len(text) - 500_000            # the bundle is the bulk of it, and only it is removed
    for pattern in REMOTE:
        assert not re.search(pattern, rest, flags=re.I), pattern
    # hostile strings come out as text
    assert "<script>alert" not in text and "onerror=alert" not in text.replace("onerror=alert(2)&gt;", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;img src=x onerror=alert(2)&gt;run &amp; &lt;b&gt;bold&lt;/b&gt;" in text
    assert "&lt;/pre&gt;&lt;script&gt;alert(4)&lt;/script&gt;" in text
    assert "&lt;/figcaption&gt;&lt;script&gt;alert(3)&lt;/script&gt;" in text
    assert not re.search(r"<img|<b>bold", text)
    # only the three scripts of the page: figure data, the bundle, the loader
    assert len(re.findall(r"<script\b", text)) == 3
    # recipes as YAML, guesses and runs as tables
    assert "sparsity: 0.9" in text and "per_channel: true" in text
    for header in ("Your guess", "Measured", "How far off", "Size", "Metric"):
        assert header in text
    assert "1.07 MB" in text and "—" in text              # bytes, and a missing metric
    assert "500,000 bytes" in text and "940,800 bytes" in text and "0.978" in text


def test_five_figures_fit():
    figs = [("Pareto", pareto_figure()), ("Sensitivity", heatmap_figure()), ("Parameters", bar_figure()),
            ("Loss", line_figure())]
    text = build_handout(make_session(figs))
    assert n_plots(text) == 5
    assert len(text.encode("utf-8")) < MAX_BYTES
    # the layout template is stored once, not in every figure
    assert text.count('"colorway"') == 1


def test_no_figures_no_bundle():
    s = make_session([])
    s["lessons"][0]["figure"] = None
    text = build_handout(s)
    assert "plotly-bundle" not in text and "<script" not in text.replace("&lt;script", "")
    assert len(text.encode("utf-8")) < 50_000


def test_size_guard_drops_largest_first():
    huge = [(f"Heatmap {i}", go.Figure(go.Heatmap(z=np.random.default_rng(i).uniform(size=(300, 300)))))
            for i in range(20)]
    text = build_handout(make_session(huge))
    assert len(text.encode("utf-8")) <= MAX_BYTES
    assert n_plots(text) == 1                         # the lesson's histogram still fits
    assert "20 charts left out" in text and text.count("limit (largest charts are left out first)") == 20

    # mid-sized: the biggest go first, the small ones stay
    mid = [("small bar", bar_figure()), ("big", heatmap_figure(120, 120, 1)), ("bigger", heatmap_figure(160, 160, 2)),
           ("small line", line_figure())]
    text = build_handout(make_session(mid))
    assert len(text.encode("utf-8")) <= MAX_BYTES
    assert "1 chart left out" in text and "“bigger”" in text.split("left out")[1][:200]
    assert n_plots(text) == 4


def test_size_guard_raises_when_text_alone_is_too_big():
    s = make_session([("Pareto", pareto_figure())])
    s["runs"] = [{**s["runs"][0], "id": i, "recipe": {"note": "x" * 2_000}} for i in range(600)]
    with pytest.raises(PetError, match="even without any chart"):
        build_handout(s)


def test_unsupported_trace_is_left_out_with_a_note():
    text = build_handout(make_session([("3D", go.Figure(go.Scatter3d(x=[1], y=[2], z=[3]))),
                                       ("Bar", bar_figure())]))
    assert n_plots(text) == 2 and "scatter3d" in text and "cannot be drawn offline" in text


def test_bad_input():
    with pytest.raises(PetError):
        build_handout("nope")
    with pytest.raises(PetError):
        build_handout(make_session([("bad", {"data": [{"type": "nosuchtrace"}]})]))


# --- in a browser ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_handout_in_chromium_offline(tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("playwright not installed (pip install playwright)")
    from playwright.sync_api import sync_playwright

    figs = [("Pareto: " + HOSTILE_TITLE, pareto_figure()), ("Sensitivity", heatmap_figure()),
            ("Parameters", bar_figure())]
    text = build_handout(make_session(figs))
    n = n_plots(text)
    assert n == 4
    path = tmp_path / "handout.html"
    path.write_text(text, encoding="utf-8")

    offsite, errors, console, dialogs, seen = [], [], [], [], []

    def route(r):
        url = r.request.url
        seen.append(url)
        if urlsplit(url).scheme in LOCAL_SCHEMES:
            r.continue_()
        else:
            offsite.append(url)
            r.abort()

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
            viewport={"width": 1100, "height": 900}, args=CHROMIUM_ARGS)
        try:
            context.route("**/*", route)
            context.on("request", lambda req: None if urlsplit(req.url).scheme in LOCAL_SCHEMES
                       else offsite.append(req.url))
            page = context.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(path.as_uri())
            page.wait_for_function("document.body.dataset.charts", timeout=60_000)
            state = page.evaluate("document.body.dataset.charts")
            status = page.locator("#chart-status").inner_text()
            assert state == "drawn", status
            drawn = page.evaluate("""() => Array.from(document.querySelectorAll('.plot[data-fig]')).filter(d =>
                d.classList.contains('js-plotly-plot') && d.querySelector('.main-svg') &&
                d.querySelectorAll('.cartesianlayer .trace, .heatmaplayer image, .barlayer .trace').length > 0).length""")
            assert drawn == n
            assert page.locator(".plot[data-fig]").count() == n
            assert page.locator(".js-plotly-plot").count() == n
            # .main-svg: one main layer per plot (plotly adds a second svg for hover/info layers)
            assert page.locator(".js-plotly-plot > .plot-container > .svg-container > .main-svg:first-child").count() == n
            assert page.locator(".js-plotly-plot .modebar").count() == n       # interactive: the modebar is there
            assert page.locator(".modebar .plotlyjsicon").count() == 0         # displaylogo False
            # the hostile strings are visible as text, nothing ran
            assert HOSTILE_NICK in page.locator("header h1 + .meta").inner_text()
            assert any(HOSTILE_TITLE in t for t in page.locator("figcaption").all_inner_texts())
            assert "<b>bold</b>" in page.locator("table").nth(1).inner_text()
            assert page.title().endswith(HOSTILE_NICK)
            # hover a Pareto point: plotly's hover label shows up
            pareto = page.locator(".plot[data-fig]").nth(1)
            pareto.scroll_into_view_if_needed()
            page.evaluate("""() => { const d = document.querySelectorAll('.plot[data-fig]')[1];
                                     Plotly.Fx.hover(d, [{curveNumber: 0, pointNumber: 3}]); }""")
            page.wait_for_selector(".hoverlayer .hovertext", timeout=5_000)
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(SHOTS / "handout.png"), full_page=True)
        finally:
            context.close()
    assert not offsite, f"requests left the machine: {offsite}"
    assert not errors, errors
    assert not console, console
    assert not dialogs, dialogs
    assert seen and all(urlsplit(u).scheme in LOCAL_SCHEMES for u in seen)
