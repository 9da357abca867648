"""``save_packed``: write a workbench's compressed model as small as its size accounting says.

Each compressed weight is written in the layout the accounting chose (one blob per stored
tensor, two for low-rank factors); every other parameter and buffer is written raw at its dtype.
Before anything is written, every blob is decoded again and the rebuilt weight compared with
the working model's (``torch.equal``), so a file that would not load bit-equal is never produced.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pet_core.errors import PetError
from pet_core.packed.container import write_container
from pet_core.packed.decode import rebuild_weight
from pet_core.packed.manifest import RAW_DTYPES
from pet_core.packed.tensor_blob import decode_tensor, encode_tensor
from pet_core.pretrained import ZOO_VERSION
from pet_core.size import model_bytes
from pet_core.zoo import build_model, list_models

if TYPE_CHECKING:                                     # the workbench imports the packed format
    from pet_core.workbench import Workbench



def packed_model_info(baseline) -> dict:
    """The ``model_info`` of a :class:`pet_core.loader.Baseline` (zoo name or zoo-architecture file)."""
    return dict(arch=baseline.arch, input_shape=list(baseline.dataset.input_shape),
                num_classes=int(baseline.dataset.num_classes), dataset=baseline.dataset.name)


def _identity(model_info: dict, model: torch.nn.Module) -> dict:
    """The manifest's model identity; PetError unless ``model`` is the zoo architecture named."""
    arch = model_info.get("arch") or model_info.get("name")
    zoo = [m.name for m in list_models()]
    if arch not in zoo:
        raise PetError(f"packed export supports zoo architectures only ({', '.join(zoo)}); model {arch!r} is not "
                       f"one: save it as TorchScript or a state_dict instead")
    try:
        shape = [int(v) for v in model_info["input_shape"]]
        classes = int(model_info["num_classes"])
    except (KeyError, TypeError, ValueError):
        raise PetError("packed export: model_info needs input_shape (C, H, W) and num_classes") from None
    ref = build_model(arch, tuple(shape), classes).state_dict()
    got = model.state_dict()
    for key in set(ref) | set(got):
        if key not in ref or key not in got or ref[key].shape != got[key].shape:
            raise PetError(f"packed export: the model does not match zoo {arch} {shape} with {classes} classes "
                           f"(first difference at {key!r})")
    out = {k: v for k, v in model_info.items() if k not in ("arch", "name")}
    return dict(out, arch=arch, input_shape=shape, num_classes=classes, zoo_version=ZOO_VERSION)


def _raw(tensor: torch.Tensor) -> tuple[bytes, str]:
    dtype = str(tensor.dtype).removeprefix("torch.")
    if dtype not in RAW_DTYPES:
        raise PetError(f"packed export: dtype {dtype} is not supported")
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes(), dtype


def _layer_parts(wb: Workbench, layer: str, weight: torch.Tensor, huffman: bool, blobs: list[bytes]) -> dict:
    """Encode one compressed layer's stored tensors, append their blobs, check they rebuild ``weight``."""
    result = wb.result(layer)
    parts, decoded = [], []
    for t in wb.stored_tensors(layer):
        blob, meta = encode_tensor(t, huffman)
        decoded.append(decode_tensor(blob, meta))
        parts.append(dict(meta, blob=len(blobs)))
        blobs.append(blob)
    rebuilt = rebuild_weight(decoded, list(weight.shape))
    if not torch.equal(rebuilt, weight):
        raise PetError(f"packed export: layer {layer} does not rebuild bit-equal from its stored tensors")
    return dict(layer=layer, rank=None if result is None else result.rank, parts=parts)


def save_packed(wb: Workbench, path: str | Path, *, huffman: bool = False, model_info: dict) -> dict:
    """Write ``wb.model`` (the recipe applied) to ``path``; returns sizes and the accounting.

    Args:
        wb: the workbench; its working model is what gets stored.
        path: the output file (written atomically).
        huffman: Huffman-code value codes and relative-index gaps where that is smaller.
        model_info: ``{"arch": zoo name, "input_shape": (C, H, W), "num_classes": int, ...}``
            (see :func:`packed_model_info`); extra keys are kept in the manifest.

    Returns:
        ``{path, file_bytes, header_bytes, payload_bytes, accounted_bytes, size_bytes,
        size_bytes_huffman, escape_bits, baseline_bytes, compression_ratio, huffman}``;
        ``accounted_bytes`` is the accounting for this mode, ``file - header - accounted`` the
        difference (escape bits only, see :mod:`pet_core.packed.streams`).
    """
    identity = _identity(model_info, wb.model)
    weights = {f"{name}.weight": name for name in wb.layers}
    entries, blobs = [], []
    with torch.no_grad():
        for key, tensor in wb.model.state_dict().items():
            if key in weights:
                entry = _layer_parts(wb, weights[key], tensor, huffman, blobs)
                entries.append(dict(entry, name=key, shape=list(tensor.shape)))
            else:
                blob, dtype = _raw(tensor)
                entries.append(dict(name=key, raw=dtype, shape=list(tensor.shape), blob=len(blobs)))
                blobs.append(blob)
    manifest = dict(model=identity, recipe=None if wb.recipe is None else wb.recipe.to_dict(),
                    huffman=huffman, tensors=entries)
    sizes = write_container(path, manifest, blobs)
    size_bytes = sum(r.size_bytes for r in wb.sizes())
    size_huffman = wb.size_bytes_huffman()
    base = model_bytes(wb.baseline)
    escape = sum(p["escape_bits"] for e in entries for p in e.get("parts", []))
    return dict(path=str(path), **sizes, accounted_bytes=size_huffman if huffman else size_bytes,
                size_bytes=size_bytes, size_bytes_huffman=size_huffman, escape_bits=escape,
                baseline_bytes=base, compression_ratio=base / sizes["file_bytes"], huffman=huffman)
