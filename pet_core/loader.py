"""From "a model and a dataset" as a user names them to a baseline and a workbench.

``model`` is a zoo name (trained on first use, then cached), a Hugging Face model folder
(:mod:`pet_core.hf`), or a model file (a state_dict/safetensors for a zoo architecture or, with
``trust_code``, for a ``module:factory`` architecture; a packed file; or, only with ``trust_code``,
TorchScript, torch.export or a pickled module).

The dataset is optional. Left out, a zoo model (name, or state_dict matched to the zoo) uses
"digits", because a zoo architecture is built for, and trained on, an input shape; anything else
is loaded **weights only**: ``Baseline.dataset`` is None and nothing is measured.

The model's task (``image_classification``, ``sequence_classification``, ``causal_lm``) decides how
the dataset is read and which metric counts (:mod:`pet_core.metrics`): an HF folder's comes from
its config, anything else is an image classifier unless ``task`` says otherwise.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import nn

from pet_core.data import Dataset, fit_image_model, load_dataset
from pet_core.errors import PetError
from pet_core.factory import is_factory_arch
from pet_core.hf import is_hf_folder, load_hf_folder
from pet_core.metrics import Metric, metric_for
from pet_core.model_io import CODE_KINDS, NeedsInputShape, check_forward, load_model_file
from pet_core.pretrained import pretrained
from pet_core.workbench import Workbench
from pet_core.zoo import adapt_dataset, list_models, model_info


@dataclass
class Baseline:
    """A loaded baseline model with the dataset shaped for it (None: weights only, nothing to measure)."""

    model_name: str            # zoo name, file or folder path, as given
    arch: str | None           # zoo architecture, when known
    dataset: Dataset | None
    model: nn.Module
    info: dict = field(default_factory=dict)     # "kind" (zoo, hf, state_dict, ...); an HF folder's "task", ...
    source: dict = field(default_factory=dict)   # load_baseline's arguments: model, dataset, data_dir, arch, task

    @property
    def task(self) -> str:
        """"image_classification", "sequence_classification" or "causal_lm"."""
        if self.dataset is not None:
            return self.dataset.task
        return self.info.get("task") or "image_classification"

    @property
    def metric(self) -> Metric:
        """How the task is measured: accuracy (higher is better) or perplexity (lower is better)."""
        return metric_for(self.task)

    @property
    def weights_only(self) -> bool:
        """True when there is no dataset: the model can be compressed and sized, not measured."""
        return self.dataset is None


RUN_PREFIX = "run:"   # "run:12": the model a run of the ledger produced (continue from a fine-tuned run)


def is_zoo_name(model: str) -> bool:
    return model in {m.name for m in list_models()}


def is_run_source(model: str) -> bool:
    return str(model).startswith(RUN_PREFIX)


def load_baseline(model: str, dataset: str | None = None, data_dir: str | None = None, *, arch: str | None = None,
                  task: str | None = None, trust_code: bool = False, progress: Callable[[dict], None] | None = None,
                  allow_pickle: bool | None = None) -> Baseline:
    """Load the dataset, then the zoo model (pretrained, cached), the HF folder or the model file.

    ``dataset`` None: weights only (see the module docstring). ``arch`` is a zoo architecture or,
    with ``trust_code``, ``"module:factory"``. ``task`` overrides the model's task (an HF folder's
    head, or a non-zoo file's inputs). ``trust_code`` lets a model file run its own code (pickle,
    TorchScript, torch.export, a factory); ``allow_pickle`` is its deprecated old name.

    >>> b = load_baseline("some/weights.safetensors", arch="mypkg.nets:build", trust_code=True)  # doctest: +SKIP
    >>> b.dataset is None, b.metric.name                                                          # doctest: +SKIP
    (True, 'accuracy')
    """
    if allow_pickle is not None:
        warnings.warn("allow_pickle is deprecated; use trust_code", DeprecationWarning, stacklevel=2)
        trust_code = trust_code or allow_pickle
    if is_run_source(model):
        raise PetError(f"model {model[:40]!r} is a run: load it with pet_core.runs.load_source")
    source = {"model": model, "dataset": dataset, "data_dir": data_dir, "arch": arch}   # to rebuild it later
    if task is not None:
        metric_for(task)                        # an unknown task fails here, in one line
        source["task"] = task
    if is_hf_folder(model) or (Path(model).is_dir() and (Path(model) / "config.json").is_file()):
        return _load_hf(model, dataset, data_dir, task, source)
    if _is_packed_hf(model):
        return _load_packed_hf(model, dataset, data_dir, task, source)
    if is_zoo_name(model):
        if task not in (None, "image_classification"):
            raise PetError(f"zoo model {model} is an image classifier, not a {task} model")
        ds = load_dataset(dataset or "digits", data_dir)
        ds = adapt_dataset(ds, model)
        net, info = pretrained(model, ds, progress=progress)
        return Baseline(model, model, ds, net, {"kind": "zoo", **info}, source)
    if not Path(model).exists() and not any(sep in model for sep in "/\\.") :
        names = ", ".join(m.name for m in list_models())
        raise PetError(f"model {model!r} is neither a zoo model ({names}) nor an existing file")
    if Path(model).is_dir():
        raise PetError(f"{model} is not a Hugging Face model folder: no config.json")
    file_task = task or "image_classification"
    if dataset is None and (arch is None or is_factory_arch(arch)):
        try:   # weights only: no dataset, no forward check
            net, info = load_model_file(model, None, None, arch=arch, trust_code=trust_code, task=file_task)
        except NeedsInputShape:
            dataset = "digits"          # a zoo state_dict: its architecture needs an input shape, as a zoo name does
        else:
            info = {**info, "task": file_task, **({"trusted": True} if info["kind"] in CODE_KINDS
                                                   or info.get("factory") else {})}
            return Baseline(model, info.get("arch"), None, net, info, source)
    ds = load_dataset(dataset or "digits", data_dir, task=task)
    if arch is not None and not is_factory_arch(arch):
        model_info(arch)
        ds = adapt_dataset(ds, arch)
    net, info = load_model_file(model, ds.input_shape, ds.num_classes, arch=arch, trust_code=trust_code,
                                task=ds.task)
    if info["kind"] in CODE_KINDS or info.get("factory"):
        info = {**info, "trusted": True}   # whoever reloads it (a job's worker) must be given trust too
    if arch is None and info.get("arch"):
        adapted = adapt_dataset(ds, info["arch"])
        if adapted.input_shape != ds.input_shape:
            ds = adapted
    return Baseline(model, info.get("arch"), ds, net, info, source)


def _is_packed_hf(model: str) -> bool:
    """A packed file whose architecture is a transformers model (its data is shaped like an HF folder's)."""
    from pet_core.packed.container import MAGIC, Container

    path = Path(model)
    try:
        with path.open("rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                return False
    except OSError:
        return False
    try:
        ident = Container(path).manifest.get("model")
    except PetError:
        return False            # a broken packed file: the file loader says what is wrong with it
    return isinstance(ident, dict) and ident.get("source") == "hf"


def _load_packed_hf(model: str, dataset: str | None, data_dir: str | None, task: str | None,
                    source: dict) -> Baseline:
    """A packed transformers model: rebuilt from its stored config, then treated like its HF folder."""
    from pet_core.hf import hf_info
    from pet_core.packed import load_packed

    net, meta = load_packed(model)
    task = task or meta["model"].get("task") or "image_classification"
    info = {**hf_info(net, task, model), "kind": "packed", "model": meta["model"]}
    return _with_hf_data(model, net, info, dataset, data_dir, source, tokenizer_dir=None)


def _load_hf(model: str, dataset: str | None, data_dir: str | None, task: str | None, source: dict) -> Baseline:
    """An HF folder, and the dataset read for its task (tokens, or images sized for the model)."""
    net, info = load_hf_folder(model, task)
    return _with_hf_data(model, net, info, dataset, data_dir, source, tokenizer_dir=model)


def _with_hf_data(model: str, net: nn.Module, info: dict, dataset: str | None, data_dir: str | None,
                  source: dict, tokenizer_dir: str | None) -> Baseline:
    if dataset is None:
        return Baseline(model, None, None, net, info, source)
    task = info["task"]
    ds = load_dataset(dataset, data_dir, task=task, vocab_size=info.get("vocab_size"),
                      max_length=info.get("max_length"), tokenizer_dir=tokenizer_dir)
    name = Path(model).name
    if task == "image_classification":
        ds = fit_image_model(ds, info["image_size"], info["num_channels"], name)
    if ds.num_classes > info.get("num_classes", ds.num_classes):
        raise PetError(f"{ds.name} has labels up to {ds.num_classes - 1} but {name} has {info['num_classes']} "
                       f"classes")
    check_forward(net, ds.input_shape, info.get("num_classes"), name, task)
    return Baseline(model, None, ds, net, info, source)


def open_workbench(baseline: Baseline) -> Workbench:
    """A workbench over the baseline, evaluating on the dataset's test split (nothing when weights only)."""
    ds = baseline.dataset
    identity = None
    if ds is not None:      # equal model content on equal data: one shared evaluation engine and its values
        from pet_core.ledger import model_hash

        if "model_hash" not in baseline.info:        # cached where pet_core.runs.identity looks too
            baseline.info["model_hash"] = model_hash(baseline.model)
        identity = (baseline.info["model_hash"], ds.fingerprint)
    return Workbench(baseline.model, None if ds is None else ds.x_test, None if ds is None else ds.y_test,
                     task=baseline.task, identity=identity)
