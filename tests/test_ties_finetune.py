"""Fine-tuning starts from the very masks the workbench pruned, ties at the global cut included."""

import torch
from torch import nn

from pet_core.finetune.masking import post_training_masks
from pet_core.finetune.start import baseline_tensors, reference, results_of
from pet_core.recipe import Recipe
from pet_core.workbench import Workbench


def test_post_training_masks_equal_the_workbench_zeros_with_ties():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():                                   # weights on a coarse grid: many equal |w|
        for p in model.parameters():
            p.copy_((p * 20).round() / 20 + 0.01 * (p == 0))
    x, y = torch.randn(16, 1, 8, 8), torch.arange(16) % 10
    wb = Workbench(model, x, y)
    recipe = Recipe(default={"prune": {"sparsity": 0.5}})
    ref = reference(wb, recipe)
    masks = post_training_masks(baseline_tensors(ref), ref.specs, results_of(ref))
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert total - kept == round(0.5 * total)                # exactly k pruned, not every tie
    for name, mask in masks.items():
        assert torch.equal(mask, ref.layers[name].weight != 0), name
