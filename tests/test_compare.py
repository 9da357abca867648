"""Comparing two runs (``pet_core.compare``, ``cli_compare``, ``compare_figures``).

Oracles: a 95%-sparse lenet_300_100 pruned here with ``torch.nn.utils.prune.global_unstructured``
(checked equal to the run's weights), its logits taken in one plain forward pass, and every count,
per-class accuracy and confusion matrix recounted with numpy loops; the layer differences from the
Frobenius formula written out; a language model's agreement and perplexity from transformers' own loss.
"""

from __future__ import annotations

import argparse
import copy
import doctest
import json
import math

import numpy as np
import pytest
import torch
from torch.nn.utils import prune

from pet_core import compare as compare_mod
from pet_core import compare_figures, compare_stats
from pet_core.cli_compare import add_compare_parser, compare_command, print_compare
from pet_core.compare import compare_runs, greyscale_uint8
from pet_core.errors import PetError
from pet_core.ledger import Ledger
from pet_core.loader import load_baseline, open_workbench
from pet_core.recipe import Recipe
from pet_core.runs import NO_DATASET, record_baseline, record_evaluation

MODEL = "lenet_300_100"
SPARSE = {"prune": {"sparsity": 0.95}}


@pytest.fixture(scope="module")
def digits(workspace):
    """(ledger, baseline, baseline run id, sparse run id) in the workspace's ledger."""
    baseline = load_baseline(MODEL, "digits")
    led = Ledger()
    wb = open_workbench(baseline)
    wb.apply(Recipe(default=SPARSE))
    sparse_id = record_evaluation(led, baseline, wb.report())
    return led, baseline, record_baseline(led, baseline), sparse_id


def pruned_by_torch(model: torch.nn.Module, amount: float) -> torch.nn.Module:
    """A copy with the ``amount`` smallest-magnitude weights of all Linear layers zeroed (torch's global rule)."""
    model = copy.deepcopy(model)
    params = [(m, "weight") for m in model.modules() if isinstance(m, torch.nn.Linear)]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    for m, name in params:
        prune.remove(m, name)
    return model.eval()


def logits(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).double().numpy()


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def oracle(digits):
    """Predictions and true-label probabilities of both models, computed without pet_core."""
    led, baseline, base_id, sparse_id = digits
    ds = baseline.dataset
    sparse = pruned_by_torch(baseline.model, 0.95)
    fresh = open_workbench(baseline)
    fresh.apply(Recipe(default=SPARSE))
    mine, theirs = sparse.state_dict(), fresh.model.state_dict()
    assert mine.keys() == theirs.keys()
    for name in mine:                                      # the run's model is torch's global magnitude pruning
        assert torch.equal(mine[name], theirs[name]), name
    za, zb = logits(baseline.model, ds.x_test), logits(sparse, ds.x_test)
    y = ds.y_test.numpy()
    pa, pb = za.argmax(1), zb.argmax(1)
    return {"y": y, "pa": pa, "pb": pb, "ptrue_a": softmax(za)[np.arange(len(y)), y],
            "ptrue_b": softmax(zb)[np.arange(len(y)), y], "conf_a": softmax(za).max(1), "conf_b": softmax(zb).max(1),
            "model_b": sparse}


def test_counts_match_an_independent_recomputation(digits, oracle):
    led, baseline, base_id, sparse_id = digits
    out = compare_runs(led, base_id, sparse_id)
    y, pa, pb = oracle["y"], oracle["pa"], oracle["pb"]
    n = len(y)
    fixed = sum(1 for i in range(n) if pa[i] != y[i] and pb[i] == y[i])
    broken = sum(1 for i in range(n) if pa[i] == y[i] and pb[i] != y[i])
    both_wrong = sum(1 for i in range(n) if pa[i] != pb[i] and pa[i] != y[i] and pb[i] != y[i])
    assert out["n"] == n == 450 and out["unit"] == "item" and out["task"] == "image_classification"
    assert out["agreement"] == pytest.approx(np.mean(pa == pb))
    assert out["flipped_count"] == out["flipped_total"] == int((pa != pb).sum())
    assert (out["fixed"], out["broken"], out["both_wrong_differently"]) == (fixed, broken, both_wrong)
    assert out["fixed"] + out["broken"] + out["both_wrong_differently"] == out["flipped_count"]
    assert out["metric_a"] == pytest.approx(np.mean(pa == y)) and out["metric_b"] == pytest.approx(np.mean(pb == y))
    assert out["metric_a"] == pytest.approx(led.get(base_id)["metrics"]["accuracy"])     # as the ledger measured
    assert out["metric_b"] == pytest.approx(led.get(sparse_id)["metrics"]["accuracy"])
    conf_a, conf_b = np.zeros((10, 10), int), np.zeros((10, 10), int)
    for t, p, q in zip(y, pa, pb):
        conf_a[t, p] += 1
        conf_b[t, q] += 1
    assert out["confusion_a"] == conf_a.tolist() and out["confusion_b"] == conf_b.tolist()
    assert out["confusion_diff"] == (conf_b - conf_a).tolist()
    for row in out["per_class"]:
        k = row["class"]
        assert row["support"] == int((y == k).sum())
        assert row["accuracy_a"] == pytest.approx(np.mean(pa[y == k] == k))
        assert row["accuracy_b"] == pytest.approx(np.mean(pb[y == k] == k))
    assert [r["class"] for r in out["per_class"]] == list(range(10))
    assert out["runs"]["a"]["id"] == base_id and out["runs"]["b"]["kind"] == "post-training"
    assert out["runs"]["b"]["size_bytes"] == led.get(sparse_id)["metrics"]["size_bytes"]
    assert json.loads(json.dumps(out)) == out                                              # plain data


