"""Inverse design (``pet_core.plan``, ``plan_runs``, ``cli_plan``): per-layer settings for a target.

Oracles: the knapsacks against brute force over every choice of small synthetic tables; a planned
recipe re-applied on a fresh workbench (its bytes summed from ``sizes``, its accuracy from one
plain forward pass of the working copy); the uniform allocation (one setting for every layer,
tuned to the same bytes) as the floor the plan must reach; the ledger rows read back.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pet_core.errors import PetError
from pet_core.ledger import Ledger
from pet_core.loader import load_baseline, open_workbench
from pet_core.plan import Option, PlanTarget, knapsack_bytes, knapsack_drop, plan, uniform
from pet_core.plan_runs import plan_run
from pet_core.recipe import Recipe
from pet_core.sensitivity import SensitivityConfig, sensitivity
from pet_core.size import model_bytes

ROOT = Path(__file__).resolve().parents[1]
MODEL = "lenet_300_100"
LADDER = SensitivityConfig(sparsities=(0.5, 0.7, 0.8, 0.9, 0.95, 0.97), bits=(8, 4, 3, 2))


@pytest.fixture(scope="module")
def baseline():
    return load_baseline(MODEL, "digits")


@pytest.fixture(scope="module")
def analysis(baseline):
    return sensitivity(open_workbench(baseline), LADDER)


@pytest.fixture(scope="module")
def plans(baseline, analysis):
    """ratio -> (plan report, uniform report), each on its own workbench."""
    out = {}
    for ratio in (10, 20):
        report = plan(open_workbench(baseline), analysis, PlanTarget(ratio=ratio))
        out[ratio] = (report, uniform(open_workbench(baseline), PlanTarget(ratio=ratio), [None, 8, 4, 3, 2]))
    return out


def measured_fresh(baseline, recipe: dict) -> tuple[float, int]:
    """(accuracy by one forward pass, accounted bytes) of ``recipe`` on a fresh workbench."""
    wb = open_workbench(baseline)
    wb.apply(Recipe.from_dict(recipe))
    with torch.no_grad():
        pred = wb.model.eval()(baseline.dataset.x_test).argmax(1).numpy()
    return float(np.mean(pred == baseline.dataset.y_test.numpy())), sum(r.size_bytes for r in wb.sizes())


# --- the knapsacks against brute force ------------------------------------------------------------

def table(seed: int, layers: int = 4, per_layer: int = 5) -> dict[str, list[Option]]:
    """Random layers: option 0 unchanged (most bytes, no drop), the others smaller and (mostly) worse."""
    rng = random.Random(seed)
    out = {}
    for i in range(layers):
        full = rng.randint(500, 5000)
        opts = [Option(0.0, None, None, full, 0.0)]
        for _ in range(per_layer - 1):
            opts.append(Option(0.5, 8, None, rng.randint(full // 40, full - 1), rng.random() * 0.2))
        out[f"l{i}"] = opts
    return out


def brute(opts, feasible, score):
    layers = list(opts.values())
    best = None
    for choice in itertools.product(*(range(len(layer)) for layer in layers)):
        b = sum(layers[i][c].bytes for i, c in enumerate(choice))
        d = sum(layers[i][c].drop for i, c in enumerate(choice))
        if feasible(b, d) and (best is None or score(b, d) < best[0]):
            best = (score(b, d), b, d)
    return best


def totals(opts, choice):
    layers = list(opts.values())
    return (sum(layers[i][c].bytes for i, c in enumerate(choice)), sum(layers[i][c].drop for i, c in enumerate(choice)))


@pytest.mark.parametrize("seed", range(12))
def test_knapsack_bytes_fits_and_no_single_change_helps(seed):
    opts = table(seed)
    smallest = sum(min(o.bytes for o in layer) for layer in opts.values())
    full = sum(layer[0].bytes for layer in opts.values())
    for budget in (smallest - 1, smallest, (smallest + full) // 3, (smallest + full) // 2, full):
        choice = knapsack_bytes(opts, budget)
        best = brute(opts, lambda b, d: b <= budget, lambda b, d: (d, b))
        if best is None:
            assert choice is None
            continue
        used, drop = totals(opts, choice)
        assert used <= budget
        assert drop >= best[2] - 1e-12                  # never "better" than the optimum: the sums are honest
        for i, layer in enumerate(opts.values()):       # no single-layer change both fits and predicts less
            for o in layer:
                if used - layer[choice[i]].bytes + o.bytes <= budget:
                    assert o.drop >= layer[choice[i]].drop - 1e-12
        if budget == full:
            assert drop == 0.0


@pytest.mark.parametrize("seed", range(12))
def test_knapsack_drop_stays_within_and_no_single_change_saves(seed):
    opts = table(seed)
    for allowed in (0.0, 0.05, 0.15, 0.4):
        choice = knapsack_drop(opts, allowed)
        used, drop = totals(opts, choice)
        best = brute(opts, lambda b, d: d <= allowed + 1e-12, lambda b, d: (b, d))
        assert drop <= allowed + 1e-12 and used >= best[1]
        for i, layer in enumerate(opts.values()):
            for o in layer:
                if o.bytes < layer[choice[i]].bytes:
                    assert drop - layer[choice[i]].drop + o.drop > allowed + 1e-12


@pytest.mark.parametrize("seed", range(6))
def test_knapsack_bytes_is_optimal_at_a_lagrangian_budget(seed):
    """Everett's theorem: a choice minimising drop + λ·bytes is optimal for its own bytes; given that
    budget, the knapsack must find an equally good one (brute force says how good)."""
    from pet_core.plan import _pick

    opts = table(seed)
    for weight in (1e-6, 1e-5, 3e-5, 1e-4):
        budget = totals(opts, _pick(opts, weight, True))[0]
        best = brute(opts, lambda b, d: b <= budget, lambda b, d: (d, b))
        assert totals(opts, knapsack_bytes(opts, budget))[1] == pytest.approx(best[2], abs=1e-12)


# --- plans on a real model ------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", [10, 20])
def test_a_plan_meets_its_size_and_reproduces_on_a_fresh_workbench(baseline, plans, ratio):
    report, _ = plans[ratio]
    base = model_bytes(baseline.model)
    budget = int(base / ratio)
    assert report["met"] and report["target"]["byte_budget"] == budget
    acc, size = measured_fresh(baseline, report["recipe"])
    assert size == report["measured"]["size_bytes"] <= budget
    assert acc == pytest.approx(report["measured"]["accuracy"], abs=1e-12)
    assert report["measured"]["compression_ratio"] == pytest.approx(base / size)
    assert report["measured"]["drop"] == pytest.approx(report["baseline"]["accuracy"] - acc)
    assert sum(r["bytes"] for r in report["layers"]) <= size                  # layers plus biases etc.
    assert report["search"]["evaluations"] == len(report["search"]["history"]) >= 1


@pytest.mark.parametrize("ratio", [10, 20])
def test_a_plan_is_never_below_uniform_allocation(plans, ratio):
    report, flat = plans[ratio]
    assert flat["size_bytes"] <= flat["byte_budget"] == report["target"]["byte_budget"]
    assert report["measured"]["accuracy"] >= flat["value"]


def test_a_largest_drop_target_is_kept_with_fewer_bytes(baseline, analysis):
    report = plan(open_workbench(baseline), analysis, PlanTarget(max_drop=0.01))
    acc, size = measured_fresh(baseline, report["recipe"])
    assert report["met"] and report["baseline"]["accuracy"] - acc <= 0.01 + 1e-12
    assert size == report["measured"]["size_bytes"] < model_bytes(baseline.model) / 4


def test_an_unreachable_ratio_returns_the_closest_and_says_so(baseline, analysis):
    report = plan(open_workbench(baseline), analysis, PlanTarget(ratio=5000), max_evaluations=3)
    assert report["met"] is False and "closest" in report["note"]
    assert report["measured"]["size_bytes"] > report["target"]["byte_budget"]
    assert report["search"]["evaluations"] == 1            # nothing within the bytes to climb to
    ladder_floor = Recipe(layers={n: {"prune": {"method": "magnitude", "scope": "layer", "sparsity": 0.97},
                                      "quantize": {"bits": 2}} for n in ("fc1", "fc2", "fc3")}).to_dict()
    assert report["measured"]["size_bytes"] <= measured_fresh(baseline, ladder_floor)[1]   # the smallest there is


def test_max_evaluations_bounds_the_search(baseline, analysis):
    report = plan(open_workbench(baseline), analysis, PlanTarget(ratio=20), max_evaluations=2)
    assert report["search"]["evaluations"] == 2 and report["search"]["stopped"] == "evaluation limit"


def test_a_time_budget_returns_the_best_not_the_first_acceptable(baseline, analysis):
    """With a budget the search goes on past the point where the patient search stops, on the same path."""
    quick = plan(open_workbench(baseline), analysis, PlanTarget(ratio=20))
    longer = plan(open_workbench(baseline), analysis, PlanTarget(ratio=20), budget_s=3600,
                  max_evaluations=quick["search"]["evaluations"] + 15)
    assert quick["search"]["stopped"] == "no better neighbour"
    assert longer["search"]["evaluations"] > quick["search"]["evaluations"]
    assert longer["measured"]["drop"] <= quick["measured"]["drop"] and longer["met"]
    first_met = next(h for h in longer["search"]["history"] if h["size_bytes"] <= longer["target"]["byte_budget"])
    assert longer["measured"]["drop"] <= first_met["drop"]


@pytest.mark.parametrize("kwargs", [{}, {"ratio": 1.0}, {"ratio": 0.5}, {"ratio": float("inf")}, {"ratio": "10"},
                                    {"size_bytes": 0}, {"max_drop": -0.1}, {"ratio": 10, "max_drop": 0.1},
                                    {"ratio": True}])
def test_bad_targets_are_refused_with_a_message(kwargs):
    with pytest.raises(PetError, match="plan"):
        PlanTarget(**kwargs)


def test_bad_search_bounds_and_foreign_analyses_are_refused(baseline, analysis):
    wb = open_workbench(baseline)
    for kwargs in ({"budget_s": 0}, {"budget_s": 1e9}, {"max_evaluations": 0}):
        with pytest.raises(PetError, match="plan"):
            plan(wb, analysis, PlanTarget(ratio=10), **kwargs)
    foreign = {**analysis, "layers": [{**r, "name": "conv" + r["name"]} for r in analysis["layers"]]}
    with pytest.raises(PetError, match="no layer"):
        plan(wb, foreign, PlanTarget(ratio=10))


def test_a_planned_run_lands_in_the_ledger_under_its_analysis(baseline, workspace):
    led = Ledger()
    small = SensitivityConfig(sparsities=(0.5, 0.9), bits=(8, 4))
    out = plan_run(led, baseline, PlanTarget(ratio=8), small, owner="carol", max_evaluations=4)
    run = led.get(out["run_id"])
    assert run["kind"] == "post-training" and run["owner"] == "carol" and run["label"].startswith("plan 8×")
    assert run["metrics"]["accuracy"] == out["measured"]["accuracy"]
    assert Recipe.from_dict(run["recipe"]).layers == Recipe.from_dict(out["recipe"]).layers
    parent = led.get(run["parent_id"])
    assert parent["kind"] == "sensitivity" and parent["id"] == out["sensitivity"]["run_id"]
    assert led.get(parent["parent_id"])["kind"] == "baseline"
    again = plan_run(led, baseline, PlanTarget(ratio=8), small, owner="dave", max_evaluations=4)
    assert again["sensitivity"]["cached"] and again["sensitivity"]["run_id"] == parent["id"]
    assert again["measured"] == out["measured"] and again["recipe"] == out["recipe"]


# --- the command line -----------------------------------------------------------------------------

def cli(*args: str, workspace: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PET_WORKSPACE": str(workspace), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pet_core", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_cli_plans_records_and_writes_the_recipe(baseline, tmp_path):
    ladder = ["--sparsities", "0.5,0.9", "--bits", "8,4"]
    proc = cli("plan", "--model", MODEL, "--dataset", "digits", "--target-ratio", "12", *ladder,
               "--max-evaluations", "5", "--out", str(tmp_path / "planned.yaml"), "--json", workspace=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    acc, size = measured_fresh(baseline, out["recipe"])
    assert (acc, size) == (pytest.approx(out["measured"]["accuracy"], abs=1e-12), out["measured"]["size_bytes"])
    assert out["met"] and size <= model_bytes(baseline.model) / 12
    from pet_core.recipe import load
    assert load(tmp_path / "planned.yaml").layers == Recipe.from_dict(out["recipe"]).layers
    sens = cli("sensitivity", "--model", MODEL, "--dataset", "digits", *ladder, "--json", workspace=tmp_path)
    assert sens.returncode == 0, sens.stderr
    assert json.loads(sens.stdout)["run_id"] == out["sensitivity"]["run_id"]          # read from the ledger
    text = cli("sensitivity", "--model", MODEL, "--dataset", "digits", *ladder, workspace=tmp_path)
    assert "most tolerant first" in text.stdout and "from the ledger" in text.stdout


@pytest.mark.parametrize("args, message", [
    (["--target-ratio", "0.5"], "ratio"),
    (["--target-ratio", "10", "--max-drop", "0.1"], "not allowed with"),
    (["--max-drop", "0.1", "--sparsities", "1.5"], "sparsities"),
    (["--target-ratio", "10", "--bits", "8,x"], "comma-separated"),
    (["--target-ratio", "10", "--budget-s", "-1"], "budget"),
])
def test_the_cli_says_what_is_wrong_in_one_line(args, message, tmp_path):
    proc = cli("plan", "--model", MODEL, "--dataset", "digits", *args, "--json", workspace=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_compare_from_the_cli(baseline, tmp_path, monkeypatch):
    """``compare BASELINE PLANNED``: its agreement and flipped count recounted from two forward passes."""
    ladder = ["--sparsities", "0.9", "--bits", "4"]
    proc = cli("plan", "--model", MODEL, "--dataset", "digits", "--target-ratio", "20", *ladder,
               "--max-evaluations", "2", "--json", workspace=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    monkeypatch.setenv("PET_WORKSPACE", str(tmp_path))
    base_id = Ledger().runs(kinds=["baseline"])[0]["id"]
    proc = cli("compare", str(base_id), str(out["run_id"]), "--json", workspace=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cmp = json.loads(proc.stdout)
    wb = open_workbench(baseline)
    wb.apply(Recipe.from_dict(out["recipe"]))
    with torch.no_grad():
        pa = baseline.model.eval()(baseline.dataset.x_test).argmax(1).numpy()
        pb = wb.model.eval()(baseline.dataset.x_test).argmax(1).numpy()
    assert cmp["agreement"] == pytest.approx(float(np.mean(pa == pb)))
    assert cmp["flipped_count"] == int(np.sum(pa != pb)) > 0
    bad = cli("compare", str(base_id), "999", "--json", workspace=tmp_path)
    assert bad.returncode == 2 and "999" in bad.stderr and "Traceback" not in bad.stderr
