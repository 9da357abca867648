"""The app on models we did not write (issue 11), driven as a person would (AppTest): a tiny GPT-2
folder loaded by path, with a token file or weights only.

Oracles: the engine called independently on the same folder, file and recipe (the page adds no
numbers of its own); the ledger row the page recorded; Streamlit's own metric colour for the
direction. The GPT-2 is built from a config (random weights, nothing downloaded).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.proto.Metric_pb2 import Metric
from streamlit.testing.v1 import AppTest

pytest.importorskip("transformers")

import hf_models  # noqa: E402  (after the skip: it needs transformers)

from pet_core.ledger import Ledger  # noqa: E402
from pet_core.loader import load_baseline, open_workbench  # noqa: E402
from pet_core.metrics import PERPLEXITY  # noqa: E402
from studio.serve import upload_limit_args  # noqa: E402
from studio.sources import paths_allowed  # noqa: E402

APP = str(Path(__file__).resolve().parents[1] / "app.py")
TIMEOUT = 120   # generous: two shared cores; a page here takes about a second


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> tuple[str, str]:
    """The folder and a token stream file; the default zoo model trained first, as the app opens on it.

    Paths are allowed explicitly: the server address comes from .streamlit/config.toml only when pytest
    runs from the repository."""
    load_baseline("lenet_300_100", "digits")
    root = tmp_path_factory.mktemp("real")
    folder = hf_models.gpt2_folder(root / "gpt2")
    np.savez(root / "tokens.npz", tokens=np.random.default_rng(0).integers(0, hf_models.GPT2_VOCAB, 200))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PET_ALLOW_PATHS", "1")
        yield str(folder), str(root / "tokens.npz")


def metrics(at: AppTest) -> dict[str, object]:
    return {m.label: m for m in at.metric}


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def load_by_path(at: AppTest, folder: str, dataset: str, data_path: str = "") -> AppTest:
    at.switch_page("pages/model.py").run()
    at.radio(key="m_kind").set_value("Path on this server")
    at.text_input(key="m_path").set_value(folder)
    at.selectbox(key="m_dataset").set_value(dataset)
    if data_path:
        at.text_input(key="m_data_path").set_value(data_path)
    return at.button[0].click().run()      # the form's "Load"


def set_widget(at: AppTest, name: str, value) -> None:
    """Set the Compress widget of recipe field ``name`` (keys carry the recipe version)."""
    key = f"{name}@{at.session_state['recipe_version']}"
    widgets = [w for kind in ("selectbox", "radio", "slider", "select_slider", "number_input")
               for w in at.get(kind) if w.key == key]
    assert widgets, f"no widget {name}"
    widgets[0].set_value(value)
    at.run()


def test_gpt2_folder_by_path_shows_perplexity_lower_is_better_and_the_tied_row(gpt2):
    folder, tokens = gpt2
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    load_by_path(at, folder, "file on this server", tokens)
    assert_clean(at)
    engine = open_workbench(load_baseline(folder, tokens))
    shown = metrics(at)
    assert shown["Baseline perplexity"].value == PERPLEXITY.format(engine.baseline_metric)
    table = at.dataframe[0].value                    # compressible tensors: the embedding tied to the head
    assert table.set_index("tensor").loc["transformer.wte", "tied"] == "lm_head"
    assert "lm_head" not in set(table["tensor"])

    at.switch_page("pages/compress.py").run()
    set_widget(at, "c_prune", "magnitude")
    set_widget(at, "c_prune_sparsity", 0.5)
    set_widget(at, "c_code", "quantize")
    set_widget(at, "c_quantize_bits", 4)
    assert_clean(at)
    recipe = at.session_state["recipe"]
    assert recipe.default["prune"].sparsity == 0.5 and recipe.default["quantize"].bits == 4
    engine.apply(recipe)
    expected = engine.report()
    ppl = metrics(at)["Perplexity"]
    assert ppl.value == PERPLEXITY.format(expected["compressed"]["perplexity"])
    worse = expected["compressed"]["perplexity"] > engine.baseline_metric      # lower is better: a rise is red
    assert Metric.MetricColor.Name(ppl.proto.color) == ("RED" if worse else "GREEN")
    assert metrics(at)["Size"].value == f"{expected['compressed']['size_bytes']:,} B"
    rows = at.dataframe[-1].value.set_index("name")     # the report (the overrides editor comes first)
    assert rows.loc["transformer.wte", "tied"] == "tied: lm_head"
    assert rows.loc["transformer.h.0.attn.c_attn", "type"] == "Conv1D"
    assert 0 < rows.loc["transformer.h.0.attn.c_attn", "relative_error"] < 1

    run = Ledger().get(at.session_state["report"][2]["run_id"])      # recorded under the metric's name
    assert run["metrics"]["metric"] == "perplexity" and run["metrics"]["higher_is_better"] is False
    assert run["metrics"]["perplexity"] == expected["compressed"]["perplexity"]

    at.switch_page("pages/pareto.py").run()
    assert_clean(at)
    assert "perplexity (lower is better)" in at.get("plotly_chart")[0].proto.spec     # the y axis's label


def test_weights_only_says_not_measured_and_every_page_stays_up(gpt2):
    folder, _ = gpt2
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    before = dict(at.session_state["source"])
    load_by_path(at, folder + "-missing", "none: weights only")
    assert len(at.error) == 1 and "no model file or folder" in at.error[0].value
    assert at.session_state["source"] == before              # the previous model stays

    load_by_path(at, folder, "none: weights only")
    assert_clean(at)
    assert metrics(at)["Baseline perplexity (not measured)"].value == "—"
    at.switch_page("pages/compress.py").run()
    assert_clean(at)
    assert metrics(at)["Perplexity (not measured)"].value == "—"
    assert metrics(at)["Perplexity (not measured)"].delta in ("", None)

    at.switch_page("pages/weights.py").run()
    assert_clean(at)
    cache = dict(at.session_state["w_cache"])
    assert cache and not any(k[0] in ("svd", "all") for k in cache)     # the spectrum only on request
    at.toggle[0].set_value(False).run()                                  # an unrelated rerun: nothing recomputed
    assert all(at.session_state["w_cache"][k] is v for k, v in cache.items())
    at.toggle(key="w_svd").set_value(True).run()
    assert_clean(at)
    assert any(k[0] == "svd" for k in at.session_state["w_cache"])

    for page in ("pages/finetune.py", "pages/pareto.py"):       # they say plainly that they need a dataset
        at.switch_page(page).run()
        assert_clean(at)
        assert any("without a dataset" in i.value for i in at.info), page
    at.switch_page("pages/export.py").run()                    # the tied embedding and head: no traceback
    assert_clean(at)
    assert "safetensors" in " ".join(str(b.proto.label) for b in at.get("download_button"))


@pytest.mark.parametrize("environ, address, allowed", [
    ({}, "127.0.0.1", True), ({}, "localhost", True), ({}, "0.0.0.0", False), ({}, "", False),
    ({"PET_ALLOW_PATHS": "1"}, "0.0.0.0", True), ({"PET_ALLOW_PATHS": "0"}, "127.0.0.1", False),
])
def test_paths_are_offered_on_a_local_server_or_when_the_owner_allows(environ, address, allowed):
    assert paths_allowed(environ, address) is allowed


def test_upload_cap_comes_from_the_environment():
    assert upload_limit_args([], {}) == []
    assert upload_limit_args([], {"PET_MAX_UPLOAD_MB": "4096"}) == ["--server.maxUploadSize", "4096"]
    assert upload_limit_args(["--server.maxUploadSize", "5"], {"PET_MAX_UPLOAD_MB": "4096"}) == []   # the flag wins
    with pytest.raises(SystemExit, match="PET_MAX_UPLOAD_MB"):
        upload_limit_args([], {"PET_MAX_UPLOAD_MB": "lots"})
