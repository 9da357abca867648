"""Per-layer sensitivity (``pet_core.sensitivity``): each layer alone at a ladder of settings.

Oracles: every point is recomputed here without the workbench — a copy of the baseline with that one
layer pruned by ``torch.nn.utils.prune.l1_unstructured`` (or quantized by a symmetric per-channel
round-to-nearest written out below), one forward pass over the test split, accuracy counted with
numpy. Ranking and "tolerates" are recomputed from the points; the ledger rows are read back.
"""

from __future__ import annotations

import copy
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.nn.utils import prune

from pet_core import sensitivity as sens
from pet_core.errors import PetError
from pet_core.ledger import Ledger
from pet_core.loader import load_baseline, open_workbench
from pet_core.recipe import Recipe
from pet_core.sensitivity import SensitivityConfig, analyse, cached, curve, record, sensitivity

MODEL = "lenet_300_100"
LADDER = SensitivityConfig(sparsities=(0.5, 0.9), bits=(8, 4))


@pytest.fixture(scope="module")
def baseline():
    return load_baseline(MODEL, "digits")


@pytest.fixture(scope="module")
def result(baseline):
    return sensitivity(open_workbench(baseline), LADDER)


def accuracy(model: torch.nn.Module, baseline) -> float:
    with torch.no_grad():
        pred = model.eval()(baseline.dataset.x_test).argmax(1).numpy()
    return float(np.mean(pred == baseline.dataset.y_test.numpy()))


def one_layer(baseline, name: str, step: str, setting) -> torch.nn.Module:
    """The baseline with layer ``name`` alone compressed, by torch / by hand."""
    model = copy.deepcopy(baseline.model)
    layer = dict(model.named_modules())[name]
    if step == "prune":
        prune.l1_unstructured(layer, "weight", amount=setting)
        prune.remove(layer, "weight")
    else:
        w = layer.weight.data
        qmax = 2 ** (setting - 1) - 1
        scale = w.abs().amax(dim=1, keepdim=True) / qmax
        layer.weight.data = torch.round(w / scale) * scale
    return model


def test_every_point_is_that_layer_alone_compressed(baseline, result):
    base = accuracy(baseline.model, baseline)
    assert result["baseline"]["value"] == pytest.approx(base, abs=1e-12)
    assert [r["name"] for r in result["layers"]] == ["fc1", "fc2", "fc3"]
    for row in result["layers"]:
        assert [(p["step"], p["setting"]) for p in row["points"]] == LADDER.points()
        for p in row["points"]:
            want = accuracy(one_layer(baseline, row["name"], p["step"], p["setting"]), baseline)
            assert p["value"] == pytest.approx(want, abs=1e-12), (row["name"], p)
            assert p["drop"] == pytest.approx(base - want, abs=1e-12)
    fc1 = result["layers"][0]
    assert min(p["drop"] for p in fc1["points"]) < max(p["drop"] for p in fc1["points"])   # the ladder matters


def test_bytes_follow_the_setting(baseline, result):
    """A layer's accounted bytes shrink as its sparsity rises / its bits fall; 8-bit codes are about 1/4 of float32."""
    for row in result["layers"]:
        prune_bytes = [b for _, _, b in curve(result, row["name"], "prune")]
        quant_bytes = [b for _, _, b in curve(result, row["name"], "quantize")]
        assert all(b < row["bytes"] for b in prune_bytes + quant_bytes)
        assert prune_bytes == sorted(prune_bytes, reverse=True) and quant_bytes == sorted(quant_bytes, reverse=True)
        n = row["params"]
        assert n == dict(baseline.model.named_modules())[row["name"]].weight.numel()
        assert n <= quant_bytes[0] <= 0.3 * row["bytes"]             # 8-bit codes + per-row scales
    assert result["evaluations"] == 3 * len(LADDER.points()) and result["complete"]


def test_ranking_and_tolerance_follow_the_drops(result):
    means = {r["name"]: float(np.mean([p["drop"] for p in r["points"]])) for r in result["layers"]}
    assert result["ranking"] == sorted(means, key=means.get)
    for row in result["layers"]:
        assert row["mean_drop"] == pytest.approx(means[row["name"]])
        ok = [p["setting"] for p in row["points"] if p["step"] == "prune" and p["drop"] <= sens.TOLERATED_DROP]
        assert row["tolerates"]["prune"] == (max(ok) if ok else None)
        ok = [p["setting"] for p in row["points"] if p["step"] == "quantize" and p["drop"] <= sens.TOLERATED_DROP]
        assert row["tolerates"]["quantize"] == (min(ok) if ok else None)


