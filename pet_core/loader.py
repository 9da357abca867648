"""From "a model and a dataset" as a user names them to a baseline and a workbench.

``model`` is a zoo name (trained on first use, then cached) or a model file (a state_dict/safetensors
for a zoo architecture, a packed file, or, only with ``trust_code``, TorchScript, torch.export or a
pickled module).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import nn

from pet_core.data import Dataset, load_dataset
from pet_core.errors import PetError
from pet_core.model_io import CODE_KINDS, load_model_file
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
    source: dict = field(default_factory=dict)   # load_baseline's arguments: model, dataset, data_dir, arch


RUN_PREFIX = "run:"   # "run:12": the model a run of the ledger produced (continue from a fine-tuned run)


def is_zoo_name(model: str) -> bool:
    return model in {m.name for m in list_models()}


def is_run_source(model: str) -> bool:
    return str(model).startswith(RUN_PREFIX)


def load_baseline(model: str, dataset: str, data_dir: str | None = None, *, arch: str | None = None,
                  trust_code: bool = False, progress: Callable[[dict], None] | None = None,
                  allow_pickle: bool | None = None) -> Baseline:
    """Load the dataset, then the zoo model (pretrained, cached) or the model file.

    ``trust_code`` lets a model file run its own code (pickle, TorchScript, torch.export);
    ``allow_pickle`` is its deprecated old name.
    """
    if allow_pickle is not None:
        warnings.warn("allow_pickle is deprecated; use trust_code", DeprecationWarning, stacklevel=2)
        trust_code = trust_code or allow_pickle
    if is_run_source(model):
        raise PetError(f"model {model[:40]!r} is a run: load it with pet_core.runs.load_source")
    source = {"model": model, "dataset": dataset, "data_dir": data_dir, "arch": arch}   # to rebuild it later
    ds = load_dataset(dataset, data_dir)
    if is_zoo_name(model):
        ds = adapt_dataset(ds, model)
        net, info = pretrained(model, ds, progress=progress)
        return Baseline(model, model, ds, net, {"kind": "zoo", **info}, source)
    if not Path(model).exists() and not any(sep in model for sep in "/\\.") :
        names = ", ".join(m.name for m in list_models())
        raise PetError(f"model {model!r} is neither a zoo model ({names}) nor an existing file")
    if arch is not None:
        model_info(arch)
        ds = adapt_dataset(ds, arch)
    net, info = load_model_file(model, ds.input_shape, ds.num_classes, arch=arch, trust_code=trust_code)
    if info["kind"] in CODE_KINDS:
        info = {**info, "trusted": True}   # whoever reloads it (a job's worker) must be given trust too
    if arch is None and info.get("arch"):
        adapted = adapt_dataset(ds, info["arch"])
        if adapted.input_shape != ds.input_shape:
            ds = adapted
    return Baseline(model, info.get("arch"), ds, net, info, source)


def open_workbench(baseline: Baseline) -> Workbench:
    """A workbench over the baseline, evaluating on the dataset's test split."""
    return Workbench(baseline.model, baseline.dataset.x_test, baseline.dataset.y_test)
