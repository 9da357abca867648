"""Shipped fine-tuning recipes on MNIST, end to end through the CLI (slow: minutes on 2 CPU cores).

The Deep Compression recipe must reproduce its claim from scratch: >= 32x in honest bytes with
accuracy no more than 0.2 points below the dense baseline (Han et al. 2016: 32x before Huffman).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pet_core.recipe import load as load_recipe

REPO = Path(__file__).resolve().parents[1]
DC_RECIPE = REPO / "assets" / "recipes" / "deep_compression_lenet300.yaml"
CNN_RECIPE = REPO / "assets" / "recipes" / "mnist_cnn_90_int4.yaml"


def finetune_cli(recipe: Path, model: str, data_dir: Path) -> dict:
    """``python -m pet_core finetune ... --json`` in a child process (torch's default threads there)."""
    cmd = [sys.executable, "-m", "pet_core", "finetune", "--model", model, "--dataset", "mnist",
           "--data-dir", str(data_dir), "--recipe", str(recipe), "--json"]
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    report["_wall_s"] = time.perf_counter() - start
    return report


@pytest.mark.parametrize("path", [DC_RECIPE, CNN_RECIPE], ids=lambda p: p.name)
def test_shipped_recipes_load_and_fine_tune(path):
    recipe = load_recipe(path)
    assert recipe.dataset == "mnist" and recipe.finetune


@pytest.mark.slow
def test_deep_compression_lenet300_reaches_32x_within_0_2_points(mnist_dir):
    report = finetune_cli(DC_RECIPE, "lenet_300_100", mnist_dir)
    b, c = report["baseline"], report["compressed"]
    assert c["compression_ratio"] >= 32.0, c
    assert c["compression_ratio"] == pytest.approx(b["size_bytes"] / c["size_bytes"])
    assert c["accuracy"] >= b["accuracy"] - 0.002, (c["accuracy"], b["accuracy"])
    layers = {row["name"]: row for row in report["layers"]}
    for name in ("fc1", "fc2", "fc3"):
        weight = layers[name]["tensors"][0]
        assert weight["value_bits"] <= 5                      # 32 clusters: 5-bit shared weights
        assert weight["nonzero"] / weight["params"] <= 0.5    # pruned
    assert layers["fc1"]["tensors"][0]["encoding"].startswith("relative-")
