"""The evaluation engine (pet_core.evaluation): every backend predicts as eager PyTorch does on every zoo
model, estimates carry honest intervals, values are shared across workbenches, and a newer move
cancels an older exact evaluation.

Oracles: eager PyTorch's argmax (``pet_core.accuracy.logits_of`` of the module itself) for
predictions; ``pet_core.metrics.evaluate`` for values; plain numpy for the subset and the coverage.
"""

from __future__ import annotations

import doctest
import threading

import numpy as np
import pytest
import torch
from torch import nn

import pet_core.evaluation.estimate
import pet_core.evaluation.progressive
from pet_core.evaluation import Cancelled, EvalEngine
from pet_core.evaluation.backends import CudaBackend, EagerBackend, OnnxRuntimeBackend
from pet_core.evaluation.estimate import accuracy_estimate, stratified_subset
from pet_core.evaluation.progressive import ExactRunner
from pet_core.loader import load_baseline, open_workbench
from pet_core.metrics import evaluate
from pet_core.recipe import Recipe
from pet_core.runs import record_evaluation
from pet_core.ledger import Ledger
from pet_core.zoo import list_models

RECIPES = [
    None,   # the baseline's weights
    Recipe(default={"prune": {"method": "magnitude", "scope": "global", "sparsity": 0.8},
                    "quantize": {"bits": 4, "scheme": "symmetric", "granularity": "per_channel"}}),
    Recipe(default={"prune": {"method": "l1_channel", "sparsity": 0.3}, "quantize": {"bits": 3}}),
]


@pytest.fixture(scope="module", params=[m.name for m in list_models()])
def zoo(request):
    return load_baseline(request.param, "digits")


def eager_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(x[i:i + 128]) for i in range(0, len(x), 128)])


def backends(base):
    x = base.dataset.x_test
    yield EagerBackend(x)
    yield OnnxRuntimeBackend(base.model, x)
    yield CudaBackend(x, device="cuda" if torch.cuda.is_available() else "cpu")   # the mirror's logic on CPU


@pytest.mark.parametrize("recipe", RECIPES, ids=["baseline", "global80_int4", "channel30_int3"])
def test_every_backend_predicts_as_eager_on_every_zoo_model(zoo, recipe):
    wb = open_workbench(zoo)
    if recipe is not None:
        wb.apply(recipe)
    x, y = zoo.dataset.x_test, zoo.dataset.y_test
    reference = eager_logits(wb.model, x)                                          # (N, classes)
    top2 = reference.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-4 * float(reference.abs().max())        # not a float tie
    for backend in backends(zoo):
        got = backend.bind(wb.model)(slice(0, len(x)))
        assert torch.allclose(got, reference, rtol=1e-4, atol=1e-4 * float(reference.abs().max())), backend.name
        assert torch.equal(got.argmax(1)[clear], reference.argmax(1)[clear]), backend.name
    # and the engine's value (whatever backend it chose) is eager's accuracy
    assert wb.evaluate() == pytest.approx(evaluate(wb.model, x, y, "image_classification"), abs=1 / len(y) * (~clear).sum().item() + 1e-12)


def test_the_mirror_copies_only_what_changed():
    base = load_baseline("lenet_300_100", "digits")
    wb = open_workbench(base)
    mirror = CudaBackend(base.dataset.x_test, device="cpu")
    run = mirror.bind(wb.model)
    _, seen = mirror._mirror(wb.model)
    before = dict(seen)
    wb.apply(Recipe(layers={"fc3": {"prune": {"sparsity": 0.5}}}))
    run = mirror.bind(wb.model)
    changed = {k for k in seen if seen[k] != before[k]}
    assert changed and all(k.startswith("fc3.") for k in changed)
    assert torch.equal(run(slice(0, 50)), eager_logits(wb.model, base.dataset.x_test[:50]))


def test_a_backend_that_ignores_new_weights_is_refused(monkeypatch):
    """The engine checks a backend on *perturbed* weights: one that kept the old ones is not used."""
    base = load_baseline("lenet_300_100", "digits")
    stale = OnnxRuntimeBackend.bind
    monkeypatch.setattr(OnnxRuntimeBackend, "bind", lambda self, model: stale(self, base.model))
    engine = EvalEngine(base.dataset.x_test, base.dataset.y_test, "image_classification", backend="onnxruntime")
    engine.backend(base.model)
    assert engine.backend_name == "eager"
    assert "differ" in engine.choice["refused"]["onnxruntime"]


