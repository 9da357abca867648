"""Layers found by class, not only by exact name: nn.Linear subclasses such as MultiheadAttention's
``out_proj`` (NonDynamicallyQuantizableLinear) are compressed, and the attention still runs on them."""

from __future__ import annotations

import torch
from torch import nn

from pet_core.layers import compressible_layers, skipped_layers
from pet_core.recipe import Recipe
from pet_core.workbench import Workbench


class TinyAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:      # (b, t, 16) -> (b, 3)
        y, _ = self.attn(x, x, x, need_weights=False)
        return self.head(y.mean(1))


def test_linear_subclasses_are_compressed_and_the_model_sees_it():
    torch.manual_seed(0)
    model = TinyAttention().eval()
    assert type(model.attn.out_proj) is not nn.Linear and isinstance(model.attn.out_proj, nn.Linear)
    assert list(compressible_layers(model)) == ["attn.out_proj", "head"]
    assert "attn.out_proj" not in {r["name"] for r in skipped_layers(model)}
    x, y = torch.randn(8, 5, 16), torch.arange(8) % 3
    before = model(x)
    wb = Workbench(model, x, y)
    wb.apply(Recipe(default={"prune": {"sparsity": 0.5, "scope": "layer"}, "quantize": {"bits": 4}}))
    w = wb.layers["attn.out_proj"].weight
    assert int((w == 0).sum()) >= w.numel() // 2
    assert not torch.equal(wb.model(x), before)                  # the attention reads the compressed weight
    assert torch.equal(model(x), before)                         # the baseline is untouched
    assert any(r["name"] == "attn.out_proj" and r["encoding"] != "stored" for r in wb.report()["layers"])
