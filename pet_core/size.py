"""Honest size accounting: the bytes of the encoding each tensor would actually be stored in.

Each stored tensor takes the smallest of its layouts (:mod:`pet_core.encoding`: dense, bitmask,
relative indices, and any layout its prune method adds, such as N:M), plus its overhead
(quantisation scales and offsets as float32 per group; a k-means codebook as ``m`` float32
centroids with ``⌈log2 m⌉``-bit indices), rounded up to whole bytes. The layout used is named.
Every other parameter and buffer (biases, BatchNorm, uncompressed layers) counts at its stored
size, ``numel · element_size``.

The entropy-coded size of the same layouts (``size_bytes_huffman``) is the packed format's
(:func:`pet_core.packed.tensor_blob.huffman_tensor_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pet_core.encoding import Positions, StoredTensor, choose_layout


@dataclass
class TensorSize:
    name: str
    params: int
    nonzero: int
    value_bits: int
    value_format: str
    encoding: str        # the layout's label: "dense", "bitmask", "relative-<p>bit", "nm-2:4" ...
    size_bytes: int


def tensor_size(t: StoredTensor) -> TensorSize:
    """Bytes of one stored tensor in the smallest of its layouts (one pass finds the non-zeros)."""
    pos = Positions(t.values)                                               # count and gap histogram
    encoding, bits = choose_layout(t, pos)
    return TensorSize(t.name, t.values.numel(), int(pos.size), t.value_bits, t.value_format, encoding,
                      (bits + t.overhead_bits + 7) // 8)


def stored_bytes(t: torch.Tensor) -> int:
    """Bytes of a tensor kept as it is."""
    return t.numel() * t.element_size()


@dataclass
class LayerSize:
    """One row of the size table; ``size_bytes`` covers every tensor the module owns."""

    name: str
    type: str
    params: int
    nonzero: int
    bits: int
    encoding: str
    size_bytes: int
    weight_bytes: int
    other_bytes: int
    rank: int | None = None
    tensors: list[TensorSize] = field(default_factory=list)
    tied: tuple[str, ...] = ()     # other modules using this very tensor (counted here, once)

    def as_dict(self) -> dict:
        return dict(name=self.name, type=self.type, params=self.params, nonzero=self.nonzero, bits=self.bits,
                    encoding=self.encoding, size_bytes=self.size_bytes, weight_bytes=self.weight_bytes,
                    other_bytes=self.other_bytes, rank=self.rank, tied=", ".join(self.tied),
                    tensors=[vars(t) for t in self.tensors])


def layer_size(name: str, type_: str, weight_params: int, stored: list[StoredTensor],
               others: list[torch.Tensor], rank: int | None = None, tied: tuple[str, ...] = ()) -> LayerSize:
    """Size row of a compressible layer: its stored weight tensors plus its other tensors as they are."""
    sizes = [tensor_size(t) for t in stored]
    other_bytes = sum(stored_bytes(o) for o in others)
    nonzero = sum(int(torch.count_nonzero(o)) for o in others) + sum(s.nonzero for s in sizes)
    encoding = "+".join(f"{s.encoding}/{s.value_format}" for s in sizes)
    if rank is not None:
        encoding = f"low_rank(r={rank}):{encoding}"
    weight_bytes = sum(s.size_bytes for s in sizes)
    return LayerSize(name, type_, weight_params + sum(o.numel() for o in others), nonzero,
                     max(s.value_bits for s in sizes), encoding, weight_bytes + other_bytes,
                     weight_bytes, other_bytes, rank, sizes, tuple(tied))


def plain_size(name: str, type_: str, tensors: list[torch.Tensor]) -> LayerSize:
    """Size row of a module that is not compressed: every tensor at its stored size."""
    size = sum(stored_bytes(t) for t in tensors)
    bits = max((t.element_size() * 8 for t in tensors), default=0)
    return LayerSize(name, type_, sum(t.numel() for t in tensors),
                     sum(int(torch.count_nonzero(t)) for t in tensors), bits, "stored", size, 0, size)


def model_bytes(model: torch.nn.Module) -> int:
    """Every parameter and buffer of a model at its stored size: the dense baseline."""
    return sum(stored_bytes(t) for t in model.parameters()) + sum(stored_bytes(t) for t in model.buffers())
