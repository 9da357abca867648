"""The app as a person drives it (AppTest): every page, the Compress widgets, errors, isolation.

The oracle for every number on a page is the engine itself, called independently with the same
recipe: a page adds no numbers of its own.
"""

import re
import time
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from pet_core.loader import load_baseline
from pet_core.pretrained import pretrained
from pet_core.recipe import Recipe, to_token
from pet_core.workbench import Workbench
from pet_core.zoo import adapt_dataset

APP = str(Path(__file__).resolve().parents[1] / "app.py")
# Every page of the navigation in app.py (st.Page("pages/...")), read from it so a page added there is covered.
PAGES = re.findall(r'st\.Page\(\s*"(pages/[^"]+\.py)"', Path(APP).read_text())


@pytest.fixture(scope="module", autouse=True)
def _workspace_and_models(tmp_path_factory):
    """A fresh run ledger for this module, and the default zoo model trained before any page asks."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PET_WORKSPACE", str(tmp_path_factory.mktemp("workspace")))
    base = load_baseline("lenet_300_100", "digits")
    yield base
    mp.undo()


def key(at: AppTest, name: str) -> str:
    """A recipe widget's key for the app's current recipe version."""
    return f"{name}@{at.session_state['recipe_version']}"


def new_app(**query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def engine_numbers(recipe: Recipe) -> tuple[str, str]:
    """Accuracy and size strings, as the Compress page formats them, computed by the engine alone."""
    base = load_baseline(recipe.model, recipe.dataset)
    wb = Workbench(base.model, base.dataset.x_test, base.dataset.y_test)
    wb.apply(recipe)
    c = wb.report()["compressed"]
    return f"{c['accuracy']:.2%}", f"{c['size_bytes']:,} B"


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


@pytest.fixture(scope="module")
def app() -> AppTest:
    return new_app()


def test_every_page_renders_without_exception(app):
    assert {"pages/plan.py", "pages/compare.py", "pages/finetune.py", "pages/export.py"} <= set(PAGES), PAGES
    assert_clean(app)
    assert "Accuracy" in metrics(app)
    for page in PAGES:
        app.switch_page(page).run()
        assert_clean(app)
        assert not app.error, [e.value for e in app.error]


@pytest.mark.parametrize("controls", [
    {"c_prune_sparsity": 0.9},
    {"c_prune": "l1_channel", "c_prune_sparsity": 0.3},
    {"c_code": "share", "c_share_clusters": 4},
    {"c_code": "quantize", "c_quantize_bits": 3, "c_quantize_scheme": "asymmetric", "c_quantize_granularity": "per_tensor"},
    {"c_prune": "off", "c_factor": "low_rank", "c_low_rank_by": "rank", "c_low_rank_rank": 8},
])
def test_compress_numbers_equal_the_engine(app, controls):
    app.switch_page("pages/compress.py").run()
    for name, value in controls.items():   # set in order: later widgets appear once earlier ones are set
        widget = app.get("slider") + app.get("select_slider") + app.get("selectbox") + app.get("radio") + \
            app.get("number_input")
        matches = [w for w in widget if w.key == key(app, name)]
        assert matches, f"no widget {name} on the page"
        matches[0].set_value(value)
        app.run()
    assert_clean(app)
    recipe = app.session_state["recipe"]
    for name, value in controls.items():
        assert app.session_state[key(app, name)] == value
    accuracy, size = engine_numbers(recipe)
    shown = metrics(app)
    assert shown["Accuracy"] == accuracy
    assert shown["Size"] == size


def test_slider_changes_accuracy_and_bytes(app):
    app.switch_page("pages/compress.py").run()
    app.selectbox(key=key(app, "c_prune")).set_value("magnitude").run()
    app.radio(key=key(app, "c_code")).set_value("quantize").run()
    app.slider(key=key(app, "c_prune_sparsity")).set_value(0.5).run()
    before = metrics(app)
    app.slider(key=key(app, "c_prune_sparsity")).set_value(0.95).run()
    after = metrics(app)
    assert before["Size"] != after["Size"] and before["Weight sparsity"] != after["Weight sparsity"]
    assert app.session_state["recipe"].default["prune"].sparsity == 0.95


def ledger_runs(**filters) -> list[dict]:
    from pet_core.ledger import Ledger

    return Ledger().runs(**filters)


def test_runs_join_the_ledger_and_settings_persist_across_pages(app):
    app.switch_page("pages/compress.py").run()
    app.slider(key=key(app, "c_prune_sparsity")).set_value(0.6).run()
    app.switch_page("pages/pareto.py").run()
    assert_clean(app)
    runs = ledger_runs()
    assert runs[0]["kind"] == "baseline"
    assert any(r["recipe"] and r["recipe"]["default"].get("prune", {}).get("sparsity") == 0.6 for r in runs)
    table = app.dataframe[-1].value
    assert set(r["id"] for r in runs if r["kind"] in ("baseline", "post-training")) <= set(table["run"])
    app.switch_page("pages/weights.py").run()
    app.switch_page("pages/compress.py").run()
    assert app.slider(key=key(app, "c_prune_sparsity")).value == 0.6


def wait_for(job, limit_s: float = 180) -> None:
    deadline = time.monotonic() + limit_s
    while not job.done and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job.done, f"job {job.id} still {job.status()['state']} after {limit_s} s"


def test_sweep_runs_in_a_worker_and_adds_points():
    at = new_app()
    at.switch_page("pages/pareto.py").run()
    at.multiselect[0].set_value([0.5, 0.9])
    at.multiselect[1].set_value([4, 8])
    at.button(key="p_sweep").click().run()
    job = at.session_state["sweep"].job
    wait_for(job)
    assert job.status()["state"] == "done", job.status()
    assert job.status()["result"]["points"] == 4
    at.run()
    assert_clean(at)
    sweep = ledger_runs(kinds=["sweep"])
    assert {(r["recipe"]["default"]["prune"]["sparsity"], r["recipe"]["default"]["quantize"]["bits"])
            for r in sweep} >= {(0.5, 4), (0.5, 8), (0.9, 4), (0.9, 8)}
    assert all(r["metrics"]["accuracy"] == engine_numbers_raw(Recipe.from_dict(r["recipe"]))["accuracy"]
               for r in sweep[:2])


def engine_numbers_raw(recipe: Recipe) -> dict:
    base = load_baseline(recipe.model, recipe.dataset)
    wb = Workbench(base.model, base.dataset.x_test, base.dataset.y_test)
    wb.apply(recipe)
    return wb.report()["compressed"]


def test_finetune_never_changes_compress_and_exports_the_finetuned_run():
    """88%/int4 → fine-tune to done → Compress still 88%/int4; Export builds the fine-tuned weights."""
    at = new_app()
    at.switch_page("pages/compress.py").run()
    at.slider(key=key(at, "c_prune_sparsity")).set_value(0.88).run()
    at.select_slider(key=key(at, "c_quantize_bits")).set_value(4).run()
    before = at.session_state["recipe"].to_dict()
    at.switch_page("pages/finetune.py").run()
    at.number_input(key="f_epochs").set_value(1.0).run()
    at.button(key="f_start").click().run()
    assert_clean(at)
    job = at.session_state["finetune_job"].job
    wait_for(job)
    for _ in range(3):      # the fragment notices the end and reruns the page
        at.run()
    assert_clean(at)
    run_id = at.session_state["finetune_run"]
    run = ledger_runs(kinds=["fine-tuned"])[-1]
    assert run["id"] == run_id and run["status"] == "done", run
    assert metrics(at)["Accuracy after fine-tuning"] == f"{run['metrics']['accuracy']:.2%}"
    at.switch_page("pages/compress.py").run()
    assert at.session_state["recipe"].to_dict() == before
    assert at.slider(key=key(at, "c_prune_sparsity")).value == 0.88
    assert at.select_slider(key=key(at, "c_quantize_bits")).value == 4
    at.session_state["export_run"] = run_id
    at.switch_page("pages/export.py").run()
    assert at.selectbox(key="x_run").value == run_id
    at.selectbox(key="x_format").set_value("packed").run()
    at.button(key="x_build").click().run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    artifact = next(a for rid, a in at.session_state["artifacts"].values() if rid == run_id)
    assert artifact["accuracy"] == run["metrics"]["accuracy"]
    yaml_text = next(c.value for c in at.code if "finetune:" in c.value)
    assert Recipe.from_dict(run["recipe"]).to_dict()["default"] == before["default"]
    assert "sparsity: 0.88" in yaml_text and "bits: 4" in yaml_text

    # Continue from the fine-tuned run: it becomes the baseline, and what is compressed next descends from it.
    at.switch_page("pages/finetune.py").run()
    at.button(key="f_continue").click().run()
    at.switch_page("pages/compress.py").run()
    assert_clean(at)
    assert at.session_state["source"]["model"] == f"run:{run_id}"
    at.slider(key=key(at, "c_prune_sparsity")).set_value(0.93).run()
    assert_clean(at)
    child = ledger_runs(kinds=["post-training"])[-1]
    assert child["model"] == f"run:{run_id}" and child["recipe"]["default"]["prune"]["sparsity"] == 0.93
    from pet_core.ledger import Ledger

    kinds = [r["kind"] for r in Ledger().lineage(child["id"])]
    assert kinds == ["baseline", "post-training", "fine-tuned", "baseline", "post-training"], kinds


def test_shared_link_opens_the_recipe():
    recipe = Recipe(default={"prune": {"method": "magnitude", "scope": "layer", "sparsity": 0.8}},
                    layers={"fc3": {"prune": None}})
    at = new_app(recipe=to_token(recipe))
    assert_clean(at)
    assert at.session_state["recipe"].to_dict() == recipe.to_dict()
    at.switch_page("pages/compress.py").run()
    assert at.slider(key=key(at, "c_prune_sparsity")).value == 0.8
    assert metrics(at)["Accuracy"] == engine_numbers(recipe)[0]


@pytest.mark.parametrize("token, message", [
    ("not-a-token!!", "damaged"),
    (to_token(Recipe(layers={"fc9": {"prune": None}})), "fc9"),
])
def test_bad_link_shows_an_error_and_the_app_keeps_working(token, message):
    at = new_app(recipe=token)
    assert_clean(at)
    assert any("link" in e.value for e in at.error)
    assert any(message in c.value for c in at.code)
    assert "Accuracy" in metrics(at)   # the default recipe still runs


def test_missing_mnist_folder_is_an_error_and_keeps_the_settings(tmp_path):
    at = new_app()
    at.switch_page("pages/model.py").run()
    before = at.session_state["recipe"].to_dict()
    at.selectbox(key="m_dataset").set_value("mnist")
    at.text_input(key="m_data_dir").set_value(str(tmp_path / "nope"))
    at.button[0].click().run()   # the form's "Load"
    assert_clean(at)
    assert any("Could not load" in e.value for e in at.error)
    assert any("nope" in c.value or "MNIST" in c.value for c in at.code)
    assert at.session_state["source"]["dataset"] == "digits"
    assert at.session_state["recipe"].to_dict() == before


def test_two_sessions_are_isolated_and_the_shared_baseline_is_not_mutated():
    a, b = new_app(), new_app()
    a.switch_page("pages/compress.py").run()
    b.switch_page("pages/compress.py").run()
    a.slider(key=key(a, "c_prune_sparsity")).set_value(0.95).run()
    b.slider(key=key(b, "c_prune_sparsity")).set_value(0.1).run()
    a.run()
    assert a.session_state["workbench"] is not b.session_state["workbench"]
    assert metrics(a)["Size"] != metrics(b)["Size"]
    assert metrics(a)["Accuracy"] == engine_numbers(a.session_state["recipe"])[0]
    assert metrics(b)["Accuracy"] == engine_numbers(b.session_state["recipe"])[0]
    shared = a.session_state["workbench"].baseline
    assert shared is b.session_state["workbench"].baseline
    base = load_baseline("lenet_300_100", "digits")
    fresh, _ = pretrained("lenet_300_100", adapt_dataset(base.dataset, "lenet_300_100"))
    for (k, v), (_, w) in zip(shared.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(v, w), f"shared baseline mutated at {k}"


def test_export_page_offers_every_download():
    at = new_app()
    at.switch_page("pages/export.py").run()
    assert_clean(at)
    labels = " ".join(str(b.proto.label) for b in at.get("download_button"))
    for what in ("YAML", "JSON", "safetensors", "HTML"):
        assert what in labels
    assert any("python -m pet_core evaluate" in c.value for c in at.code)


def test_export_builds_measured_artifacts_including_physically_pruned():
    recipe = Recipe(default={"prune": {"method": "l1_channel", "sparsity": 0.5}}, layers={"fc3": {"prune": None}})
    at = new_app(recipe=to_token(recipe))
    at.switch_page("pages/export.py").run()
    at.selectbox(key="x_format").set_value("onnx").run()
    at.button(key="x_build").click().run()
    at.selectbox(key="x_format").set_value("torchscript").run()
    at.toggle(key="x_physical").set_value(True).run()
    at.button(key="x_build").click().run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    table = at.dataframe[-1].value
    run_id = at.selectbox(key="x_run").value
    assert list(table["artifact"]) == [f"#{run_id} onnx", f"#{run_id} torchscript, physically pruned"]
    artifacts = {label.split(" ", 1)[1]: a for label, (_, a) in at.session_state["artifacts"].items()}
    for label, a in artifacts.items():
        assert a["size_bytes"] == Path(a["path"]).stat().st_size     # measured on disk
    accounted_accuracy = engine_numbers(recipe)[0]
    for a in artifacts.values():   # physical removal keeps the masked model's outputs
        assert f"{a['accuracy']:.2%}" == accounted_accuracy
    physical = artifacts["torchscript, physically pruned"]
    assert physical["size_bytes"] < artifacts["onnx"]["size_bytes"] / 1.5


@pytest.mark.slow
def test_finished_finetunes_leave_compress_alone_20_times_in_a_row():
    """The issue's loop: set 88%/int4 → fine-tune to done → Compress shows 88%/int4, 20 times."""
    at = new_app()
    for attempt in range(20):
        at.switch_page("pages/compress.py").run()
        at.slider(key=key(at, "c_prune_sparsity")).set_value(0.88).run()
        at.select_slider(key=key(at, "c_quantize_bits")).set_value(4).run()
        at.switch_page("pages/finetune.py").run()
        at.number_input(key="f_epochs").set_value(0.1).run()
        at.button(key="f_start").click().run()
        wait_for(at.session_state["finetune_job"].job)
        at.run()
        at.switch_page("pages/compress.py").run()
        assert_clean(at)
        assert at.slider(key=key(at, "c_prune_sparsity")).value == 0.88, attempt
        assert at.select_slider(key=key(at, "c_quantize_bits")).value == 4, attempt
        assert at.session_state["recipe"].default["prune"].sparsity == 0.88, attempt
        at.slider(key=key(at, "c_prune_sparsity")).set_value(0.5).run()   # move away, so the next set is a change
