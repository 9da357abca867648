"""N:M semi-structured sparsity: masks against a brute-force oracle, the issue's lenet_300_100 check
through the CLI, the accounting against a formula written out here, and a bit-exact packed file."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pet_core.errors import PetError
from pet_core.loader import load_baseline, open_workbench
from pet_core.methods import METHODS
from pet_core.methods.nm import NMConfig, nm_mask
from pet_core.packed import load_packed, packed_model_info, save_packed
from pet_core.packed.container import Container
from pet_core.packed.decode import model_from_container
from pet_core.recipe import Recipe

ROOT = Path(__file__).resolve().parents[1]
NM24 = {"prune": {"method": "nm", "n": 2, "m": 4}}


def oracle_mask(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Group by group in plain Python: the n largest |w| of each m consecutive values of a row (lower index on ties)."""
    rows = w.reshape(w.shape[0], -1).tolist() if w.dim() > 1 else [w.tolist()]
    keep = []
    for row in rows:
        out = [False] * len(row)
        for start in range(0, len(row), m):
            group = list(range(start, min(start + m, len(row))))
            for i in sorted(group, key=lambda i: (-abs(row[i]), i))[:n]:
                out[i] = True
        keep.append(out)
    return torch.tensor(keep).reshape(w.shape)


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8), (1, 2), (3, 3), (2, 5)])
@pytest.mark.parametrize("shape", [(12, 40), (6, 3, 3, 3), (5, 7), (9,)])
def test_mask_matches_the_group_by_group_oracle(n, m, shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(n * 31 + m))
    w[0] = w[0].round()                      # ties: several equal |w| in a row
    assert torch.equal(nm_mask(w, n, m), oracle_mask(w, n, m))


def test_config_rules():
    assert NMConfig(n=2, m=4) == METHODS["nm"].make_config(n=2, m=4)
    for bad in (dict(n=5, m=4), dict(n=0, m=4), dict(n=2, m=1), dict(n=2, m=17)):
        with pytest.raises(PetError):
            NMConfig(**bad)
    with pytest.raises(PetError, match="sparsity"):
        Recipe.from_dict({"pet_recipe": 1, "default": {"prune": {"method": "nm", "sparsity": 0.5}}})


