"""What rebuilds a packed model's architecture before its tensors are loaded into it.

The manifest's ``model`` names one source:

* ``zoo`` (also every file without ``source``): a zoo name, input shape and class count;
* ``hf``: a ``transformers`` class name and its config (built by :func:`pet_core.hf.model_from_hf_config`:
  only classes transformers defines, never remote code);
* ``factory``: ``"module:function"``, importable code on the server (imported only with trust);
* ``program``: the user's TorchScript program or pickled module, stored in the file with every
  tensor zeroed (so it compresses to almost nothing); it runs code when loaded, so only with trust.

A file is checked against its architecture's tensor shapes before any tensor is decoded; zoo and
Hugging Face architectures are built on the ``meta`` device for that (nothing allocated).
"""

from __future__ import annotations

import copy
import io
import math
import zlib
from typing import Any, Callable

import torch
from torch import nn

from pet_core.bounded import inflate, shown
from pet_core.errors import PetError
from pet_core.pretrained import ZOO_VERSION
from pet_core.zoo import build_model, list_models

SOURCES = ("zoo", "hf", "factory", "program")
PROGRAM_KINDS = ("torchscript", "pickle")
MAX_HF_LAYERS = 512            # a config asking for more layers is refused before anything is built
MAX_PROGRAM_BYTES = 1 << 28    # an inflated program (tensors zeroed) larger than this is refused


def packed_model_info(baseline) -> dict:
    """The ``model_info`` for :func:`pet_core.packed.save_packed` of a loaded baseline: what rebuilds its
    architecture, plus the data facts (input shape, classes, task) where known."""
    info = baseline.info or {}
    ds = baseline.dataset
    facts = {} if ds is None else dict(input_shape=list(ds.input_shape), dataset=ds.name,
                                       **({"num_classes": int(ds.num_classes)} if ds.num_classes else {}))
    task = getattr(baseline, "task", None)
    if task:
        facts["task"] = task
    if info.get("kind") == "packed" and isinstance(info.get("model"), dict):
        return {**info["model"], **facts}              # a packed file exported again: the same source
    if baseline.arch in {m.name for m in list_models()}:
        return dict(facts, source="zoo", arch=baseline.arch)
    if info.get("kind") == "hf":
        return dict(facts, source="hf", hf_class=info["hf_class"], hf_config=info["hf_config"])
    if info.get("factory"):
        return dict(facts, source="factory", factory=info["factory"])
    if info.get("kind") in PROGRAM_KINDS:
        return dict(facts, source="program", program=info["kind"])
    raise PetError(f"packed export: nothing rebuilds this model's architecture (a {info.get('kind', 'model')} "
                   f"file); load it as a zoo model, a Hugging Face folder, a state_dict with --arch "
                   f"module:factory, or TorchScript")


