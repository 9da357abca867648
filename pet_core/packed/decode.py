"""``load_packed``: rebuild the compressed model from a packed file, bit-equal to the one saved."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pet_core.bounded import cut
from pet_core.pipeline import factor_product
from pet_core.errors import PetError
from pet_core.packed.container import Container
from pet_core.packed.manifest import check_model
from pet_core.packed.tensor_blob import decode_tensor
from pet_core.recipe import Recipe

# What a checked manifest can still throw from deep inside numpy/torch: turned into one line at the
# boundary. The fuzz tests call model_from_container, which must never need this guard.
_UNEXPECTED = (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError, OverflowError,
               ZeroDivisionError, RecursionError, MemoryError, OSError)


def rebuild_weight(parts: list[torch.Tensor], shape: list[int]) -> torch.Tensor:
    """A layer's weight from its decoded stored tensors: the tensor itself, or first @ second.

    The product is compose.factor_product, which compress_layer uses: bit-equal on any machine.
    """
    if len(parts) == 1:
        return parts[0].reshape(shape)
    first, second = parts                                                       # (out, r), (r, in_flat)
    return factor_product(first, second).reshape(shape)


def _raw(blob: bytes, dtype: str, shape: list[int], name: str) -> torch.Tensor:
    torch_dtype = getattr(torch, dtype)                    # one of manifest.RAW_DTYPES, checked
    flat = torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8)
    try:
        return flat.view(torch_dtype).reshape(shape).clone()
    except RuntimeError:
        raise PetError(f"packed file: tensor {name} has {len(blob)} bytes, not a {dtype} {shape}") from None


def load_packed(path: str | Path, *, trust_code: bool = False) -> tuple[nn.Module, dict]:
    """The model stored in ``path`` and its manifest facts.

    ``trust_code`` allows a file whose architecture is code (a TorchScript program, a pickled
    module, a ``module:factory``): it runs when loaded.

    Returns:
        ``(model, info)``: the model in eval mode with every parameter and buffer as saved;
        info = ``{model, recipe, huffman, version, file_bytes, header_bytes, payload_bytes}``.
    """
    try:
        return model_from_container(Container(path), trust_code=trust_code)
    except PetError:
        raise
    except _UNEXPECTED as exc:
        raise PetError(f"{Path(path).name}: the packed file is malformed ({type(exc).__name__}: "
                       f"{cut(' '.join(str(exc).split()), 120)})") from None


def model_from_container(box: Container, *, trust_code: bool = False) -> tuple[nn.Module, dict]:
    """:func:`load_packed` on a read container; every bad manifest or blob is a PetError.

    The manifest is checked first (:func:`pet_core.packed.manifest.check_model`): nothing is
    allocated for a model, tensor or stream before its size is known to be within bounds.
    """
    m = box.manifest
    try:
        arch = check_model(m, box.blobs, lambda i: box.blob(i, "the architecture's program"), trust_code=trust_code)
        recipe = None if m.get("recipe") is None else Recipe.from_dict(m["recipe"]).to_dict()
    except PetError as exc:
        raise PetError(f"{box.name}: {exc}") from None
    ident = m["model"]
    state = {}
    for entry in m["tensors"]:
        name = entry["name"]
        if "tied" in entry:
            state[name] = state[entry["tied"]]
        elif "raw" in entry:
            state[name] = _raw(box.blob(entry["blob"], name), entry["raw"], entry["shape"], name)
        else:
            blobs = [box.blob(p["blob"], f"{name} ({p['name']})") for p in entry["parts"]]
            try:
                parts = [decode_tensor(blob, p) for blob, p in zip(blobs, entry["parts"])]
            except PetError as exc:
                raise PetError(f"{box.name}: {exc}") from None
            shape = list(entry["shape"])
            if entry.get("swapped"):          # stored in the canonical (out, in) layout: HF Conv1D, transposed convs
                canonical = [shape[1], shape[0], *shape[2:]]
                state[name] = rebuild_weight(parts, canonical).transpose(0, 1).contiguous()
            else:
                state[name] = rebuild_weight(parts, shape)
    model = arch.build()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise PetError(f"{box.name}: tensors do not fit {arch.label} ({str(exc).splitlines()[0]})") from None
    info = dict(model=ident, recipe=recipe, huffman=m.get("huffman"), version=m["version"],
                file_bytes=box.file_bytes, header_bytes=box.header_bytes, payload_bytes=m["payload_bytes"])
    return model.eval(), info