def test_layer_differences_follow_the_frobenius_formula(digits, oracle):
    led, baseline, base_id, sparse_id = digits
    out = compare_runs(led, base_id, sparse_id)
    mods_a = dict(baseline.model.named_modules())
    mods_b = dict(oracle["model_b"].named_modules())
    assert [r["name"] for r in out["layers"]] == ["fc1", "fc2", "fc3"] and out["layers_not_comparable"] == []
    for row in out["layers"]:
        wa = mods_a[row["name"]].weight.detach().double().numpy()
        wb = mods_b[row["name"]].weight.detach().double().numpy()
        assert row["relative_diff"] == pytest.approx(math.sqrt(((wb - wa) ** 2).sum() / (wa ** 2).sum()))
        assert row["changed_fraction"] == pytest.approx((wa != wb).mean())
        assert row["sparsity_b"] == pytest.approx((wb == 0).mean()) and row["shape"] == list(wa.shape)


def test_flipped_items_are_ordered_by_the_change_in_true_label_probability(digits, oracle):
    led, baseline, base_id, sparse_id = digits
    out = compare_runs(led, base_id, sparse_id, examples=500)
    flipped = np.flatnonzero(oracle["pa"] != oracle["pb"])
    change = oracle["ptrue_b"] - oracle["ptrue_a"]
    want = sorted(flipped, key=lambda i: (-abs(change[i]), i))
    got = [f["index"] for f in out["flipped"]]
    assert len(got) == len(flipped) == out["flipped_total"]
    assert sorted(got) == sorted(flipped.tolist())
    changes = [abs(f["change"]) for f in out["flipped"]]
    assert changes == sorted(changes, reverse=True)                # exactly non-increasing
    assert got[:20] == [int(i) for i in want[:20]]
    for f in out["flipped"][:20]:
        i = f["index"]
        assert (f["label"], f["pred_a"], f["pred_b"]) == (oracle["y"][i], oracle["pa"][i], oracle["pb"][i])
        assert f["p_true_a"] == pytest.approx(oracle["ptrue_a"][i], abs=1e-5)
        assert f["p_true_b"] == pytest.approx(oracle["ptrue_b"][i], abs=1e-5)
        assert f["conf_b"] == pytest.approx(oracle["conf_b"][i], abs=1e-5)
        assert f["change"] == pytest.approx(f["p_true_b"] - f["p_true_a"], abs=1e-6)
    cut = compare_runs(led, base_id, sparse_id, examples=5)
    assert [f["index"] for f in cut["flipped"]] == got[:5] and cut["flipped_total"] == len(flipped)


def test_ties_in_the_change_are_broken_by_index():
    a = {"label": np.zeros(4, int), "pred": np.zeros(4, int), "conf": np.ones(4), "p_true": np.full(4, 0.5),
         "nll": np.zeros(4), "classes": 2}
    b = {**a, "pred": np.array([1, 0, 1, 1]), "p_true": np.array([0.25, 0.5, 0.75, 0.25])}
    s = compare_stats.prediction_stats(a, b, examples=10, lm=False, num_classes=2)
    assert [f["index"] for f in s["flipped"]] == [0, 2, 3]