def _zeroed(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            t.zero_()
    return model


def program_blob(model: nn.Module, kind: str) -> bytes:
    """The model's code with every tensor zeroed, zlib-compressed: what rebuilds a ``program`` source."""
    buf = io.BytesIO()
    if kind == "torchscript":
        torch.jit.save(model, buf)
        buf.seek(0)
        clone = _zeroed(torch.jit.load(buf, map_location="cpu"))
        buf = io.BytesIO()
        torch.jit.save(clone, buf)
    else:
        torch.save(_zeroed(copy.deepcopy(model)), buf)
    return zlib.compress(buf.getvalue(), 9)


def save_identity(model_info: dict, model: nn.Module) -> tuple[dict, bytes | None]:
    """(the manifest's ``model`` entry, the program blob or None) for saving ``model``."""
    source = model_info.get("source") or "zoo"
    if source not in SOURCES:
        raise PetError(f"packed export: model source {shown(source)} is not one of {', '.join(SOURCES)}")
    ident = dict(model_info, source=source)
    if source == "zoo":
        ident = _zoo_identity(ident, model)
    elif source == "program":
        if ident.get("program") not in PROGRAM_KINDS:
            raise PetError(f"packed export: program kind {shown(ident.get('program'))} is not one of "
                           f"{', '.join(PROGRAM_KINDS)}")
        return ident, program_blob(model, ident["program"])
    return ident, None


def _zoo_identity(ident: dict, model: nn.Module) -> dict:
    arch = ident.get("arch") or ident.get("name")
    zoo = [m.name for m in list_models()]
    if arch not in zoo:
        raise PetError(f"packed export: {shown(arch)} is not a zoo architecture ({', '.join(zoo)})")
    try:
        shape = [int(v) for v in ident["input_shape"]]
        classes = int(ident["num_classes"])
    except (KeyError, TypeError, ValueError):
        raise PetError("packed export: model_info needs input_shape (C, H, W) and num_classes") from None
    ref = build_model(arch, tuple(shape), classes).state_dict()
    got = model.state_dict()
    for key in set(ref) | set(got):
        if key not in ref or key not in got or ref[key].shape != got[key].shape:
            raise PetError(f"packed export: the model does not match zoo {arch} {shape} with {classes} classes "
                           f"(first difference at {key!r})")
    out = {k: v for k, v in ident.items() if k != "name"}
    return dict(out, arch=arch, input_shape=shape, num_classes=classes, zoo_version=ZOO_VERSION)


class Architecture:
    """A checked manifest identity: its tensor shapes (before decoding) and the model to load into."""

    def __init__(self, ident: dict, shapes: dict[str, tuple[int, ...]], build: Callable[[], nn.Module],
                 label: str) -> None:
        self.ident, self.shapes, self.build, self.label = ident, shapes, build, label


def _state_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def open_architecture(ident: Any, program: Callable[[int], bytes], *, trust_code: bool,
                      check_shape: Callable[[Any, str], tuple]) -> Architecture:
    """Check ``ident`` (the manifest's ``model``) and open its architecture.

    ``program(i)`` returns blob ``i`` (for a program source); ``check_shape(ident, where)`` checks and
    returns a zoo input shape and class count. Code-carrying sources need ``trust_code``.
    """
    if not isinstance(ident, dict):
        raise PetError(f"manifest: model must be a mapping, got {shown(ident)}")
    source = ident.get("source", "zoo")
    if source not in SOURCES:
        raise PetError(f"manifest: model.source = {shown(source)} is not one of {', '.join(SOURCES)}")
    if source == "zoo":
        arch = ident.get("arch")
        if not isinstance(arch, str) or arch not in {m.name for m in list_models()}:
            raise PetError(f"manifest: model.arch = {shown(arch)} is not a zoo model")
        shape, classes = check_shape(ident, "model")
        with torch.device("meta"):
            shapes = _state_shapes(build_model(arch, shape, classes))
        return Architecture(ident, shapes, lambda: build_model(arch, shape, classes), arch)
    if source == "hf":
        from pet_core.hf import model_from_hf_config

        cls, config = ident.get("hf_class"), ident.get("hf_config")
        if not isinstance(cls, str) or not isinstance(config, dict):
            raise PetError("manifest: model.hf_class must be text and model.hf_config a mapping")
        for key, value in config.items():
            if "layer" in key and type(value) is int and not 0 <= value <= MAX_HF_LAYERS:
                raise PetError(f"manifest: model.hf_config.{shown(key)} = {value} is out of range")
        with torch.device("meta"):
            shapes = _state_shapes(model_from_hf_config(cls, config))
        return Architecture(ident, shapes, lambda: model_from_hf_config(cls, config), cls)
    if not trust_code:
        what = "names importable code" if source == "factory" else f"carries a {ident.get('program')} program"
        raise PetError(f"the packed file {what}, which runs code when loaded; refused (start with "
                       f"--trust-code / PET_TRUST_CODE=1 to allow)")
    if source == "factory":
        from pet_core.factory import build_from_factory

        spec = ident.get("factory")
        classes = ident.get("num_classes")
        model = build_from_factory(spec, trust_code=True, num_classes=classes if type(classes) is int else None)
        return Architecture(ident, _state_shapes(model), lambda: model, str(spec))
    kind = ident.get("program")
    if kind not in PROGRAM_KINDS or type(ident.get("blob")) is not int:
        raise PetError(f"manifest: model.program = {shown(kind)} (with a blob) is not one of {', '.join(PROGRAM_KINDS)}")
    data = io.BytesIO(inflate(program(ident["blob"]), MAX_PROGRAM_BYTES, "the packed file's program"))
    try:
        model = (torch.jit.load(data, map_location="cpu") if kind == "torchscript"
                 else torch.load(data, map_location="cpu", weights_only=False))
    except Exception as exc:
        raise PetError(f"the packed file's {kind} program does not load: {str(exc).splitlines()[0][:120]}") from None
    if not isinstance(model, nn.Module):
        raise PetError(f"the packed file's {kind} program holds {type(model).__name__}, not a model")
    return Architecture(ident, _state_shapes(model), lambda: model, kind)


def total_values(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes.values())
