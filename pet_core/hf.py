"""Hugging Face model folders: a ``config.json`` plus weights, loaded without running anyone's code.

A folder is read only through classes that ``transformers`` itself defines: a config whose
``auto_map`` asks for code from the folder (or the Hub) is refused, ``trust_remote_code`` is always
False, nothing is downloaded (``local_files_only``), and ``pytorch_model.bin`` is unpickled with
``weights_only=True``. Each task of :data:`TASK_AUTO_CLASS` loads through its auto class; causal
LMs and sequence classifiers take int64 token ids (N, L), image classifiers float images (N, C, H, W).

``transformers`` is imported inside the functions: it takes seconds to import and the engine
must work without it.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

from torch import nn

from pet_core.bounded import check_tree, shown
from pet_core.errors import PetError
from pet_core.safetensors_header import check_safetensors_header

MAX_CONFIG_BYTES = 1 << 20     # a config.json is a few kB; 1 MiB leaves room for long label maps
WEIGHT_NAMES = ("pytorch_model.bin",)
TASK_AUTO_CLASS = {
    "causal_lm": "AutoModelForCausalLM",
    "sequence_classification": "AutoModelForSequenceClassification",
    "image_classification": "AutoModelForImageClassification",
}
TASK_MAPPING = {   # transformers' own lists of the model classes of each task (model_type -> class name)
    "causal_lm": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "sequence_classification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "image_classification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
}
HF_TASKS = tuple(TASK_AUTO_CLASS)


def is_hf_folder(path: str | Path) -> bool:
    """True for a directory holding ``config.json`` and ``*.safetensors`` or ``pytorch_model.bin``."""
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file() and bool(_weight_files(p))


def _weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors")) + [folder / n for n in WEIGHT_NAMES if (folder / n).is_file()]


def _transformers():
    try:
        import transformers
    except ImportError:
        raise PetError("transformers is not installed: pip install transformers") from None
    return transformers


def read_hf_config(path: str | Path) -> dict[str, Any]:
    """``config.json`` of the folder ``path`` as a dict: bounded, JSON only, no ``auto_map``.

    Raises:
        PetError: one line naming the folder (no such folder, no config.json, no weights, too large,
            not a JSON object, or remote code asked for).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise PetError(f"{folder} is not a Hugging Face model folder: no such directory")
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise PetError(f"{folder} is not a Hugging Face model folder: no config.json")
    if not _weight_files(folder):
        raise PetError(f"{folder} is not a Hugging Face model folder: no weights (*.safetensors or pytorch_model.bin)")
    size = cfg.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise PetError(f"{folder}: config.json is {size:,} bytes, more than the {MAX_CONFIG_BYTES:,} allowed")
    try:
        data = json.loads(cfg.read_bytes())
    except (UnicodeDecodeError, ValueError) as e:
        raise PetError(f"{folder}: config.json is not valid JSON ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise PetError(f"{folder}: config.json holds {type(data).__name__}, not a JSON object")
    check_tree(data, f"{folder.name}/config.json")
    if data.get("auto_map"):
        raise PetError(f"{folder} needs remote code (auto_map); refused")
    return data


def hf_task(config: dict[str, Any], task: str | None = None, where: str = "config") -> str:
    """The task of a config: ``task`` when given, else the one whose transformers classes list
    ``config["architectures"]``, else the first task that knows its ``model_type``.

    >>> hf_task({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    'causal_lm'
    """
    if task is not None:
        if task not in TASK_AUTO_CLASS:
            raise PetError(f"task {shown(task)} is not one of {', '.join(HF_TASKS)}")
        return task
    mappings = _task_mappings()
    archs = config.get("architectures") or []
    if not isinstance(archs, list):
        raise PetError(f"{where}: architectures = {shown(archs)} is not a list of class names")
    for arch in archs:
        for name, classes in mappings.items():
            if arch in classes:
                return name
    if archs:
        raise PetError(f"{where}: architecture {shown(archs[0])} is no {', '.join(HF_TASKS)} model; "
                       f"name the task (--task) to load it with that head")
    model_type = config.get("model_type")
    for name in HF_TASKS:
        if model_type in _transformers_names(TASK_MAPPING[name]):
            return name
    raise PetError(f"{where}: model_type {shown(model_type)} has no {', '.join(HF_TASKS)} class in transformers")


def _transformers_names(mapping: str) -> dict[str, Any]:
    _transformers()
    from transformers.models.auto import modeling_auto

    return getattr(modeling_auto, mapping)


def _task_mappings() -> dict[str, set[str]]:
    """task -> every class name transformers lists for it (a mapping value may be a tuple of names)."""
    out = {}
    for task, mapping in TASK_MAPPING.items():
        names: set[str] = set()
        for v in _transformers_names(mapping).values():
            names.update((v,) if isinstance(v, str) else v)
        out[task] = names
    return out


def _config_object(hf_config: dict[str, Any], where: str):
    """A transformers config object from plain data, for a ``model_type`` transformers defines."""
    _transformers()
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = hf_config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise PetError(f"{where}: model_type {shown(model_type)} is not one transformers defines")
    try:
        return CONFIG_MAPPING[model_type].from_dict(dict(hf_config))
    except Exception as e:
        raise PetError(f"{where}: config.json is not a valid {model_type} config: {_first_line(e)}") from None


def load_hf_folder(path: str | Path, task: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Load a Hugging Face model folder in eval mode, float32, on the CPU; returns (model, info).

    info = {"kind": "hf", "task", "hf_class", "hf_config" (JSON-safe dict), "path",
    and "vocab_size"/"max_length" (token tasks), "num_classes" (classifiers),
    "image_size"/"num_channels" (images)}.

    Raises:
        PetError: one line naming the folder.
    """
    folder = Path(path)
    data = read_hf_config(folder)
    try:
        _transformers()
    except PetError as e:
        raise PetError(f"{folder}: {e}") from None
    task = hf_task(data, task, where=str(folder))
    for w in _weight_files(folder):
        if w.suffix == ".safetensors":
            check_safetensors_header(w)
    transformers = _transformers()
    if data.get("model_type") not in _transformers_names(TASK_MAPPING[task]):
        raise PetError(f"{folder}: model_type {shown(data.get('model_type'))} has no {task} class in transformers")
    config = _config_object(data, str(folder))
    auto = getattr(transformers, TASK_AUTO_CLASS[task])
    kwargs: dict[str, Any] = dict(config=config, local_files_only=True, trust_remote_code=False,
                                  output_loading_info=True)
    if "weights_only" in inspect.signature(transformers.PreTrainedModel.from_pretrained).parameters:
        kwargs["weights_only"] = True        # older versions have no such argument and always pass it to torch.load
    if not list(folder.glob("*.safetensors")):
        kwargs["use_safetensors"] = False   # only pytorch_model.bin: read with torch.load(weights_only=True)
    try:
        model, loading = auto.from_pretrained(str(folder), **kwargs)
    except PetError:
        raise
    except Exception as e:
        if "weights only load failed" in str(e).lower():
            raise PetError(f"{folder}: pytorch_model.bin holds Python objects, not only weights; refused "
                           f"(only weights are unpickled)") from None
        raise PetError(f"{folder}: the Hugging Face model does not load: {_first_line(e)}") from None
    model = model.float().eval().cpu()
    info = hf_info(model, task, str(folder))
    missing = list(loading.get("missing_keys") or [])
    if missing:   # e.g. a classifier head for a task the folder was not saved for: random weights
        info["note"] = (f"{len(missing)} weights not in the folder were initialised at random: "
                        f"{', '.join(sorted(missing)[:3])}{', ...' if len(missing) > 3 else ''}")
    return model, info


def hf_info(model: nn.Module, task: str, path: str | None = None) -> dict[str, Any]:
    """The info dict of a transformers model: task, class, JSON-safe config and its input sizes."""
    config = model.config
    hf_config = json.loads(json.dumps(config.to_dict(), default=str))
    info: dict[str, Any] = {"kind": "hf", "task": task, "hf_class": type(model).__name__,
                            "hf_config": hf_config, "path": path}
    if task in ("causal_lm", "sequence_classification"):
        info["vocab_size"] = int(_text_config(config).vocab_size)
        limit = max_positions(config)
        if limit is not None:
            info["max_length"] = limit
    if task in ("sequence_classification", "image_classification"):
        info["num_classes"] = int(config.num_labels)
    if task == "image_classification":
        size = getattr(config, "image_size", 224)
        info["image_size"] = int(size[0] if isinstance(size, (list, tuple)) else size)
        info["num_channels"] = int(getattr(config, "num_channels", 3))
    return info


def _text_config(config):
    """The text part of a config (multimodal configs keep it under ``text_config``)."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def max_positions(config) -> int | None:
    """The longest input a text model takes (``n_positions`` / ``max_position_embeddings``), if it says."""
    text = _text_config(config)
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length"):
        value = getattr(text, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def model_from_hf_config(hf_class: str, hf_config: dict[str, Any]) -> nn.Module:
    """Rebuild a transformers model with random weights from its class name and config dict.

    Only classes that transformers lists for one of :data:`HF_TASKS` are built, and nothing is read
    from disk or run from a folder: this is how a packed file rebuilds an architecture before its
    weights are loaded.

    Raises:
        PetError: for a class transformers does not list, or a config it rejects.
    """
    if not isinstance(hf_config, dict):
        raise PetError(f"hf_config is {type(hf_config).__name__}, not a mapping")
    if hf_config.get("auto_map"):
        raise PetError(f"hf_config of {shown(hf_class)} needs remote code (auto_map); refused")
    if not any(hf_class in names for names in _task_mappings().values()):
        raise PetError(f"hf_class {shown(hf_class)} is not a {', '.join(HF_TASKS)} class of transformers")
    transformers = _transformers()
    cls = getattr(transformers, hf_class, None)
    if cls is None:
        raise PetError(f"hf_class {shown(hf_class)} is not defined by this transformers version")
    config = _config_object(hf_config, f"hf_config of {hf_class}")
    try:
        model = cls(config)
    except Exception as e:
        raise PetError(f"hf_class {hf_class} cannot be built from its config: {_first_line(e)}") from None
    return model.float().eval()


def load_hf_tokenizer(path: str | Path):
    """The tokenizer saved in a model folder (local files only, no remote code)."""
    transformers = _transformers()
    folder = Path(path)
    try:
        return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True,
                                                          trust_remote_code=False)
    except Exception as e:
        raise PetError(f"{folder}: no usable tokenizer to read a text dataset ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    """First line of an exception message without terminal colour codes, shortened."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


__all__ = ["HF_TASKS", "hf_info", "hf_task", "is_hf_folder", "load_hf_folder", "load_hf_tokenizer",
           "max_positions", "model_from_hf_config", "read_hf_config"]
