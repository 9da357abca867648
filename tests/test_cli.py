"""``python -m pet_core`` in a subprocess: JSON shapes, the same numbers as in-process, clean errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from pet_core.analysis import analyze
from pet_core.loader import load_baseline, open_workbench
from pet_core.model_io import save_state_dict
from pet_core.recipe import load as load_recipe
from pet_core.zoo import list_models

ROOT = Path(__file__).resolve().parents[1]
MODEL = "lenet_300_100"

# The example recipe, as shipped.
RECIPE = (Path(__file__).resolve().parents[1] / "assets" / "recipes" / "example.yaml").read_text()


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)                      # carries the session's hermetic PET_CACHE_DIR
    env["PET_CACHE_DIR"] = os.environ["PET_CACHE_DIR"]
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("PET_MNIST_DIR", None)
    return subprocess.run([sys.executable, "-m", "pet_core", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, "one JSON object on one line"
    out = json.loads(lines[0])
    assert isinstance(out, dict)
    return out



@pytest.fixture(scope="module")
def baseline():
    """Trains (or loads) the model into the session cache, so the subprocesses only load it."""
    return load_baseline(MODEL, "digits")


@pytest.fixture(scope="module")
def files(tmp_path_factory, baseline) -> Path:
    d = tmp_path_factory.mktemp("cli")
    (d / "r.yaml").write_text(RECIPE)
    (d / "bad.yaml").write_text("pet_recipe: 1\ndefault: {prune: {sparsity: 2}}\n")
    (d / "nomatch.yaml").write_text("pet_recipe: 1\nlayers: {conv1: {quantize: {bits: 4}}}\n")
    (d / "m.pt").write_text("this is not a model\n")
    save_state_dict(baseline.model, d / "lenet.pt")
    return d


def _commands(d: Path) -> dict[str, tuple[str, ...]]:
    return {
        "models_json": ("models", "--json"),
        "analyze_json": ("analyze", "--json", "--model", MODEL),
        "evaluate_json": ("evaluate", "--json", "--recipe", str(d / "r.yaml")),
        "evaluate_text": ("evaluate", "--recipe", str(d / "r.yaml")),
        "evaluate_state_dict": ("evaluate", "--json", "--model", str(d / "lenet.pt"), "--recipe", str(d / "r.yaml")),
        "unknown_model": ("evaluate", "--model", "lenet_3000"),
        "missing_recipe": ("evaluate", "--recipe", str(d / "absent.yaml")),
        "invalid_recipe": ("evaluate", "--recipe", str(d / "bad.yaml")),
        "layer_matches_nothing": ("evaluate", "--recipe", str(d / "nomatch.yaml")),
        "missing_mnist": ("evaluate", "--dataset", "mnist", "--data-dir", "/nonexistent"),
        "corrupt_model": ("evaluate", "--model", str(d / "m.pt")),
        "unknown_flag": ("evaluate", "--frobnicate"),
    }


@pytest.fixture(scope="module")
def runs(files) -> dict[str, subprocess.CompletedProcess]:
    """Every command run once, a few at a time (each is mostly interpreter and torch start-up)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {key: pool.submit(_cli, *args) for key, args in _commands(files).items()}
        return {key: f.result() for key, f in futures.items()}


def _in_process(baseline, recipe_path: Path) -> dict:
    wb = open_workbench(baseline)
    wb.apply(load_recipe(recipe_path))
    return wb.report()


def _check_same_numbers(out: dict, want: dict) -> None:
    assert set(out["baseline"]) >= {"accuracy", "size_bytes", "params"}
    assert set(out["compressed"]) >= {"accuracy", "size_bytes", "nonzero_params", "compression_ratio"}
    for part, keys in (("baseline", ("accuracy", "size_bytes", "params")),
                       ("compressed", ("accuracy", "size_bytes", "nonzero_params", "compression_ratio"))):
        for k in keys:
            assert out[part][k] == want[part][k], f"{part}.{k}: CLI {out[part][k]} != in-process {want[part][k]}"
    assert 0.0 <= out["baseline"]["accuracy"] <= 1.0 and 0.0 <= out["compressed"]["accuracy"] <= 1.0
    keys = ("name", "params", "nonzero", "bits", "encoding", "size_bytes")
    assert [{k: r[k] for k in keys} for r in out["layers"]] == [{k: r[k] for k in keys} for r in want["layers"]]
    assert out["compressed"]["size_bytes"] == sum(r["size_bytes"] for r in out["layers"])


# --- success paths -------------------------------------------------------------------------------

def test_models_json(runs):
    out = _json(runs["models_json"])
    assert [m["name"] for m in out["models"]] == [m.name for m in list_models()]
    for m, info in zip(out["models"], list_models()):
        assert m["description"] == info.description and m["min_hw"] == info.min_hw


