"""The Sensitivity & plan page as a person drives it (AppTest), across two sessions and into Compress.

Analyse (a worker job) → the heatmap and ranking, read back from the ledger; a second session finds
the analysis there and is not offered to run it again; Plan (a worker job) → the measured numbers;
"Load into Compress" → Compress shows exactly the engine's numbers for the planned recipe.
Oracles: the ledger's rows and ``pet_core`` called directly (``Workbench`` on the planned recipe).
"""

import time

import pytest
from streamlit.testing.v1 import AppTest

from pet_core.loader import load_baseline
from pet_core.recipe import Recipe
from pet_core.sensitivity import SensitivityConfig, cached
from pet_core.workspace import ledger_path
from studio.state import ledger as app_ledger
from test_app import assert_clean, engine_numbers, metrics, new_app

LADDER = SensitivityConfig(sparsities=(0.5, 0.9), bits=(8, 4))
POLL_LIMIT_S = 180


@pytest.fixture(scope="module", autouse=True)
def _model_in_cache_and_app_ledger():
    load_baseline("lenet_300_100", "digits")
    assert app_ledger().path == ledger_path()
    yield


def open_plan_page() -> AppTest:
    at = new_app()
    at.switch_page("pages/plan.py").run()
    assert_clean(at)
    at.multiselect(key="pl_sparsities").set_value(list(LADDER.sparsities)).run()
    at.multiselect(key="pl_bits").set_value(list(LADDER.bits)).run()
    assert_clean(at)
    return at


def buttons(at: AppTest) -> dict:
    return {b.key: b for b in at.button if b.key}


def poll(at: AppTest, done) -> None:
    deadline = time.monotonic() + POLL_LIMIT_S
    while time.monotonic() < deadline:
        at.run()
        assert_clean(at)
        assert not at.error, [e.value for e in at.error]
        if done(at):
            return
        time.sleep(0.3)
    raise AssertionError(f"the page did not finish within {POLL_LIMIT_S} s")


def test_analyse_plan_and_load_into_compress_across_two_sessions():
    at = open_plan_page()
    assert at.title[0].value == "Sensitivity & plan"
    assert cached(app_ledger(), load_baseline("lenet_300_100", "digits"), LADDER) is None
    go = buttons(at)["pl_sens_go"]
    assert "3 layers × 4 settings" in go.label
    go.click().run()
    poll(at, lambda a: "pl_sens_go" not in buttons(a) and any(d.value is not None for d in a.dataframe))
    found = cached(app_ledger(), load_baseline("lenet_300_100", "digits"), LADDER)
    assert found is not None and found["complete"]
    table = at.dataframe[0].value
    assert list(table["layer"]) == found["ranking"]
    assert list(table["mean drop"]) == pytest.approx([r["mean_drop"] for r in sorted(
        found["layers"], key=lambda r: found["ranking"].index(r["name"]))])

    other = open_plan_page()                     # another person, same model and ladder: read, not rerun
    assert "pl_sens_go" not in buttons(other)
    assert any(f"run #{found['run_id']}" in c.value for c in other.caption)

    at.number_input(key="pl_ratio").set_value(10.0).run()
    buttons(at)["pl_plan_go"].click().run()
    poll(at, lambda a: "Target" in metrics(a))
    result = at.session_state["pl_plan_result"]
    assert metrics(at)["Target"] == "met"
    assert metrics(at)["Size (accounted)"] == f"{result['measured']['size_bytes']:,} B"
    run = app_ledger().get(result["run_id"])
    assert run["parent_id"] == found["run_id"] and run["metrics"]["accuracy"] == result["measured"]["accuracy"]

    buttons(at)["pl_load"].click().run()
    assert_clean(at)
    at.switch_page("pages/compress.py").run()
    assert_clean(at)
    planned = Recipe.from_dict(result["recipe"])
    shown = metrics(at)
    acc, size = engine_numbers(planned.replace(model="lenet_300_100", dataset="digits"))
    assert shown["Size"] == size == f"{result['measured']['size_bytes']:,} B"
    assert acc in [v for k, v in shown.items() if k.lower().startswith("accuracy")]
    assert at.session_state["recipe"].layers == planned.layers


def test_an_empty_ladder_says_so_and_offers_nothing_to_run():
    at = new_app()
    at.switch_page("pages/plan.py").run()
    at.multiselect(key="pl_sparsities").set_value([]).run()
    at.multiselect(key="pl_bits").set_value([]).run()
    assert_clean(at)
    assert any("ladder is empty" in w.value for w in at.warning)
    assert "pl_sens_go" not in buttons(at) and buttons(at)["pl_plan_go"].disabled
