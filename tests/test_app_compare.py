"""The Compare page as a person drives it (AppTest): two recorded runs, their numbers, a run that cannot open.

Oracle: :func:`pet_core.compare.compare_runs` called directly on the same ledger (its own counts are
checked against numpy in tests/test_compare.py); the page adds no numbers of its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from pet_core.compare import compare_runs
from pet_core.ledger import Ledger
from pet_core.loader import load_baseline, open_workbench
from pet_core.recipe import Recipe
from pet_core.runs import identity, record_baseline, record_evaluation

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "compare.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A fresh workspace ledger with the digits baseline run and a 95%-sparse run (the page's defaults)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PET_WORKSPACE", str(tmp_path_factory.mktemp("workspace")))
        baseline = load_baseline("lenet_300_100", "digits")
        wb = open_workbench(baseline)
        wb.apply(Recipe(default={"prune": {"sparsity": 0.95}}))
        led = Ledger()
        sparse_id = record_evaluation(led, baseline, wb.report())
        yield led, baseline, record_baseline(led, baseline), sparse_id


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_compare_page_shows_the_baseline_against_the_newest_run(runs):
    led, _, base_id, sparse_id = runs
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert_clean(at)
    assert at.title[0].value == "Compare runs"
    assert (at.selectbox(key="cmp_a").value, at.selectbox(key="cmp_b").value) == (base_id, sparse_id)
    want = compare_runs(led, base_id, sparse_id)
    shown = metrics(at)
    assert shown["Agreement"] == f"{want['agreement']:.2%}"
    assert (shown["Flipped"], shown["Fixed"], shown["Broken"]) == (
        f"{want['flipped_count']:,}", f"{want['fixed']:,}", f"{want['broken']:,}")
    assert shown["Accuracy B"] == f"{100 * want['metric_b']:.2f}%"
    per_class = at.dataframe[0].value
    assert list(per_class["class"]) == list(range(10))
    assert list(per_class["accuracy_b"]) == pytest.approx([r["accuracy_b"] for r in want["per_class"]])
    layers = at.dataframe[-1].value
    assert list(layers["name"]) == ["fc1", "fc2", "fc3"]
    assert list(layers["relative_diff"]) == pytest.approx([r["relative_diff"] for r in want["layers"]])
    assert len(at.get("image")) == min(48, want["flipped_total"])  # the flipped gallery
    captions = [c.value for c in at.caption]
    assert any(f"of {want['flipped_total']:,}" in c for c in captions)

    at.selectbox(key="cmp_b").set_value(base_id).run()            # a run against itself
    assert_clean(at)
    assert metrics(at)["Agreement"] == "100.00%" and metrics(at)["Flipped"] == "0"


def test_a_run_that_cannot_be_opened_shows_one_error_line(runs):
    led, baseline, base_id, _ = runs
    ident = identity(baseline)
    broken = led.record("fine-tuned", model=ident["model"], model_hash=ident["model_hash"], dataset=ident["dataset"],
                        dataset_hash=ident["dataset_hash"], recipe={"default": {}, "finetune": {"steps": 1}},
                        metrics={"metric": "accuracy", "higher_is_better": True, "accuracy": 0.5},
                        extra=ident["extra"], parent_id=base_id)   # "done", but no weights were ever saved
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    at.selectbox(key="cmp_b").set_value(broken).run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1 and f"run {broken}" in at.error[0].value and "no weights" in at.error[0].value
    assert not at.metric


def test_gallery_and_token_rows_read_the_comparison():
    from studio import compare_view

    item = {"index": 4, "label": 3, "pred_a": 3, "conf_a": 0.981, "pred_b": 5, "conf_b": 0.612, "p_true_a": 0.98,
            "p_true_b": 0.2, "change": -0.78, "image": [[0, 255], [128, 64]]}
    assert compare_view.caption(item) == "true 3 · A: 3 (0.98) → B: 5 (0.61)"
    big = compare_view.enlarged(item["image"])
    assert big.shape == (84, 84) and big.dtype.name == "uint8" and big[0, 0] == 0 and big[0, 83] == 255
    token = {**item, "block": 1, "position": 7, "context_ids": [5, 6], "label_text": "mat"}
    row = compare_view._token_row(token)
    assert (row["block"], row["position"], row["context"], row["true"], row["B"]) == (1, 7, "5 6", "mat", "5 (0.61)")
    runs = [{"id": 3, "kind": "post-training"}, {"id": 1, "kind": "baseline"}, {"id": 9, "kind": "sweep"}]
    assert compare_view.default_pair(runs) == (1, 9)
    assert compare_view.default_pair([{"id": 2, "kind": "post-training"}]) == (2, 2)
