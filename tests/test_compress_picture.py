"""The picture beside the Compress sliders (issue 12), driven as a person would (AppTest), and its parts.

Oracles: the engine called independently on the same recipe (the threshold, the bytes, the metric),
``numpy.histogram`` for the overlay counts, the ledger for the session's points.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from pet_core import analysis
from pet_core.analysis import layer_stats
from pet_core.figures import session_points_figure, weight_histogram
from pet_core.loader import load_baseline
from pet_core.recipe import Recipe, to_token
from pet_core.workbench import Workbench
from studio.compress_picture import current_point
from studio.layer_view import overlay_counts

APP = str(Path(__file__).resolve().parents[1] / "app.py")
COMPRESS, WEIGHTS = "pages/compress.py", "pages/weights.py"


@pytest.fixture(scope="module", autouse=True)
def _workspace_and_model(tmp_path_factory):
    """A fresh run ledger for this module; the default zoo model (lenet_300_100 on digits) loaded first."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PET_WORKSPACE", str(tmp_path_factory.mktemp("workspace")))
    yield load_baseline("lenet_300_100", "digits")
    mp.undo()


def key(at: AppTest, name: str) -> str:
    return f"{name}@{at.session_state['recipe_version']}"


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def charts(at: AppTest) -> dict[str, dict]:
    """The page's plotly figures by their chart key ("cp_histogram", "cp_session_plot"), as JSON."""
    out = {}
    for chart in at.get("plotly_chart"):
        spec = json.loads(chart.proto.spec)
        title = spec["layout"]["title"]["text"]
        out["cp_histogram" if "weight distribution" in title else "cp_session_plot" if "this session" in title
            else title] = spec
    return out


def threshold_lines(spec: dict) -> list[float]:
    return sorted(s["x0"] for s in spec["layout"].get("shapes", []) if s["line"].get("dash") == "dash")


def engine(recipe) -> Workbench:
    base = load_baseline("lenet_300_100", "digits")
    wb = Workbench(base.model, base.dataset.x_test, base.dataset.y_test)
    wb.apply(recipe)
    return wb


@pytest.fixture(scope="module")
def app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.switch_page(COMPRESS).run()
    assert_clean(at)
    return at


def test_compress_shows_the_largest_layer_and_the_session_plot(app):
    figures = charts(app)
    assert set(figures) == {"cp_histogram", "cp_session_plot"}, set(figures)
    sizes = {n: m.weight.numel() for n, m in load_baseline("lenet_300_100", "digits").model.named_children()
             if hasattr(m, "weight")}
    largest = max(sizes, key=sizes.get)                            # on 8x8 digits: fc2, 300 x 100
    assert app.selectbox(key="cp_layer").value == largest
    assert figures["cp_histogram"]["layout"]["title"]["text"].startswith(f"{largest}:")
    assert figures["cp_histogram"]["layout"]["height"] <= 300


def test_the_threshold_moves_with_the_sparsity_slider_and_equals_the_engines(app):
    app.switch_page(COMPRESS).run()
    app.slider(key=key(app, "c_prune_sparsity")).set_value(0.5).run()
    before = threshold_lines(charts(app)["cp_histogram"])
    app.slider(key=key(app, "c_prune_sparsity")).set_value(0.9).run()
    assert_clean(app)
    after = threshold_lines(charts(app)["cp_histogram"])
    assert before != after and len(after) == 2
    t = engine(app.session_state["recipe"]).result(app.selectbox(key="cp_layer").value).threshold
    assert after == pytest.approx([-t, t])
    assert before[1] < after[1]                                    # more pruning: a higher threshold


def test_the_overlay_counts_the_compressed_non_zero_weights(app):
    app.switch_page(COMPRESS).run()
    wb, name = engine(app.session_state["recipe"]), app.selectbox(key="cp_layer").value
    w = wb.layers[name].weight.detach().numpy().ravel()
    bars = [t for t in charts(app)["cp_histogram"]["data"] if t["type"] == "bar"]
    assert len(bars) == 2                                          # baseline and compressed
    edges = layer_stats(name, "Linear", wb.baseline_weight(name)).hist_edges
    expected, _ = np.histogram(w[w != 0], bins=len(edges) - 1, range=(edges[0], edges[-1]))
    assert list(_values(bars[1]["y"])) == expected.tolist()
    assert f"{int((w == 0).sum()):,} zeros" in bars[1]["name"]


def _values(y) -> list:
    """A trace's values: a list, or plotly's base64 typed array."""
    if isinstance(y, dict):
        import base64
        return np.frombuffer(base64.b64decode(y["bdata"]), dtype=np.dtype(y["dtype"])).tolist()
    return y


