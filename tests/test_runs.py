"""The run ledger and ``pet_core.runs``: schema and migrations, upserts, lineage, and runs reopened exactly.

Oracles: the workbench or fine-tune result that was recorded (its weights compared bit for bit,
its accuracy and bytes compared exactly), and SQLite's own ``user_version``/``table_info``.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading

import pytest
import torch

from pet_core import ledger as ledger_mod
from pet_core.errors import PetError
from pet_core.export.artifacts import make_artifact
from pet_core.finetune import finetune
from pet_core.ledger import SCHEMA_VERSION, Ledger, model_hash
from pet_core.loader import load_baseline, open_workbench
from pet_core.model_io import save_state_dict
from pet_core.recipe import Recipe
from pet_core.runs import (NO_DATASET, identity, open_run, record_baseline, record_evaluation, record_finetune,
                           run_metric, trim_history)

MODEL = "lenet_300_100"
COMPRESS = {"prune": {"sparsity": 0.9}, "quantize": {"bits": 4}}
FINETUNE = {"steps": 30, "techniques": {"qat": {}}}


@pytest.fixture(scope="module")
def baseline(workspace):
    return load_baseline(MODEL, "digits")


@pytest.fixture(scope="module")
def tuned(baseline):
    """One short QAT fine-tune, shared by the tests of this module."""
    recipe = Recipe(model=MODEL, default=COMPRESS, finetune=FINETUNE)
    wb = open_workbench(baseline)
    wb.apply(recipe)
    return finetune(wb, recipe, baseline.dataset, device=torch.device("cpu"))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _record(led: Ledger, kind: str, recipe=None, owner="me", **kw) -> int:
    return led.record(kind, model="m", model_hash="h", dataset="digits", dataset_hash="d", recipe=recipe,
                      owner=owner, **kw)


# ------------------------------------------------------------------ the ledger itself


def test_new_ledger_has_the_current_schema(tmp_path):
    Ledger(tmp_path / "l.sqlite")
    with sqlite3.connect(tmp_path / "l.sqlite") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {"kind", "status", "parent_id", "model_hash", "dataset_hash", "recipe", "metrics", "weights_path"} <= columns


def test_an_older_ledger_is_migrated_keeping_its_runs(tmp_path, monkeypatch):
    path = tmp_path / "l.sqlite"
    rid = _record(Ledger(path), "post-training", {"default": {}}, metrics={"accuracy": 0.5})
    migration = ["ALTER TABLE runs ADD COLUMN note TEXT NOT NULL DEFAULT 'migrated'"]
    monkeypatch.setattr(ledger_mod, "MIGRATIONS", [*ledger_mod.MIGRATIONS, migration])
    monkeypatch.setattr(ledger_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    run = Ledger(path).get(rid)
    assert run["metrics"] == {"accuracy": 0.5} and run["note"] == "migrated"
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1


def test_a_version_0_file_is_migrated(tmp_path):
    path = tmp_path / "l.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE unrelated (x)")
    led = Ledger(path)
    assert led.runs() == []
    assert led.get(_record(led, "baseline"))["kind"] == "baseline"


def test_a_newer_ledger_is_refused(tmp_path):
    path = tmp_path / "l.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(PetError, match=f"schema {SCHEMA_VERSION + 1}, newer"):
        Ledger(path)


def test_a_file_that_is_not_a_ledger_is_one_error(tmp_path):
    (tmp_path / "l.sqlite").write_text("not a database, just text " * 100)
    with pytest.raises(PetError, match="cannot open the run ledger"):
        Ledger(tmp_path / "l.sqlite")


def test_processes_opening_a_new_ledger_at_once_all_succeed(tmp_path):
    errors = []

    def open_it():
        try:
            Ledger(tmp_path / "l.sqlite")
        except Exception as exc:   # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_identical_configurations_are_one_run(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    a = _record(led, "post-training", {"default": {"prune": {"sparsity": 0.5}}, "model": "m"}, label="mine")
    b = _record(led, "post-training", {"model": "m", "default": {"prune": {"sparsity": 0.5}}},
                metrics={"accuracy": 0.7})
    assert a == b
    assert led.get(a)["metrics"] == {"accuracy": 0.7} and led.get(a)["label"] == "mine"   # label kept
    assert _record(led, "post-training", {"default": {}}) != a
    assert _record(led, "post-training", {"default": {"prune": {"sparsity": 0.5}}, "model": "m"}, owner="you") != a
    assert _record(led, "baseline", owner="me") == _record(led, "baseline", owner="you")   # shared
    assert _record(led, "fine-tuned", {"default": {}}) != _record(led, "fine-tuned", {"default": {}})
    assert led.find("post-training", model_hash="h", dataset_hash="d", recipe={"default": {}}) is not None
    assert led.find("post-training", model_hash="h", dataset_hash="other", recipe={"default": {}}) is None


def test_lineage_runs_from_the_root(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    root = _record(led, "baseline")
    mid = _record(led, "post-training", {"default": {}}, parent_id=root)
    leaf = _record(led, "fine-tuned", {"default": {}}, parent_id=mid)
    exp = _record(led, "export", {"default": {}}, parent_id=leaf)
    assert [r["id"] for r in led.lineage(exp)] == [root, mid, leaf, exp]
    assert [r["kind"] for r in led.lineage(mid)] == ["baseline", "post-training"]
    assert [r["id"] for r in led.runs(kinds=["fine-tuned", "export"])] == [leaf, exp]
    assert led.runs(model="m") == led.runs(model="h") == led.runs()
    assert led.runs(dataset="mnist") == []
    with pytest.raises(PetError, match="run 999 is not in the ledger"):
        led.get(999)


def test_trim_history_keeps_ends_and_at_most_the_limit():
    rows = [{"step": i} for i in range(1234)]
    kept = trim_history(rows, 500)
    assert len(kept) == 500 and kept[0] == rows[0] and kept[-1] == rows[-1]
    assert [r["step"] for r in kept] == sorted({r["step"] for r in kept})
    assert trim_history(rows[:10], 500) == rows[:10]


# ------------------------------------------------------------------ recording and reopening


def test_identity_hashes_model_and_data(baseline):
    ident = identity(baseline)
    assert ident["model"] == MODEL and ident["dataset"] == "digits"
    assert ident["model_hash"] == model_hash(baseline.model) == baseline.info["model_hash"]
    assert ident["dataset_hash"] == baseline.dataset.fingerprint
    assert ident["extra"]["arch"] == MODEL and ident["extra"]["dataset_spec"] == "digits"


def test_post_training_round_trip(workspace, baseline):
    led = Ledger()
    wb = open_workbench(baseline)
    wb.apply(Recipe(model=MODEL, default=COMPRESS))
    report = wb.report()
    rid = record_evaluation(led, baseline, report, owner="ann")
    assert record_evaluation(led, baseline, wb.report(), owner="ann") == rid        # upserted
    run = led.get(rid)
    parent = led.get(run["parent_id"])
    assert run["kind"] == "post-training" and run["status"] == "done" and "finetune" not in run["recipe"]
    assert parent["kind"] == "baseline" and parent["metrics"]["accuracy"] == report["baseline"]["accuracy"]
    assert parent["id"] == record_baseline(led, baseline)
    assert run["metrics"]["size_bytes"] == report["compressed"]["size_bytes"]

    original, wb2 = open_run(led, rid)
    assert wb2.evaluate() == run["metrics"]["accuracy"] == report["compressed"]["accuracy"]
    assert wb2.report()["compressed"]["size_bytes"] == run["metrics"]["size_bytes"]
    assert _same_weights(wb2.model, wb.model)
    assert original.model_name == MODEL

    _, wb3 = open_run(led, parent["id"])
    assert wb3.evaluate() == parent["metrics"]["accuracy"] and _same_weights(wb3.model, baseline.model)


def test_finetune_round_trip_and_packed_export(workspace, baseline, tuned, tmp_path):
    led = Ledger()
    rid = record_finetune(led, baseline, tuned, owner="ann")
    run = led.get(rid)
    recorded = run["metrics"]["accuracy"]
    assert recorded == tuned.report["compressed"]["accuracy"]
    assert run["kind"] == "fine-tuned" and run["status"] == "done" and run["weights_path"].endswith(f"run-{rid}.petz")
    assert run["recipe"]["finetune"]["steps"] == 30 and run["metrics"]["finetune"]["steps"] == 30
    assert run["extra"]["final_recipe"] == tuned.report["final_recipe"]
    assert [r["kind"] for r in led.lineage(rid)] == ["baseline", "post-training", "fine-tuned"]
    post = led.get(run["parent_id"])
    assert post["recipe"] == {k: v for k, v in tuned.report["recipe"].items() if k != "finetune"}

    original, wb = open_run(led, rid)
    assert _same_weights(wb.model, tuned.workbench.model)
    assert wb.evaluate() == recorded
    assert wb.report()["compressed"]["size_bytes"] == run["metrics"]["size_bytes"]
    assert original.model is not wb.baseline and _same_weights(original.model, baseline.model)
    art = make_artifact("packed", wb, original, tmp_path / "out.petz")
    assert art["accuracy"] == recorded

    exp = led.record("export", model=run["model"], model_hash=run["model_hash"], dataset=run["dataset"],
                     dataset_hash=run["dataset_hash"], parent_id=rid, metrics={"accuracy": art["accuracy"]})
    assert _same_weights(open_run(led, exp)[1].model, tuned.workbench.model)


def test_finetune_completes_a_row_made_beforehand(workspace, baseline, tuned):
    led = Ledger()
    ident = identity(baseline)
    rid = led.record("fine-tuned", model=ident["model"], model_hash=ident["model_hash"], dataset="digits",
                     dataset_hash=ident["dataset_hash"], recipe=tuned.report["recipe"], status="queued")
    stopped = dataclasses.replace(tuned, stopped=True)
    assert record_finetune(led, baseline, stopped, run_id=rid) == rid
    run = led.get(rid)
    assert run["status"] == "stopped" and run["metrics"]["accuracy"] == tuned.report["compressed"]["accuracy"]
    assert led.get(run["parent_id"])["kind"] == "post-training"


def test_finetune_of_a_non_zoo_model_keeps_safetensors(workspace, baseline, tuned):
    led = Ledger()
    rid = record_finetune(led, dataclasses.replace(baseline, arch=None), tuned)
    run = led.get(rid)
    assert run["weights_path"].endswith(f"run-{rid}.safetensors")
    _, wb = open_run(led, rid)
    assert _same_weights(wb.model, tuned.workbench.model) and wb.evaluate() == run["metrics"]["accuracy"]


def test_finetune_with_low_rank_reopens_exactly(workspace, baseline):
    recipe = Recipe(model=MODEL, default={"prune": {"sparsity": 0.5}, "quantize": {"bits": 4}},
                    layers={"fc1": {"low_rank": {"energy": 0.9}}}, finetune=FINETUNE)
    wb = open_workbench(baseline)
    wb.apply(recipe)
    result = finetune(wb, recipe, baseline.dataset, device=torch.device("cpu"))
    led = Ledger()
    rid = record_finetune(led, baseline, result)
    _, wb2 = open_run(led, rid)
    assert _same_weights(wb2.model, result.workbench.model)
    assert wb2.report()["compressed"]["size_bytes"] == led.get(rid)["metrics"]["size_bytes"]


def test_open_run_refuses_a_changed_model_file(workspace, baseline, tmp_path):
    path = tmp_path / "mine.pt"
    model = load_baseline(MODEL, "digits").model
    with torch.no_grad():
        model.fc1.weight[0, 0] += 1.0           # not the zoo model's hash, so a baseline run of its own
    save_state_dict(model, path)
    mine = load_baseline(str(path), "digits")
    led = Ledger()
    rid = record_baseline(led, mine)
    assert led.get(rid)["model"] == str(path)
    assert open_run(led, rid)[1].evaluate() == led.get(rid)["metrics"]["accuracy"]
    with torch.no_grad():
        model.fc1.weight[0, 1] += 1.0
    save_state_dict(model, path)
    with pytest.raises(PetError, match=rf"run {rid} was made on model .*mine.pt with hash .*, but .* now has hash"):
        open_run(led, rid)


def test_open_run_without_weights_is_one_error(workspace, baseline):
    led = Ledger()
    ident = identity(baseline)
    rid = led.record("fine-tuned", model=ident["model"], model_hash=ident["model_hash"], dataset="digits",
                     dataset_hash=ident["dataset_hash"], extra=ident["extra"], status="running")
    with pytest.raises(PetError, match=rf"run {rid} \(fine-tuned, running\) has no weights"):
        open_run(led, rid)


# ---------------------------------------------------------------- metrics by name (issue 11)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """A tiny GPT-2 folder (random weights, built from a config) and a token stream for it."""
    pytest.importorskip("transformers")
    import numpy as np

    import hf_models

    root = tmp_path_factory.mktemp("gpt2")
    folder = hf_models.gpt2_folder(root / "model")
    np.savez(root / "tokens.npz", tokens=np.random.default_rng(0).integers(0, hf_models.GPT2_VOCAB, 200))
    return folder, root / "tokens.npz"


def test_a_perplexity_run_round_trips_with_its_metric_named(workspace, gpt2):
    folder, tokens = gpt2
    base = load_baseline(str(folder), str(tokens))
    led = Ledger()
    wb = open_workbench(base)
    wb.apply(Recipe(model=str(folder), default=COMPRESS))
    report = wb.report()
    rid = record_evaluation(led, base, report, owner="ann")
    run, parent = led.get(rid), led.get(led.get(rid)["parent_id"])
    for row, part in ((run, "compressed"), (parent, "baseline")):
        assert row["metrics"]["metric"] == "perplexity" and row["metrics"]["higher_is_better"] is False
        assert row["metrics"]["perplexity"] == report[part]["perplexity"] and "accuracy" not in row["metrics"]
    assert run_metric(run) == {"name": "perplexity", "higher_is_better": False}

    _, wb2 = open_run(led, rid)            # the folder and token file loaded again: the same number
    assert wb2.metric.name == "perplexity" and wb2.evaluate() == run["metrics"]["perplexity"]
    assert _same_weights(wb2.model, wb.model)


def test_a_weights_only_run_records_sizes_and_no_metric_value(workspace, gpt2):
    folder, _ = gpt2
    base = load_baseline(str(folder))
    led = Ledger()
    wb = open_workbench(base)
    wb.apply(Recipe(model=str(folder), default=COMPRESS))
    report = wb.report()
    rid = record_evaluation(led, base, report)
    run = led.get(rid)
    assert run["dataset"] == run["dataset_hash"] == NO_DATASET
    assert run["metrics"]["metric"] == "perplexity" and "perplexity" not in run["metrics"]
    assert run["metrics"]["size_bytes"] == report["compressed"]["size_bytes"]
    _, wb2 = open_run(led, rid)            # reopened weights only, to the same bytes
    assert wb2.evaluate() is None and wb2.report()["compressed"]["size_bytes"] == run["metrics"]["size_bytes"]


def _dominated(p: dict, q: dict, lower: tuple[str, ...]) -> bool:
    """q dominates p: written out per metric, with ``lower`` the metrics where less is better."""
    def at_least(a, b, m):
        return a[m] <= b[m] if m in lower else a[m] >= b[m]
    return all(at_least(q, p, m) for m in p) and any(q[m] != p[m] for m in p)


@pytest.mark.parametrize("metric, lower", [("perplexity", ("perplexity", "size_bytes")),
                                           ("accuracy", ("size_bytes",))])
def test_pareto_front_follows_the_metric_direction(metric, lower):
    import random

    from pet_core.pareto import directions, pareto_front

    rng = random.Random(0)
    for _ in range(30):
        points = [{metric: rng.choice([10.0, 20.0, 30.0, 40.0]), "size_bytes": rng.choice([1, 2, 3, 4])}
                  for _ in range(rng.randint(1, 9))]
        brute = [i for i, p in enumerate(points) if not any(_dominated(p, q, lower) for q in points)]
        assert pareto_front(points, directions(metric)) == brute
    front = pareto_front([{"perplexity": 40.0, "size_bytes": 10}, {"perplexity": 30.0, "size_bytes": 10}],
                         directions("perplexity"))
    assert front == [1]                      # the same bytes at lower perplexity wins