def _cli(*args: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "pet_core", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_steps_lists_nm():
    out = _cli("steps", "--json")
    assert any(m["name"] == "nm" and m["step"] == "prune" for m in out["methods"])
    assert {("nm", "n"), ("nm", "m")} <= {(r["method"], r["field"]) for r in out["fields"]}


def test_evaluate_nm_2_4_on_lenet_300_100_is_exactly_half_with_two_of_every_four(tmp_path):
    recipe = tmp_path / "nm.yaml"
    recipe.write_text("pet_recipe: 1\nmodel: lenet_300_100\ndataset: digits\n"
                      "default:\n  prune: {method: nm, n: 2, m: 4}\n")
    out = _cli("evaluate", "--recipe", str(recipe), "--json", "--no-record")
    assert out["compressed"]["weight_sparsity"] == 0.5
    assert all(t["encoding"] == "nm-2:4" for r in out["layers"] if r["name"].startswith("fc") for t in r["tensors"])
    wb = open_workbench(load_baseline("lenet_300_100", "digits"))
    wb.apply(Recipe.from_dict(json.loads(json.dumps(out["recipe"]))))
    for name, layer in wb.layers.items():
        groups = (layer.weight != 0).reshape(layer.weight.shape[0], -1, 4).sum(-1)   # (out, in / 4)
        assert torch.equal(groups, torch.full_like(groups, 2)), name


@pytest.fixture(scope="module")
def lenet():
    return load_baseline("lenet_300_100", "digits")


@pytest.mark.parametrize("coding, value_bits", [({}, 32), ({"quantize": {"bits": 8}}, 8)])
def test_accounting_is_the_hardware_format(lenet, coding, value_bits):
    """Bytes = ceil((groups·N·(value bits + log2 M) + overhead) / 8) per weight, written out here."""
    wb = open_workbench(lenet)
    wb.apply(Recipe(default={**NM24, **coding}))
    rows = {r["name"]: r for r in wb.report()["layers"]}
    for name, layer in wb.layers.items():
        out, fan_in = layer.weight.shape
        groups = out * math.ceil(fan_in / 4)
        overhead = 32 * out if coding else 0                    # one float32 scale per output channel
        expected = math.ceil((groups * 2 * (value_bits + 2) + overhead) / 8)
        assert rows[name]["weight_bytes"] == expected, name
        assert rows[name]["encoding"].startswith("nm-2:4")


@pytest.mark.parametrize("coding", [{}, {"quantize": {"bits": 4}}, {"share": {"clusters": 16}}])
def test_packed_export_loads_back_bit_exactly(lenet, tmp_path, coding):
    wb = open_workbench(lenet)
    wb.apply(Recipe(default={**NM24, **coding}))
    out = save_packed(wb, tmp_path / "nm.petz", model_info=packed_model_info(lenet))
    model, info = load_packed(tmp_path / "nm.petz")
    for key, want in wb.model.state_dict().items():
        assert torch.equal(model.state_dict()[key], want), key
    assert info["recipe"]["default"]["prune"] == NM24["prune"]
    assert out["file_bytes"] - out["header_bytes"] <= out["accounted_bytes"] + (out["escape_bits"] + 7) // 8


def test_a_damaged_nm_manifest_is_refused(lenet, tmp_path):
    wb = open_workbench(lenet)
    wb.apply(Recipe(default=NM24))
    save_packed(wb, tmp_path / "nm.petz", model_info=packed_model_info(lenet))
    for key, value in (("m", 99), ("n", 7), ("m", "4"), ("n", 0)):
        box = Container(tmp_path / "nm.petz")
        part = next(e for e in box.manifest["tensors"] if "parts" in e)["parts"][0]
        assert part["layout"] == "nm"
        part[key] = value
        with pytest.raises(PetError, match=f"manifest: .*\\.{key}"):
            model_from_container(box)


def test_fine_tuning_keeps_the_pattern(lenet):
    """Masks stay fixed while training, and the final recipe re-applies nm (the layout survives)."""
    from pet_core.finetune import finetune

    wb = open_workbench(lenet)
    recipe = Recipe(default={**NM24, "quantize": {"bits": 8}},
                    finetune={"steps": 5, "batch_size": 64, "techniques": {"qat": {}}})
    wb.apply(recipe)
    result = finetune(wb, recipe, lenet.dataset)
    for name, layer in result.workbench.layers.items():
        groups = (layer.weight != 0).reshape(layer.weight.shape[0], -1, 4).sum(-1)
        assert int(groups.max()) <= 2, name
    encodings = {t["encoding"] for r in result.workbench.report()["layers"] for t in r["tensors"]}
    assert any(e.startswith("nm-2:4") for e in encodings), encodings


def test_gradual_pruning_refuses_nm_in_one_line(lenet):
    from pet_core.finetune import finetune

    wb = open_workbench(lenet)
    recipe = Recipe(default=NM24, finetune={"steps": 2, "techniques": {"gradual": {}}})
    wb.apply(recipe)
    with pytest.raises(PetError, match="nm pruning"):
        finetune(wb, recipe, lenet.dataset)


def test_conv_groups_run_along_the_flattened_input():
    conv = nn.Conv2d(3, 4, 3)
    mask = nm_mask(conv.weight.detach(), 2, 4)
    flat = mask.reshape(4, -1)                                   # (out, in·kh·kw) = (4, 27)
    assert [int(flat[:, s:s + 4].sum(1).max()) for s in range(0, 27, 4)] == [2] * 7
    assert flat.sum(1).tolist() == [14] * 4                      # 6 full groups keep 2, the last 3 keep 2
