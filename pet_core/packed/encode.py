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
from pet_core.layers import storage_key
from pet_core.packed.arch import save_identity
from pet_core.size import model_bytes

if TYPE_CHECKING:                                     # the workbench imports the packed format
    from pet_core.workbench import Workbench



def _raw(tensor: torch.Tensor) -> tuple[bytes, str]:
    dtype = str(tensor.dtype).removeprefix("torch.")
    if dtype not in RAW_DTYPES:
        raise PetError(f"packed export: dtype {dtype} is not supported")
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes(), dtype


def _layer_parts(wb: Workbench, layer: str, weight: torch.Tensor, huffman: bool, blobs: list[bytes]) -> dict:
    """Encode one compressed layer's stored tensors, append their blobs, check they rebuild ``weight``
    (the canonical (out, in, ...) layout)."""
    result = wb.result(layer)
    parts, decoded = [], []
    for t in wb.coded_tensors(layer):
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
    identity, program = save_identity(model_info, wb.model)
    entries, blobs = [], []
    if program is not None:
        identity = dict(identity, blob=0, program_bytes=len(program))
        blobs.append(program)
    targets = {t.state_key: t for t in wb.layers.values()}
    first: dict[tuple, str] = {}            # storage -> the first state key holding it (tied tensors)
    with torch.no_grad():
        for key, tensor in wb.model.state_dict(keep_vars=True).items():
            owner = first.setdefault(storage_key(tensor), key)
            if owner != key:
                entries.append(dict(name=key, tied=owner, shape=list(tensor.shape)))
            elif key in targets:
                t = targets[key]
                entry = _layer_parts(wb, t.name, t.weight, huffman, blobs)
                entries.append(dict(entry, name=key, shape=list(tensor.shape), **({"swapped": True} if t.swapped else {})))
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
                program_bytes=0 if program is None else len(program),
                size_bytes=size_bytes, size_bytes_huffman=size_huffman, escape_bits=escape,
                baseline_bytes=base, compression_ratio=base / sizes["file_bytes"], huffman=huffman)
