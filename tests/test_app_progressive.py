"""Progressive evaluation through the app (AppTest): Compress shows a labelled estimate first, then the
exact number, which alone is recorded as a run; other pages wait for the exact number; a second
session trying the same configuration gets the exact number at once.

Oracle: a workbench of our own over the same baseline, evaluated eagerly (pet_core.metrics.evaluate).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from pet_core.ledger import Ledger
from pet_core.loader import load_baseline, open_workbench
from pet_core.metrics import evaluate
from pet_core.recipe import Recipe, to_token

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def at_sparsity(sparsity: float) -> Recipe:
    return Recipe(model="lenet_300_100", dataset="mnist",
                  default={"prune": {"method": "magnitude", "scope": "global", "sparsity": sparsity},
                           "quantize": {"bits": 4, "scheme": "symmetric", "granularity": "per_channel"}})


@pytest.fixture(scope="module")
def slow_everything(mnist_dir, tmp_path_factory):
    """Every exact evaluation counts as slow (lenet on MNIST is fast enough to be exact at once)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PET_MNIST_DIR", str(mnist_dir))
    mp.setenv("PET_WORKSPACE", str(tmp_path_factory.mktemp("workspace")))
    mp.setattr("studio.state.SLOW_EXACT_S", -1.0)
    yield load_baseline("lenet_300_100", "mnist", str(mnist_dir))
    mp.undo()


def on_compress(recipe: Recipe, user: str) -> AppTest:
    """A session that opens the app (its home page evaluates a start recipe exactly) and then moves
    Compress's sparsity slider to ``recipe``'s."""
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params["recipe"] = to_token(at_sparsity(0.5))
    at.query_params["user"] = user
    at.run()
    at.switch_page("pages/compress.py").run()
    return move(at, recipe.default["prune"].sparsity)


def move(at: AppTest, sparsity: float) -> AppTest:
    return at.slider(f"c_prune_sparsity@{at.session_state['recipe_version']}").set_value(sparsity).run()


def first_metric(at: AppTest) -> tuple[str, str]:
    m = at.metric[0]
    return m.label, m.value


def exact_value(base, recipe: Recipe) -> float:
    wb = open_workbench(base)
    wb.apply(recipe)
    return evaluate(wb.model, base.dataset.x_test, base.dataset.y_test, "image_classification")


def test_estimate_first_then_the_exact_number_which_alone_is_recorded(slow_everything):
    base = slow_everything
    recipe = at_sparsity(0.91)
    at = on_compress(recipe, "ana")
    assert not at.exception, [e.value for e in at.exception]
    label, value = first_metric(at)
    assert label.startswith("Accuracy (estimate) ± ") and value.startswith("≈ ")
    assert "estimate on" in at.caption[0].value and "of 10,000 test items" in at.caption[0].value
    assert not [r for r in Ledger().runs(kinds=["post-training"])   # nothing recorded from an estimate
                if r["owner"] == "ana" and r["recipe"]["default"]["prune"]["sparsity"] == 0.91]
    runner = at.session_state["exact_runner"]
    runner.wait(60)
    at.run()
    label, value = first_metric(at)
    truth = exact_value(base, recipe)
    assert label == "Accuracy" and value == f"{truth:.2%}"
    runs = [r for r in Ledger().runs(kinds=["post-training"]) if r["owner"] == "ana"
            and r["recipe"]["default"]["prune"]["sparsity"] == 0.91]
    assert len(runs) == 1 and runs[0]["metrics"]["accuracy"] == pytest.approx(truth)
    assert runs[0]["metrics"]["size_bytes_huffman"]             # computed with the exact number
    assert "exact, all 10,000 test items" in at.caption[0].value and f"run #{runs[0]['id']}" in at.caption[0].value


def test_other_pages_wait_for_the_exact_number(slow_everything):
    recipe = at_sparsity(0.92)
    at = on_compress(recipe, "ben")
    assert first_metric(at)[0].startswith("Accuracy (estimate)")
    at.switch_page("pages/pareto.py").run()
    assert not at.exception, [e.value for e in at.exception]
    runs = [r for r in Ledger().runs(kinds=["post-training"]) if r["owner"] == "ben"
            and r["recipe"]["default"]["prune"]["sparsity"] == 0.92]
    assert len(runs) == 1 and runs[0]["metrics"]["accuracy"] == pytest.approx(exact_value(slow_everything, recipe))


def test_a_second_session_gets_a_configuration_tried_before_at_once(slow_everything):
    recipe = at_sparsity(0.93)
    first = on_compress(recipe, "cleo")
    first.session_state["exact_runner"].wait(60)
    second = on_compress(recipe, "dan")
    label, value = first_metric(second)
    assert label == "Accuracy" and value == f"{exact_value(slow_everything, recipe):.2%}"
    assert not second.session_state["exact_runner"].running()


def test_a_newer_move_wins(slow_everything):
    recipe = at_sparsity(0.94)
    at = on_compress(recipe, "eve")
    move(at, 0.95)                                              # before the first exact number is ready
    at.session_state["exact_runner"].wait(60)
    at.run()
    moved = at_sparsity(0.95)
    label, value = first_metric(at)
    assert label == "Accuracy" and value == f"{exact_value(slow_everything, moved):.2%}"
    assert not at.exception, [e.value for e in at.exception]
