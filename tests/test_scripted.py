"""TorchScript models with bias-free layers (ResNet-style convs): found, compressed and evaluated
like the same model in eager mode (a traced module has no ``bias`` attribute when it was None)."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from pet_core.recipe import Recipe
from pet_core.workbench import Workbench

RECIPES = {
    "magnitude_int4": {"prune": {"sparsity": 0.5}, "quantize": {"bits": 4}},
    "l1_channel": {"prune": {"method": "l1_channel", "sparsity": 0.25}},
    "nm_share": {"prune": {"method": "nm", "n": 2, "m": 4}, "share": {"clusters": 8}},
}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 4, bias=False)).eval()


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_scripted_bias_free_layers_compress_like_eager(recipe):
    eager = _model()
    x, y = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(32) % 4
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.trace(_model(), x[:1]), buffer)         # a traced file, as users save them
    buffer.seek(0)
    scripted = torch.jit.load(buffer)
    assert not hasattr(getattr(scripted, "0"), "bias")               # tracing drops bias=None
    a, b = Workbench(eager, x, y), Workbench(scripted, x, y)
    assert a.names == b.names == ["0", "4", "6"]
    for wb in (a, b):
        wb.apply(Recipe(default=RECIPES[recipe]))
    for name in a.names:
        assert torch.equal(a.layers[name].weight, b.layers[name].weight), name
    assert torch.equal(a.model(x), b.model(x))
    assert b.report()["compressed"]["size_bytes"] == a.report()["compressed"]["size_bytes"]
    assert b.evaluate() == a.evaluate()