def test_now_is_a_star_at_the_reports_numbers_beside_the_earlier_runs(app):
    app.switch_page(COMPRESS).run()
    for sparsity in (0.6, 0.8):
        app.slider(key=key(app, "c_prune_sparsity")).set_value(sparsity).run()
    assert_clean(app)
    spec = charts(app)["cp_session_plot"]
    now = [t for t in spec["data"] if t["name"].startswith("now")]
    assert len(now) == 1 and now[0]["marker"]["symbol"] == "star" and now[0]["name"] == "now"
    report = app.session_state["report"][2]
    c = engine(app.session_state["recipe"]).report()["compressed"]
    assert now[0]["x"] == [c["size_bytes"]] == [report["compressed"]["size_bytes"]]
    assert now[0]["y"] == pytest.approx([c["accuracy"]])
    earlier = [x for t in spec["data"] if t["mode"] == "markers" for x in _values(t["x"])]
    assert len(earlier) >= 2 and spec["layout"]["xaxis"]["type"] == "log"   # the baseline and sparsity 0.6 at least
    assert "baseline" in {t["name"] for t in spec["data"]}


@pytest.mark.slow      # trains lenet_300_100 on MNIST once per test session (digits is always exact)
def test_an_estimate_is_starred_with_its_interval_then_the_exact_number(monkeypatch, mnist_dir):
    """Every exact evaluation counted as slow: on MNIST a move shows an estimate first, then the exact number."""
    monkeypatch.setenv("PET_MNIST_DIR", str(mnist_dir))
    monkeypatch.setattr("studio.state.SLOW_EXACT_S", -1.0)
    base = load_baseline("lenet_300_100", "mnist", str(mnist_dir))
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params["recipe"] = to_token(Recipe(model="lenet_300_100", dataset="mnist", default={
        "prune": {"method": "magnitude", "scope": "global", "sparsity": 0.5}}))
    at.run()
    at.switch_page(COMPRESS).run()
    at.slider(key=key(at, "c_prune_sparsity")).set_value(0.43).run()
    assert_clean(at)
    report = at.session_state["report"][2]
    evaluation = report["evaluation"]
    assert evaluation["exact"] is False
    now = next(t for t in charts(at)["cp_session_plot"]["data"] if t["name"].startswith("now"))
    assert now["name"] == "now (estimate)" and now["y"] == [report["compressed"]["accuracy"]]
    assert now["error_y"]["array"] == pytest.approx([evaluation["high"] - now["y"][0]])
    assert now["error_y"]["arrayminus"] == pytest.approx([now["y"][0] - evaluation["low"]])
    at.session_state["exact_runner"].wait(60)
    at.run()
    assert_clean(at)
    now = next(t for t in charts(at)["cp_session_plot"]["data"] if t["name"].startswith("now"))
    wb = Workbench(base.model, base.dataset.x_test, base.dataset.y_test)
    wb.apply(at.session_state["recipe"])
    exact = wb.report()["compressed"]["accuracy"]
    assert now["name"] == "now" and now["y"] == pytest.approx([exact]) and "error_y" not in now


def test_a_click_elsewhere_recomputes_nothing_and_a_move_only_the_one_layer(app):
    app.switch_page(COMPRESS).run()
    cache = app.session_state["w_cache"]
    before = {k: v for k, v in cache.items() if k[0] == "before"}
    figure = app.session_state["cp_session"]
    app.run()                                                      # nothing changed
    assert app.session_state["cp_session"] is figure
    app.slider(key=key(app, "c_prune_sparsity")).set_value(0.7).run()
    assert all(app.session_state["w_cache"][k] is v for k, v in before.items())   # baseline statistics kept


def test_the_layer_picked_stays_across_pages(app):
    app.switch_page(COMPRESS).run()
    app.selectbox(key="cp_layer").set_value("fc3").run()
    assert charts(app)["cp_histogram"]["layout"]["title"]["text"].startswith("fc3:")
    app.switch_page(WEIGHTS).run()
    assert_clean(app)
    app.switch_page(COMPRESS).run()
    assert app.selectbox(key="cp_layer").value == "fc3"


def test_a_weights_page_rerun_rebuilds_no_figure_of_the_layer(app):
    app.switch_page(WEIGHTS).run()
    assert_clean(app)
    cache = dict(app.session_state["w_cache"])
    assert {"heatmap", "sparsity", "overlay", "before"} <= {k[0] for k in cache}
    app.toggle[0].set_value(not app.toggle[0].value).run()           # log scale: nothing to recompute
    assert_clean(app)
    assert all(app.session_state["w_cache"][k] is v for k, v in cache.items())