def test_values_are_shared_by_workbenches_of_the_same_model_and_data(monkeypatch):
    base = load_baseline("lenet_300_100", "digits")
    first, second = open_workbench(base), open_workbench(base)
    assert first.engine is second.engine
    recipe = Recipe(default={"prune": {"sparsity": 0.77}})
    first.apply(recipe)
    value = first.evaluate()
    second.apply(recipe)
    assert second.cached_metric() == value
    monkeypatch.setattr(EvalEngine, "outcomes", lambda *a, **k: pytest.fail("evaluated again"))
    assert second.evaluate() == value
    second.apply(Recipe(default={"prune": {"sparsity": 0.78}}))
    assert second.cached_metric() is None


def test_the_subset_is_stratified_and_fixed():
    labels = np.repeat(np.arange(10), [500, 300, 200, 100, 100, 100, 100, 100, 50, 50])
    a, b = stratified_subset(labels, 200), stratified_subset(labels, 200)
    assert np.array_equal(a, b) and len(np.unique(a)) == 200
    counts = np.bincount(labels[a], minlength=10)
    assert np.abs(counts - 200 * np.bincount(labels) / len(labels)).max() < 1


def test_accuracy_intervals_cover_the_exact_value_about_95_percent_of_the_time():
    """Synthetic populations: a compressed model that flips 3% of 10,000 predictions each way or
    mostly one way; random subsets of 1,000 (the fixed subset is one such draw)."""
    rng = np.random.default_rng(7)
    total, n, hits, trials = 10_000, 1000, 0, 600
    for t in range(trials):
        base = rng.random(total) < 0.9
        flip = rng.random(total) < (0.03 if t % 2 else 0.08)
        now = np.where(flip, ~base if t % 2 else np.zeros(total, bool), base)
        idx = rng.choice(total, n, replace=False)
        _, low, high = accuracy_estimate(base.mean(), base[idx], now[idx], total)
        hits += low <= now.mean() <= high
    assert 0.92 <= hits / trials <= 0.99


def test_estimates_on_mnist_are_labelled_and_near_the_exact_value(mnist_dir):
    base = load_baseline("lenet_300_100", "mnist", str(mnist_dir))
    wb = open_workbench(base)
    wb.apply(RECIPES[1])
    est, exact = wb.estimate(), wb.evaluate()
    assert not est.exact and est.n < est.total == 10_000
    assert est.low <= est.value <= est.high and est.high - est.low < 0.06
    assert abs(est.value - exact) < 3 * (est.high - est.low)
    report = wb.report(estimate=est)
    assert report["evaluation"]["exact"] is False and report["compressed"]["accuracy"] == est.value
    with pytest.raises(ValueError, match="estimate"):
        record_evaluation(Ledger(), base, report)


def test_a_newer_move_cancels_the_exact_evaluation():
    base = load_baseline("lenet_300_100", "digits")
    wb = open_workbench(base)
    runner = ExactRunner(wb)
    started, release = threading.Event(), threading.Event()
    real = wb.engine.outcomes

    def slow(model, index=None, cancel=None):     # the first batch waits until the move began
        started.set()
        release.wait(5)
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        return real(model, index, cancel)

    wb.engine.outcomes = slow
    with runner.changing():
        wb.apply(Recipe(default={"prune": {"sparsity": 0.61}}))
    old_key = wb.state_key()
    runner.submit(old_key)
    started.wait(5)
    threading.Timer(0.2, release.set).start()
    with runner.changing():                       # waits for the cancelled evaluation to let go
        wb.apply(Recipe(default={"prune": {"sparsity": 0.62}}))
    runner.wait(5)
    assert runner.value(old_key) is None and wb.engine.cached(old_key) is None
    wb.engine.outcomes = real
    runner.submit(wb.state_key()).join(30)
    assert runner.value(wb.state_key()) == evaluate(wb.model, base.dataset.x_test, base.dataset.y_test,
                                                    "image_classification")


@pytest.mark.parametrize("module", [pet_core.evaluation.estimate, pet_core.evaluation.progressive])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
