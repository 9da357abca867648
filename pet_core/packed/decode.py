"""``load_packed``: rebuild the compressed model from a packed file, bit-equal to the one saved."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pet_core.compose import factor_product
from pet_core.errors import PetError
from pet_core.packed.container import Container
from pet_core.packed.tensor_blob import decode_tensor
from pet_core.zoo import build_model, list_models


def rebuild_weight(parts: list[torch.Tensor], shape: list[int]) -> torch.Tensor:
    """A layer's weight from its decoded stored tensors: the tensor itself, or first @ second.

    The product is compose.factor_product, which compress_layer uses: bit-equal on any machine.
    """
    if len(parts) == 1:
        return parts[0].reshape(shape)
    first, second = parts                                                       # (out, r), (r, in_flat)
    return factor_product(first, second).reshape(shape)


def _raw(blob: bytes, dtype: str, shape: list[int], name: str) -> torch.Tensor:
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise PetError(f"packed file: tensor {name} has unknown dtype {dtype!r}")
    flat = torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8)
    try:
        return flat.view(torch_dtype).reshape(shape).clone()
    except RuntimeError:
        raise PetError(f"packed file: tensor {name} has {len(blob)} bytes, not a {dtype} {shape}") from None


def load_packed(path: str | Path) -> tuple[nn.Module, dict]:
    """The model stored in ``path`` and its manifest facts.

    Returns:
        ``(model, info)``: the zoo model in eval mode with every parameter and buffer as saved;
        info = ``{model, recipe, huffman, version, file_bytes, header_bytes, payload_bytes}``.
    """
    box = Container(path)
    m = box.manifest
    ident = m["model"]
    arch = ident.get("arch")
    if arch not in {info.name for info in list_models()}:
        raise PetError(f"{box.name}: architecture {arch!r} is not in this PET Studio's model zoo")
    model = build_model(arch, tuple(ident["input_shape"]), ident["num_classes"])
    state = {}
    for entry in m["tensors"]:
        name = entry["name"]
        if "raw" in entry:
            state[name] = _raw(box.blob(entry["blob"], name), entry["raw"], entry["shape"], name)
            continue
        parts = [decode_tensor(box.blob(p["blob"], f"{name} ({p['name']})"), p) for p in entry["parts"]]
        state[name] = rebuild_weight(parts, entry["shape"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise PetError(f"{box.name}: tensors do not fit {arch} ({str(exc).splitlines()[0]})") from None
    info = dict(model=ident, recipe=m.get("recipe"), huffman=m.get("huffman"), version=m["version"],
                file_bytes=box.file_bytes, header_bytes=box.header_bytes, payload_bytes=m["payload_bytes"])
    return model.eval(), info