def test_weights_only_shows_the_histogram_no_plot_and_no_error(tmp_path, monkeypatch):
    """A tiny GPT-2 folder without a dataset (a zoo model's file would bring its dataset along)."""
    pytest.importorskip("transformers")
    import hf_models

    monkeypatch.setenv("PET_ALLOW_PATHS", "1")
    folder = hf_models.gpt2_folder(tmp_path / "gpt2")
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.switch_page("pages/model.py").run()
    at.radio(key="m_kind").set_value("Path on this server")
    at.text_input(key="m_path").set_value(str(folder))
    at.selectbox(key="m_dataset").set_value("none: weights only")
    at.button[0].click().run()                                     # the form's "Load"
    assert_clean(at)
    at.switch_page(COMPRESS).run()
    assert_clean(at)
    assert set(charts(at)) == {"cp_histogram"}
    assert any("not measured" in c.value and "no perplexity-vs-size plot" in c.value for c in at.caption)
    at.slider(key=key(at, "c_prune_sparsity")).set_value(0.9).run()
    assert_clean(at)
    assert set(charts(at)) == {"cp_histogram"}
    assert threshold_lines(charts(at)["cp_histogram"])             # the picture still moves


# --- the parts ---------------------------------------------------------------------------------


def test_an_estimate_is_labelled_with_its_error_bar():
    report = {"metric": {"name": "accuracy", "higher_is_better": True, "label": "accuracy"},
              "compressed": {"accuracy": 0.91, "size_bytes": 5000},
              "evaluation": {"exact": False, "low": 0.88, "high": 0.93}}
    current = current_point(report, "accuracy")
    fig = session_points_figure([], current, "accuracy", True)
    now = fig.data[-1]
    assert now.name == "now (estimate)" and now.marker.symbol == "star"
    assert now.error_y.array[0] == pytest.approx(0.02) and now.error_y.arrayminus[0] == pytest.approx(0.03)
    del report["evaluation"]["low"], report["evaluation"]["high"]                  # no bounds: no bar
    assert session_points_figure([], current_point(report, "accuracy"), "accuracy", True).data[-1].error_y.array is None
    report["evaluation"] = {"exact": True}
    assert session_points_figure([], current_point(report, "accuracy"), "accuracy", True).data[-1].name == "now"


def test_the_frontier_follows_the_metrics_direction():
    points = [{"size_bytes": s, "perplexity": p, "series": "post-training", "label": str(s)}
              for s, p in ((10, 40.0), (20, 30.0), (30, 50.0), (40, 20.0))]
    fig = session_points_figure(points, None, "perplexity", False)
    front = next(t for t in fig.data if t.name == "frontier")
    assert list(front.x) == [10, 20, 40]                               # lower perplexity is better
    assert "lower is better" in fig.layout.yaxis.title.text


@pytest.mark.parametrize("metric, higher", [("accuracy", True), ("perplexity", False)])
def test_the_frontier_is_the_pareto_front(metric, higher):
    from pet_core.pareto import directions, pareto_front

    rng = np.random.default_rng(0)
    points = [{"size_bytes": int(s), metric: float(v), "series": "sweep", "label": ""}
              for s, v in zip(rng.integers(100, 10_000, 60), rng.random(60))]
    front = next(t for t in session_points_figure(points, None, metric, higher).data if t.name == "frontier")
    expected = sorted(pareto_front(points, directions(metric)), key=lambda i: points[i]["size_bytes"])
    assert list(front.x) == [points[i]["size_bytes"] for i in expected]
    assert list(front.y) == [points[i][metric] for i in expected]


def test_histogram_lines_are_the_threshold_and_the_levels():
    fig = weight_histogram("w", [-1.0, 0.0, 1.0], [3, 5], threshold=0.25, levels=[-0.5, 0.5, 2.0], height=260)
    xs = sorted(s.x0 for s in fig.layout.shapes)
    assert xs == [-0.5, -0.25, 0.25, 0.5]                              # the level outside the range is not drawn
    assert fig.layout.height == 260


def test_overlay_counts_read_the_same_sample_as_the_baseline(monkeypatch):
    torch.manual_seed(0)
    w = torch.randn(64, 100)
    w[w.abs() < 0.5] = 0
    monkeypatch.setattr(analysis, "HIST_MAX_SAMPLES", 1000)          # 6400 weights: a stride of 7
    before = layer_stats("w", "Linear", w)
    assert before.hist_sampled
    sample = w.reshape(-1)[::7].numpy()
    expected, _ = np.histogram(sample[sample != 0], bins=len(before.hist_counts),
                               range=(before.hist_edges[0], before.hist_edges[-1]))
    assert overlay_counts(before, w) == expected.tolist()
