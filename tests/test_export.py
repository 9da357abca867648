"""Deployable files: ONNX matches torch, int8 keeps accuracy, round trips are exact, CLI export."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pet_core.errors import PetError
from pet_core.export.artifacts import calibration_batches, make_artifact
from pet_core.export.onnx_export import (export_onnx, onnx_accuracy, onnx_session, quantize_onnx_dynamic,
                                         quantize_onnx_static)
from pet_core.loader import load_baseline, open_workbench
from pet_core.recipe import Recipe

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["lenet_300_100", "mnist_cnn", "resnet_mini"]
RECIPE = Recipe(default={"prune": {"sparsity": 0.5}, "quantize": {"bits": 8}})


@pytest.fixture(scope="module", params=MODELS)
def setup(request, tmp_path_factory):
    """(baseline, workbench with prune 0.5 + int8 applied, fp32 ONNX path) per model."""
    baseline = load_baseline(request.param, "digits")
    wb = open_workbench(baseline)
    wb.apply(RECIPE.replace(model=request.param))
    path = export_onnx(wb.model, baseline.dataset.input_shape, tmp_path_factory.mktemp("onnx") / "m.onnx")
    return baseline, wb, path


def test_onnx_matches_torch_with_dynamic_batch(setup):
    baseline, wb, path = setup
    sess = onnx_session(path, threads=1)
    for n in (1, 7, 64):   # one file serves any batch size
        x = baseline.dataset.x_test[:n]
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        with torch.inference_mode():
            want = wb.model(x).numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert onnx_accuracy(path, wb.x_eval, wb.y_eval) == pytest.approx(wb.evaluate(), abs=1e-9)


def test_int8_onnx_keeps_accuracy(setup, tmp_path):
    baseline, wb, path = setup
    fp32 = onnx_accuracy(path, wb.x_eval, wb.y_eval)
    dyn = quantize_onnx_dynamic(path, tmp_path / "dyn.onnx")
    static = quantize_onnx_static(path, tmp_path / "static.onnx", calibration_batches(baseline.dataset.x_train))
    for q in (dyn, static):
        assert abs(onnx_accuracy(q, wb.x_eval, wb.y_eval) - fp32) <= 0.02, q.name
    # int8 weights: the quantised files are much smaller wherever there are weights to quantise
    assert static.stat().st_size < 0.5 * path.stat().st_size
    if baseline.model_name != "resnet_mini":   # resnet_mini's weights are all Conv: dynamic keeps them fp32
        assert dyn.stat().st_size < 0.5 * path.stat().st_size


@pytest.mark.parametrize("fmt", ["torchscript", "state_dict"])
def test_torch_round_trips_are_exact(setup, tmp_path, fmt):
    baseline, wb, _ = setup
    out = make_artifact(fmt, wb, baseline, tmp_path / f"m.{fmt}")
    assert out["accuracy"] == wb.evaluate()
    assert out["size_bytes"] == (tmp_path / f"m.{fmt}").stat().st_size
    assert out["kind"] == "measured" and set(out["latency_ms"]) == {"batch1", "batch64"}
    assert all(v > 0 for v in out["latency_ms"].values())


def test_make_artifact_rejects_bad_input(setup, tmp_path):
    baseline, wb, _ = setup
    with pytest.raises(PetError, match="unknown export format"):
        make_artifact("tflite", wb, baseline, tmp_path / "m.tflite")
    with pytest.raises(PetError, match="folder"):
        make_artifact("onnx", wb, baseline, tmp_path)


# ---------------------------------------------------------------- CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)   # carries the session's hermetic PET_CACHE_DIR
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("PET_MNIST_DIR", None)
    return subprocess.run([sys.executable, "-m", "pet_core", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


CLI_FORMATS = ["onnx", "onnx-int8", "onnx-int8-static", "torchscript", "state_dict"]
if importlib.util.find_spec("pet_core.packed") is not None:
    CLI_FORMATS.append("packed")


@pytest.fixture(scope="module")
def lenet_cached():
    """Trains (or loads) lenet into the session cache, so the subprocesses only load it."""
    return load_baseline("lenet_300_100", "digits")


@pytest.mark.parametrize("fmt", CLI_FORMATS)
def test_cli_export_json(lenet_cached, tmp_path, fmt):
    out_path = tmp_path / "sub" / f"model.{fmt}"   # a missing folder is created
    proc = _cli("export", "--model", "lenet_300_100", "--dataset", "digits", "--format", fmt,
                "--out", str(out_path), "--json")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["format"] == fmt and out["kind"] == "measured"
    assert out["size_bytes"] == out_path.stat().st_size
    assert 0.5 < out["accuracy"] <= 1
    assert set(out["latency_ms"]) == {"batch1", "batch64"}
    assert out["baseline"]["size_bytes"] > 0 and out["accounted_size_bytes"] > 0


def test_cli_export_bad_input(lenet_cached, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cases = [
        ["--format", "tflite", "--out", str(tmp_path / "m.bin")],
        ["--format", "onnx", "--out", str(blocker / "m.onnx")],   # parent is a file: unwritable
        ["--format", "onnx"],                                       # --out missing
    ]
    for extra in cases:
        proc = _cli("export", "--model", "lenet_300_100", "--dataset", "digits", *extra)
        assert proc.returncode == 2, (extra, proc.stderr)
        assert proc.stdout == ""
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith("error: ")


def test_export_falls_back_to_torchscript_exporter(monkeypatch, tmp_path):
    """When the dynamo exporter fails, the older exporter still gives a dynamic-batch file."""
    real = torch.onnx.export

    def flaky(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("dynamo exporter unavailable")
        return real(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", flaky)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    path = export_onnx(model, (1, 4, 4), tmp_path / "m.onnx")
    x = torch.randn(5, 1, 4, 4)
    sess = onnx_session(path)
    np.testing.assert_allclose(sess.run(None, {"input": x.numpy()})[0], model(x).detach().numpy(), atol=1e-5)
