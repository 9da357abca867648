"""``python -m pet_core runs``, recording by evaluate/finetune, and ``export --run``.

Oracles: the numbers the recording command printed itself, the ledger read directly, and the size
of the written file as ``stat`` gives it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pet_core.cli import main
from pet_core.ledger import Ledger

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "assets" / "recipes" / "example.yaml"
FINETUNE = """pet_recipe: 1
model: lenet_300_100
dataset: digits
default:
  prune: {sparsity: 0.9}
  quantize: {bits: 4}
finetune: {steps: 30, techniques: {qat: {}}}
"""


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """One workspace for the module: the fine-tuned run is made once and exported by several tests."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("workspace")
        mp.setenv("PET_WORKSPACE", str(path))
        mp.delenv("PET_USER", raising=False)
        yield path


def _run(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _json(capsys, *args: str):
    rc, out, err = _run(capsys, *args, "--json")
    assert rc == 0, err
    return json.loads(out)


def test_runs_on_a_new_workspace_is_empty(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PET_WORKSPACE", str(tmp_path / "fresh"))
    assert _run(capsys, "runs") == (0, "", "")
    assert _json(capsys, "runs") == []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pet_core", "runs", "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (0, "[]", "")


def test_evaluate_records_a_run_that_runs_lists(ws, capsys, monkeypatch):
    out = _json(capsys, "evaluate", "--recipe", str(EXAMPLE), "--owner", "ann")
    rid = out["run_id"]
    listed = {r["id"]: r for r in _json(capsys, "runs")}
    run = listed[rid]
    assert run["kind"] == "post-training" and run["owner"] == "ann" and run["status"] == "done"
    assert run["metrics"]["accuracy"] == out["compressed"]["accuracy"]
    assert run["metrics"]["size_bytes"] == out["compressed"]["size_bytes"]
    assert listed[run["parent_id"]]["kind"] == "baseline"
    assert listed[run["parent_id"]]["metrics"]["accuracy"] == out["baseline"]["accuracy"]

    shown = _json(capsys, "runs", "show", str(rid))
    assert shown["run"]["id"] == rid and [r["kind"] for r in shown["lineage"]] == ["baseline", "post-training"]
    assert _json(capsys, "runs", "--json", "show", str(rid)) == shown    # --json before or after `show`

    assert _json(capsys, "evaluate", "--recipe", str(EXAMPLE), "--owner", "ann")["run_id"] == rid   # upserted
    monkeypatch.setenv("PET_USER", "zoe")
    zoe = _json(capsys, "evaluate", "--recipe", str(EXAMPLE))["run_id"]
    assert zoe != rid and Ledger().get(zoe)["owner"] == "zoe"
    monkeypatch.delenv("PET_USER")
    assert Ledger().get(_json(capsys, "evaluate", "--recipe", str(EXAMPLE))["run_id"])["owner"] == "cli"

    before = len(Ledger().runs())
    assert _json(capsys, "evaluate", "--model", "lenet_300_100", "--no-record")["run_id"] is None
    assert len(Ledger().runs()) == before

    assert [r["id"] for r in _json(capsys, "runs", "--owner", "zoe")] == [zoe]
    assert all(r["kind"] == "baseline" for r in _json(capsys, "runs", "--kind", "baseline"))
    assert _json(capsys, "runs", "--model", "no-such-model") == []
    assert len(_json(capsys, "runs", "--model", "lenet_300_100", "--dataset", "digits")) == before


def test_runs_text_is_a_table(ws, capsys):
    _json(capsys, "evaluate", "--recipe", str(EXAMPLE))
    rc, out, _ = _run(capsys, "runs")
    lines = out.splitlines()
    assert rc == 0 and lines[0].split() == ["id", "parent", "kind", "status", "model", "dataset", "metric", "value",
                                            "size_bytes", "ratio", "owner", "label"]
    assert len(lines) == 1 + len(Ledger().runs())
    for line, run in zip(lines[1:], Ledger().runs()):   # each row names its metric beside the value
        assert line.split()[6:8] == ["accuracy", f"{run['metrics']['accuracy']:.4f}"]


def test_export_run_of_a_fine_tuned_run_has_its_accuracy(ws, capsys, tmp_path):
    recipe = tmp_path / "ft.yaml"
    recipe.write_text(FINETUNE)
    tuned = _json(capsys, "finetune", "--recipe", str(recipe), "--owner", "ann")
    rid = tuned["run_id"]
    run = Ledger().get(rid)
    assert run["kind"] == "fine-tuned" and run["metrics"]["accuracy"] == tuned["compressed"]["accuracy"]

    out = _json(capsys, "export", "--run", str(rid), "--format", "packed", "--out", str(tmp_path / "m.petz"))
    assert out["accuracy"] == run["metrics"]["accuracy"]
    assert out["size_bytes"] == (tmp_path / "m.petz").stat().st_size
    assert out["accounted_size_bytes"] == run["metrics"]["size_bytes"]
    exp = Ledger().get(out["run_id"])
    assert exp["kind"] == "export" and exp["parent_id"] == rid and exp["weights_path"] == str(tmp_path / "m.petz")
    assert exp["metrics"]["size_bytes"] == out["size_bytes"] and exp["metrics"]["format"] == "packed"
    lineage = _json(capsys, "runs", "show", str(out["run_id"]))["lineage"]
    assert [r["kind"] for r in lineage] == ["baseline", "post-training", "fine-tuned", "export"]

    sd = _json(capsys, "export", "--run", str(rid), "--format", "state_dict", "--out", str(tmp_path / "m.pt"))
    assert sd["accuracy"] == run["metrics"]["accuracy"]


@pytest.mark.parametrize("args, message", [
    (["runs", "show", "999"], "run 999 is not in the ledger"),
    (["runs", "show", "x"], "invalid int value: 'x'"),
    (["export", "--run", "999", "--format", "packed", "--out", "x.petz"], "run 999 is not in the ledger"),
    (["export", "--run", "1", "--recipe", str(EXAMPLE), "--format", "packed", "--out", "x.petz"],
     "export --run 1 exports that run as it was recorded; leave out --recipe"),
    (["runs", "--kind", "nope"], "invalid choice: 'nope'"),
])
def test_bad_run_arguments_exit_2_with_one_line(ws, capsys, args, message):
    rc, out, err = _run(capsys, *args)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and message in err


def test_runs_text_names_a_perplexity_and_its_direction(capsys):
    from pet_core.cli_runs import print_runs

    def row(rid, metrics):
        return {"id": rid, "parent_id": None, "kind": "post-training", "status": "done", "model": "gpt2",
                "dataset": "tokens", "owner": "ann", "label": "int4", "model_hash": "h", "dataset_hash": "d",
                "metrics": metrics, "weights_path": None, "error": None}

    lm = row(7, {"metric": "perplexity", "higher_is_better": False, "perplexity": 43.214, "size_bytes": 1000})
    bare = row(8, {"metric": "perplexity", "higher_is_better": False, "size_bytes": 900})      # weights only
    print_runs([lm, bare])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[6:9] == ["perplexity", "43.21", "1,000"]
    assert lines[2].split()[6:9] == ["perplexity", "-", "900"]
    print_runs({"run": lm, "lineage": [lm]})
    assert "perplexity 43.21 (lower is better)" in capsys.readouterr().out.splitlines()
    print_runs({"run": bare, "lineage": [bare]})
    assert "perplexity not measured" in capsys.readouterr().out.splitlines()