def test_analyze_json(runs, baseline):
    out = _json(runs["analyze_json"])
    assert isinstance(out["layers"], list)
    assert [layer["name"] for layer in out["layers"]] == ["fc1", "fc2", "fc3"]
    assert out["skipped"] == [] and out["model"] == MODEL and out["dataset"] == "digits"
    want = {s.name: s for s in analyze(baseline.model)}
    for layer in out["layers"]:
        s = want[layer["name"]]
        assert (layer["params"], layer["nonzero"], layer["shape"]) == (s.params, s.nonzero, s.shape)
        assert layer["mean"] == s.mean and layer["std"] == s.std and layer["hist_counts"] == s.hist_counts


def test_evaluate_json_equals_in_process(runs, baseline, files):
    out = _json(runs["evaluate_json"])
    _check_same_numbers(out, _in_process(baseline, files / "r.yaml"))
    assert out["recipe"] == load_recipe(files / "r.yaml").to_dict()
    assert out["compressed"]["compression_ratio"] == out["baseline"]["size_bytes"] / out["compressed"]["size_bytes"]
    assert out["compressed"]["size_bytes"] < out["baseline"]["size_bytes"]
    by = {r["name"]: r for r in out["layers"]}
    assert set(by) == {"fc1", "fc2", "fc3"}
    assert by["fc3"]["bits"] == 8 and by["fc1"]["bits"] == 4 and by["fc2"]["bits"] == 4


def test_evaluate_text(runs, baseline, files):
    proc = runs["evaluate_text"]
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    want = _in_process(baseline, files / "r.yaml")
    assert lines[-1].startswith("compressed:") and f"{want['compressed']['size_bytes']:,} bytes" in lines[-1]
    assert lines[-2].startswith("baseline:") and f"{want['baseline']['size_bytes']:,} bytes" in lines[-2]
    assert [line.split()[0] for line in lines[1:-2]] == ["fc1", "fc2", "fc3"]


def test_evaluate_state_dict_file(runs, baseline, files):
    out = _json(runs["evaluate_state_dict"])
    assert out["model"] == str(files / "lenet.pt")
    _check_same_numbers(out, _in_process(baseline, files / "r.yaml"))


# --- bad input: exit 2, one line on stderr, no traceback -------------------------------------------

@pytest.mark.parametrize("key, needles", [
    ("unknown_model", ("'lenet_3000'", MODEL)),
    ("missing_recipe", ("absent.yaml", "not found")),
    ("invalid_recipe", ("bad.yaml", "default.prune.sparsity", "= 2", "[0, 1]")),
    ("layer_matches_nothing", ("'conv1'", "fc1, fc2, fc3")),
    ("missing_mnist", ("MNIST", "/nonexistent")),
    ("corrupt_model", ("m.pt", "text file")),
    ("unknown_flag", ("--frobnicate",)),
])
def test_bad_input(runs, key, needles):
    proc = runs[key]
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip("\n").splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert proc.stdout == ""
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_every_command_ran(runs):
    assert set(runs) == set(_commands(Path("."))), "each command has a test above"


# --- MNIST ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_evaluate_mnist(mnist_dir, files):
    out = _json(_cli("evaluate", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--model", MODEL,
                     "--recipe", str(files / "r.yaml"), "--json", timeout=900))
    assert out["dataset"] == "mnist"
    assert out["baseline"]["accuracy"] >= 0.97
    assert 0.0 <= out["compressed"]["accuracy"] <= 1.0
    assert out["baseline"]["params"] == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    assert out["compressed"]["size_bytes"] == sum(r["size_bytes"] for r in out["layers"])


def test_finetune_out_writes_a_packed_file_as_small_as_accounted(tmp_path):
    recipe = tmp_path / "ft.yaml"
    recipe.write_text("pet_recipe: 1\nmodel: lenet_300_100\ndataset: digits\n"
                      "default: {prune: {sparsity: 0.9, scope: layer}, share: {clusters: 16}}\n"
                      "finetune: {steps: 20, techniques: {qat: {}}}\n")
    out = _json(_cli("finetune", "--recipe", str(recipe), "--out", str(tmp_path / "run"), "--json"))
    packed = out["packed"]
    file_bytes = (tmp_path / "run" / "model.petz").stat().st_size
    assert packed["file_bytes"] == file_bytes
    accounted = out["compressed"]["size_bytes_huffman"]
    assert accounted <= file_bytes <= accounted * 1.01 + 2048        # payload + a small header
    assert (tmp_path / "run" / "recipe.yaml").exists() and (tmp_path / "run" / "report.json").exists()
    assert len(out["history"]) >= 1 and out["finetune"]["steps"] == 20
