"""From "a model and a dataset" as a user names them to a baseline and a workbench.

``model`` is a zoo name (trained on first use, then cached) or a model file (TorchScript, a
state_dict/safetensors for a zoo architecture, or a pickled module with ``allow_pickle``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import nn

from pet_core.data import Dataset, load_dataset
from pet_core.errors import PetError
from pet_core.model_io import load_model_file
from pet_core.pretrained import pretrained
from pet_core.workbench import Workbench
from pet_core.zoo import adapt_dataset, list_models, model_info


@dataclass
class Baseline:
    """A loaded baseline model with the dataset shaped for it."""

    model_name: str            # zoo name or file path, as given
    arch: str | None           # zoo architecture, when known
    dataset: Dataset
    model: nn.Module
    info: dict = field(default_factory=dict)


def is_zoo_name(model: str) -> bool:
    return model in {m.name for m in list_models()}


def load_baseline(model: str, dataset: str, data_dir: str | None = None, *, arch: str | None = None,
                  allow_pickle: bool = False, progress: Callable[[dict], None] | None = None) -> Baseline:
    """Load the dataset, then the zoo model (pretrained, cached) or the model file."""
    ds = load_dataset(dataset, data_dir)
    if is_zoo_name(model):
        ds = adapt_dataset(ds, model)
        net, info = pretrained(model, ds, progress=progress)
        return Baseline(model, model, ds, net, {"kind": "zoo", **info})
    if not Path(model).exists() and not any(sep in model for sep in "/\\.") :
        names = ", ".join(m.name for m in list_models())
        raise PetError(f"model {model!r} is neither a zoo model ({names}) nor an existing file")
    if arch is not None:
        model_info(arch)
        ds = adapt_dataset(ds, arch)
    net, info = load_model_file(model, ds.input_shape, ds.num_classes, arch=arch, allow_pickle=allow_pickle)
    if arch is None and info.get("arch"):
        adapted = adapt_dataset(ds, info["arch"])
        if adapted.input_shape != ds.input_shape:
            ds = adapted
    return Baseline(model, info.get("arch"), ds, net, info)


def open_workbench(baseline: Baseline) -> Workbench:
    """A workbench over the baseline, evaluating on the dataset's test split."""
    return Workbench(baseline.model, baseline.dataset.x_test, baseline.dataset.y_test)