def test_a_run_against_itself_agrees_everywhere(digits):
    led, _, _, sparse_id = digits
    out = compare_runs(led, sparse_id, sparse_id)
    assert out["agreement"] == 1.0 and out["flipped_count"] == 0 and out["flipped"] == []
    assert out["fixed"] == out["broken"] == out["both_wrong_differently"] == 0 and out["metric_change"] == 0
    assert all(v == 0 for row in out["confusion_diff"] for v in row)
    assert all(r["relative_diff"] == 0 and r["changed_fraction"] == 0 for r in out["layers"])


def test_swapping_a_and_b_swaps_fixed_and_broken(digits):
    led, _, base_id, sparse_id = digits
    ab, ba = compare_runs(led, base_id, sparse_id), compare_runs(led, sparse_id, base_id)
    assert (ab["fixed"], ab["broken"]) == (ba["broken"], ba["fixed"]) and ab["broken"] > 0
    assert ab["agreement"] == ba["agreement"] and ab["flipped_count"] == ba["flipped_count"]
    assert ba["confusion_diff"] == (-np.array(ab["confusion_diff"])).tolist()
    assert ba["metric_change"] == pytest.approx(-ab["metric_change"])
    assert [r["change"] for r in ba["per_class"]] == pytest.approx([-r["change"] for r in ab["per_class"]])


def _fake(led: Ledger, dataset_hash: str) -> int:
    return led.record("post-training", model=MODEL, model_hash="other", dataset="other", dataset_hash=dataset_hash,
                      recipe={"default": {"x": dataset_hash}}, metrics={"accuracy": 0.5})


@pytest.mark.parametrize("dataset_hash, words", [("elsewhere", "different datasets"),
                                                 (NO_DATASET, "without a dataset")])
def test_runs_on_different_or_no_datasets_are_refused(digits, dataset_hash, words):
    led, _, base_id, _ = digits
    other = _fake(led, dataset_hash)
    with pytest.raises(PetError, match=words) as info:
        compare_runs(led, base_id, other)
    assert "\n" not in str(info.value)


def test_a_missing_run_is_refused(digits):
    led, _, base_id, _ = digits
    with pytest.raises(PetError, match="run 9999 is not in the ledger"):
        compare_runs(led, base_id, 9999)


@pytest.mark.parametrize("examples", [-1, 501, 2.5, True, "3"])
def test_examples_is_bounded(digits, examples):
    led, _, base_id, sparse_id = digits
    with pytest.raises(PetError, match="examples must be a whole number from 0 to 500"):
        compare_runs(led, base_id, sparse_id, examples=examples)


def test_no_examples_still_counts_the_flips(digits):
    led, _, base_id, sparse_id = digits
    out = compare_runs(led, base_id, sparse_id, examples=0)
    assert out["flipped"] == [] and out["flipped_total"] > 0


def test_gallery_images_are_the_test_items_min_max_scaled(digits):
    led, baseline, base_id, sparse_id = digits
    out = compare_runs(led, base_id, sparse_id, examples=3, images=True)
    for f in out["flipped"]:
        x = baseline.dataset.x_test[f["index"], 0].double().numpy()              # (8, 8)
        want = np.rint((x - x.min()) / (x.max() - x.min()) * 255).astype(int)
        assert np.abs(np.array(f["image"]) - want).max() <= 1 and np.array(f["image"]).shape == (8, 8)
    assert greyscale_uint8(torch.ones(1, 4, 4)) == [[0] * 4] * 4
    assert np.array(greyscale_uint8(torch.rand(1, 200, 100))).shape == (50, 25)   # strided to <= 64 a side


def test_figures_draw_the_comparison(digits):
    led, _, base_id, sparse_id = digits
    out = compare_runs(led, base_id, sparse_id)
    heat = compare_figures.confusion_diff_figure(out).data[0]
    assert [list(r) for r in heat.z] == out["confusion_diff"] and heat.zmid == 0
    bars = compare_figures.per_class_change_figure(out).data[0]
    assert list(bars.y) == [r["change"] for r in out["per_class"]]
    assert list(compare_figures.layer_diff_figure(out).data[0].y) == ["fc1", "fc2", "fc3"]


def test_cli_compare_prints_counts_table_flips_and_layers(digits, capsys):
    led, _, base_id, sparse_id = digits
    parser = argparse.ArgumentParser()
    add_compare_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["compare", str(base_id), str(sparse_id), "--examples", "4", "--json"])
    assert (args.run_a, args.run_b, args.examples, args.json, args.trust_code) == (base_id, sparse_id, 4, True, False)
    out = compare_command(args)
    assert out == compare_runs(led, base_id, sparse_id, examples=4)
    print_compare(out)
    text = capsys.readouterr().out
    assert f"agreement {out['agreement']:.2%}: {out['flipped_count']:,} items flipped" in text
    assert f"fixed {out['fixed']:,}" in text and f"broken {out['broken']:,}" in text
    assert f"flipped items, 4 of {out['flipped_total']:,}" in text
    assert text.count("\n     0 ") + text.count("\n     9 ") == 2            # per-class rows
    assert all(name in text for name in ("fc1", "fc2", "fc3"))
    with pytest.raises(PetError):
        compare_command(argparse.Namespace(run_a=base_id, run_b=9999, examples=3, trust_code=False))


