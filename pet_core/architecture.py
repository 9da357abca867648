"""The architecture table: one row per leaf layer with output shape, parameters and MACs (torchinfo)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pet_core.layers import module_type


def summary_rows(model: nn.Module, input_shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """torchinfo's summary as rows ``{layer, type, output_shape, params, macs}`` (MACs of Linear/Conv).

    Falls back to a table of modules without shapes and MACs when torchinfo cannot trace the
    model (some TorchScript modules), and says so in ``type``.
    """
    try:
        from torchinfo import summary

        stats = summary(model, input_size=(1, *input_shape), verbose=0, depth=6,
                        col_names=("output_size", "num_params", "mult_adds"), device="cpu")
        qualified = {id(m): n for n, m in model.named_modules()}
        rows = [{"layer": qualified.get(id(info.module), info.var_name), "type": info.class_name,
                 "output_shape": str(list(info.output_size)), "params": int(info.num_params),
                 "macs": layer_macs(info.module, info.output_size)}
                for info in stats.summary_list if info.is_leaf_layer]
        return rows
    except Exception as exc:  # torchinfo traces arbitrary models; any failure falls back to a plain table
        note = f"(no shapes: {type(exc).__name__})"
        return [{"layer": n, "type": f"{module_type(m)} {note}", "output_shape": "", "macs": 0,
                 "params": sum(p.numel() for p in m.parameters(recurse=False))}
                for n, m in model.named_modules() if n and not list(m.children())]


def layer_macs(module: nn.Module, output_size: list[int]) -> int:
    """Multiply-accumulates per image of a Linear or Conv layer (weights only, biases are adds); 0 otherwise."""
    out = list(output_size)[1:]                       # drop the batch dimension
    if isinstance(module, nn.Linear):
        positions = 1
        for d in out[:-1]:
            positions *= d
        return positions * module.in_features * module.out_features
    if isinstance(module, nn.modules.conv._ConvNd):
        per_output = (module.in_channels // module.groups) * int(torch.tensor(module.kernel_size).prod())
        return int(torch.tensor(out).prod()) * per_output
    return 0


def total_macs(rows: list[dict[str, Any]]) -> int:
    return sum(r["macs"] for r in rows)


@torch.inference_mode()
def example_input(input_shape: tuple[int, ...]) -> torch.Tensor:
    return torch.zeros(1, *input_shape)