def test_the_working_copy_is_given_back(baseline):
    wb = open_workbench(baseline)
    held = Recipe(model="m", dataset="d", default={"quantize": {"bits": 3}})
    wb.apply(held)
    before = wb.evaluate()
    sizes = [r.size_bytes for r in wb.sizes()]
    sensitivity(wb, SensitivityConfig(sparsities=(0.7,), bits=()))
    assert wb.recipe == held and wb.evaluate() == before and [r.size_bytes for r in wb.sizes()] == sizes
    assert accuracy(wb.baseline, baseline) == pytest.approx(baseline.info.get("accuracy") or accuracy(
        baseline.model, baseline))                                   # the baseline was never touched


def test_estimates_come_first_on_a_slow_model_and_the_result_is_exact(baseline, result, monkeypatch):
    wb = open_workbench(baseline)
    monkeypatch.setattr(type(wb), "exact_is_slow", lambda self, seconds: True)
    events: list[dict] = []
    out = sensitivity(wb, LADDER, progress=events.append)
    n = 3 * len(LADDER.points())
    assert [e["exact"] for e in events] == [False] * n + [True] * n
    assert [e["step"] for e in events] == list(range(1, 2 * n + 1)) and {e["steps"] for e in events} == {2 * n}
    assert [[p["value"] for p in r["points"]] for r in out["layers"]] == \
           [[p["value"] for p in r["points"]] for r in result["layers"]]


class StopAfter:
    """A cancel flag that turns on after ``n`` checks."""

    def __init__(self, n: int) -> None:
        self.n = n

    def is_set(self) -> bool:
        self.n -= 1
        return self.n < 0


def test_a_stopped_analysis_is_incomplete_and_never_recorded(baseline, workspace):
    led = Ledger()
    out = analyse(led, baseline, LADDER, cancel=StopAfter(5))
    assert out["complete"] is False and out["evaluations"] == 5 and "run_id" not in out
    assert led.runs(kinds=["sensitivity"]) == []
    with pytest.raises(PetError, match="complete"):
        record(led, baseline, out)
    assert analyse(led, baseline, LADDER, cancel=threading.Event())["complete"]   # an unset Event: runs through


def test_the_ledger_caches_one_analysis_per_model_dataset_and_ladder(baseline, workspace, monkeypatch):
    led = Ledger()
    first = analyse(led, baseline, LADDER, owner="alice")
    assert first["run_id"] == cached(led, baseline, LADDER)["run_id"]

    def no_measuring(*a, **k):
        raise AssertionError("measured again")

    monkeypatch.setattr(sens, "sensitivity", no_measuring)
    again = analyse(led, baseline, LADDER, owner="bob")                     # shared across owners
    assert again["cached"] and again["run_id"] == first["run_id"]
    assert again["layers"] == first["layers"]
    run = led.get(first["run_id"])
    assert run["kind"] == "sensitivity" and run["recipe"] == {"sensitivity": LADDER.to_dict()}
    assert led.get(run["parent_id"])["kind"] == "baseline"
    assert cached(led, baseline, SensitivityConfig(sparsities=(0.5,), bits=(8, 4))) is None   # another ladder
    assert cached(led, load_baseline("lenet_300_100", "digits"), LADDER)["run_id"] == first["run_id"]


@pytest.mark.parametrize("bad", [
    {"sparsities": (1.0,)}, {"sparsities": (0.0,)}, {"sparsities": (float("nan"),)}, {"sparsities": ("x",)},
    {"sparsities": (True,)}, {"bits": (9,)}, {"bits": (4.5,)}, {"clusters": (1,)}, {"clusters": (100_000,)},
    {"sparsities": tuple(i / 30 for i in range(1, 30))}, {"sparsities": (), "bits": (), "clusters": ()},
    {"sparsities": "0.5"},
])
def test_bad_ladders_are_refused_with_a_message(bad):
    with pytest.raises(PetError, match="sensitivity"):
        SensitivityConfig(**bad)


def test_the_ladder_round_trips_and_sorts():
    cfg = SensitivityConfig(sparsities=[0.9, 0.5, 0.5], bits=[4, 8], clusters=[16])
    assert cfg.sparsities == (0.5, 0.9) and cfg.bits == (8, 4) and cfg.clusters == (16,)
    assert SensitivityConfig.from_dict(cfg.to_dict()) == cfg
    for bad in (["a"], {"sparsities": [0.5], "rank": [2]}, None):
        with pytest.raises(PetError):
            SensitivityConfig.from_dict(bad)


def test_a_model_without_data_is_refused():
    with pytest.raises(PetError, match="evaluation set"):
        sensitivity(SimpleNamespace(measures=False), LADDER)
