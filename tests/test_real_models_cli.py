"""The issue's acceptance path from the CLI, with no adapter code: a GPT-2, a BERT sequence classifier
and a ViT image classifier, each saved with ``save_pretrained``, are analysed, compressed (50% global
+ int4), evaluated on small local data, exported packed, and the packed file loads back with the
same metric; the same commands work weights-only.

Oracles: the metric of the packed file loaded back must equal the compressed metric the workbench
reported (the file is the model), and the weights-only sizes must equal the measured ones.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pet_core.cli import main

pytest.importorskip("transformers")
from hf_models import bert_folder, gpt2_folder, vit_folder  # noqa: E402

RECIPE = "pet_recipe: 1\ndefault:\n  prune: {sparsity: 0.5}\n  quantize: {bits: 4}\n"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_models")
    rng = np.random.default_rng(0)
    np.savez(root / "tokens.npz", tokens=rng.integers(0, 300, 1200))
    np.savez(root / "seq.npz", x=rng.integers(0, 100, (60, 16)), y=rng.integers(0, 3, 60))
    (root / "r.yaml").write_text(RECIPE)
    out = {}
    for name, build, data in (("gpt2", gpt2_folder, root / "tokens.npz"), ("bert", bert_folder, root / "seq.npz"),
                              ("vit", vit_folder, "digits")):
        (root / name).mkdir()
        out[name] = (build(root / name), str(data))
    return root, out


def _run(capsys, *argv) -> dict:
    code = main([*map(str, argv), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


@pytest.mark.parametrize("name", ["gpt2", "bert", "vit"])
def test_hf_folder_analyse_compress_evaluate_export(folders, name, capsys):
    root, models = folders
    folder, data = models[name]
    metric = "perplexity" if name == "gpt2" else "accuracy"
    analysed = _run(capsys, "analyze", "--model", folder)
    types = {row["type"] for row in analysed["layers"]}
    assert {"gpt2": "Conv1D", "bert": "Linear", "vit": "Conv2d"}[name] in types

    report = _run(capsys, "evaluate", "--model", folder, "--dataset", data, "--recipe", root / "r.yaml")
    assert report["metric"]["name"] == metric and report["metric"]["higher_is_better"] == (metric == "accuracy")
    assert report["compressed"][metric] is not None and report["compressed"]["weight_sparsity"] > 0.45
    assert report["compressed"]["compression_ratio"] > 4

    packed = root / f"{name}.petz"
    exported = _run(capsys, "export", "--model", folder, "--dataset", data, "--recipe", root / "r.yaml",
                    "--format", "packed", "--out", packed)
    assert exported["size_bytes"] == packed.stat().st_size < report["baseline"]["size_bytes"] / 4
    assert exported[metric] == report["compressed"][metric]                 # the file computes what was reported

    back = _run(capsys, "evaluate", "--model", packed, "--dataset", data)
    assert back["baseline"][metric] == report["compressed"][metric]


@pytest.mark.parametrize("name", ["gpt2", "vit"])
def test_weights_only_cli(folders, name, capsys, tmp_path):
    root, models = folders
    folder, data = models[name]
    with_data = _run(capsys, "evaluate", "--model", folder, "--dataset", data, "--recipe", root / "r.yaml")
    alone = _run(capsys, "evaluate", "--model", folder, "--recipe", root / "r.yaml")
    metric = alone["metric"]["name"]
    assert alone["metric"]["measured"] is False and alone["compressed"][metric] is None
    assert alone["compressed"]["size_bytes"] == with_data["compressed"]["size_bytes"]
    assert alone["layers"] == with_data["layers"]
    exported = _run(capsys, "export", "--model", folder, "--recipe", root / "r.yaml", "--format", "packed",
                    "--out", tmp_path / "w.petz")
    assert exported[metric] is None and (tmp_path / "w.petz").stat().st_size == exported["size_bytes"]
    code = main(["export", "--model", str(folder), "--recipe", str(root / "r.yaml"), "--format", "onnx",
                 "--out", str(tmp_path / "w.onnx")])
    assert code == 2 and "packed or state_dict" in capsys.readouterr().err


def test_onnx_input_is_refused_in_one_line(tmp_path, capsys):
    import torch

    from pet_core.export.onnx_export import export_onnx

    export_onnx(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), (1, 8, 8), tmp_path / "m.onnx")
    (tmp_path / "m.bin").write_bytes((tmp_path / "m.onnx").read_bytes())      # recognised by content too
    for name in ("m.onnx", "m.bin"):
        assert main(["analyze", "--model", str(tmp_path / name), "--dataset", "digits"]) == 2
        err = capsys.readouterr().err
        assert "is ONNX, which is an export format here" in err and err.count("\n") == 1


def test_torchscript_resnet_with_bias_free_convs_loads_with_trust_and_compresses(folders, tmp_path, capsys):
    import torch
    from torch import nn

    class Block(nn.Module):                     # a ResNet basic block: convs without bias, then BatchNorm
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(8)
            self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            h = torch.relu(self.bn(self.stem(x)))
            return self.fc((h + self.conv(h)).mean((2, 3)))

    torch.manual_seed(0)
    path = tmp_path / "resnet.ts.pt"
    torch.jit.save(torch.jit.trace(Block().eval(), torch.zeros(1, 1, 8, 8)), str(path))
    root, _ = folders
    args = ["evaluate", "--model", path, "--dataset", "digits", "--recipe", root / "r.yaml"]
    assert main([*map(str, args), "--json"]) == 2 and "trust" in capsys.readouterr().err
    report = _run(capsys, *args, "--trust-code")
    assert {r["name"] for r in report["layers"]} >= {"stem", "conv", "fc"}
    assert report["compressed"]["weight_sparsity"] > 0.45 and report["compressed"]["accuracy"] is not None
    packed = tmp_path / "resnet.petz"
    exported = _run(capsys, "export", "--model", path, "--dataset", "digits", "--recipe", root / "r.yaml",
                    "--format", "packed", "--out", packed, "--trust-code")
    assert exported["accuracy"] == report["compressed"]["accuracy"]
    assert main(["evaluate", "--model", str(packed), "--dataset", "digits", "--json"]) == 2
    assert "runs code when loaded" in capsys.readouterr().err
    back = _run(capsys, "evaluate", "--model", packed, "--dataset", "digits", "--trust-code")
    assert back["baseline"]["accuracy"] == report["compressed"]["accuracy"]


def test_a_weights_only_recipe_replays_and_reports_its_metric(folders, capsys, tmp_path):
    from pet_core.report import html_report

    root, models = folders
    folder, _ = models["gpt2"]
    recipe = tmp_path / "none.yaml"
    recipe.write_text(RECIPE + "dataset: none\n")                  # what a weights-only run's recipe says
    report = _run(capsys, "evaluate", "--model", folder, "--recipe", recipe)
    assert report["dataset"] is None and report["compressed"]["perplexity"] is None
    page = html_report(report, [], "cmd")
    assert "perplexity (lower is better)" in page and page.count("not measured") == 2