@pytest.fixture(scope="module")
def gpt2(workspace, tmp_path_factory):
    """A tiny GPT-2 folder, a token file, its ledger runs (baseline, 50% pruned)."""
    pytest.importorskip("transformers")
    import hf_models
    root = tmp_path_factory.mktemp("gpt2")
    folder = hf_models.gpt2_folder(root / "gpt2")
    tokens = np.array([w for s in hf_models.SENTENCES * 6 for w in hf_models.word_tokenizer()(s)["input_ids"]])
    np.savez(root / "tokens.npz", tokens=tokens[:160])
    baseline = load_baseline(str(folder), str(root / "tokens.npz"))
    led = Ledger(root / "l.sqlite")
    wb = open_workbench(baseline)
    wb.apply(Recipe(default={"prune": {"sparsity": 0.5}}))
    sparse_id = record_evaluation(led, baseline, wb.report())
    return led, baseline, record_baseline(led, baseline), sparse_id, copy.deepcopy(wb.model)


def test_language_model_compares_next_token_predictions(gpt2):
    led, baseline, base_id, sparse_id, model_b = gpt2
    out = compare_runs(led, base_id, sparse_id, examples=5)
    x = baseline.dataset.x_test                                                    # (N, L)
    with torch.no_grad():
        za, zb = baseline.model(x).logits[:, :-1], model_b(x).logits[:, :-1]       # (N, L-1, V)
        loss_a = baseline.model(x, labels=x).loss                                  # transformers' own mean NLL
    pa, pb, y = za.argmax(-1).reshape(-1), zb.argmax(-1).reshape(-1), x[:, 1:].reshape(-1)
    assert out["unit"] == "token" and out["n"] == y.numel()
    assert out["agreement"] == pytest.approx(float((pa == pb).double().mean()))
    assert out["fixed"] == int(((pa != y) & (pb == y)).sum()) and out["broken"] == int(((pa == y) & (pb != y)).sum())
    assert out["metric"]["name"] == "perplexity" and out["metric_a"] == pytest.approx(math.exp(float(loss_a)), rel=1e-4)
    assert out["per_class"] is None and out["confusion_diff"] is None and any("no per-class" in n for n in out["notes"])
    assert out["flipped_total"] == int((pa != pb).sum()) > 0
    f = out["flipped"][0]
    block, pos = divmod(f["index"], x.shape[1] - 1)
    assert (f["block"], f["position"], f["label"]) == (block, pos, int(x[block, pos + 1]))
    assert f["context_ids"][-1] == int(x[block, pos]) and len(f["context_ids"]) <= compare_stats.CONTEXT_TOKENS
    assert isinstance(f["context_text"], str) and isinstance(f["pred_b_text"], str)       # the folder's tokenizer
    assert json.loads(json.dumps(out)) == out


def test_mnist_counts_match_numpy(mnist_dir, workspace):
    import time

    start = time.monotonic()
    baseline = load_baseline(MODEL, "mnist", str(mnist_dir))
    if time.monotonic() - start > 60:
        pytest.skip("training lenet_300_100 on MNIST took over 60 s here")
    led = Ledger()
    wb = open_workbench(baseline)
    wb.apply(Recipe(default=SPARSE))
    sparse_id = record_evaluation(led, baseline, wb.report())
    out = compare_runs(led, record_baseline(led, baseline), sparse_id, examples=3)
    x, y = baseline.dataset.x_test, baseline.dataset.y_test.numpy()
    pa, pb = logits(baseline.model, x).argmax(1), logits(wb.model, x).argmax(1)
    assert out["n"] == 10_000 and out["agreement"] == pytest.approx(np.mean(pa == pb))
    assert out["fixed"] == int(((pa != y) & (pb == y)).sum()) and out["broken"] == int(((pa == y) & (pb != y)).sum())
    assert out["confusion_b"] == np.bincount(y * 10 + pb, minlength=100).reshape(10, 10).tolist()


@pytest.mark.parametrize("module", [compare_mod, compare_stats, compare_figures])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0
