"""Honest size accounting: the bytes of the encoding each tensor would actually be stored in.

Formulas (``n`` values, ``z`` of them non-zero, ``b`` bits per stored value, all in bits, each stored
tensor rounded up to whole bytes; see docs/size.md):

* dense:     ``n·b``
* bitmask:   ``n + z·b``                      (one presence bit per position, then the non-zeros)
* relative:  ``(z + f)·(p + b)``              (Deep Compression: each entry stores the gap to the
  previous entry in ``p`` bits and its value; a gap of ``g`` zeros needs ``⌊g / 2^p⌋`` filler zeros;
  ``p`` in 1..16 is chosen to minimise the total)
* plus overhead: quantisation scales (and offsets) as float32 per group; a k-means codebook as
  ``m`` float32 centroids with ``b = ⌈log2 m⌉``-bit indices.

The smallest of the three layouts is used and named. Every other parameter and buffer (biases,
BatchNorm, uncompressed layers) counts at its stored size, ``numel · element_size``.

``huffman_tensor_bytes`` gives the entropy-coded size of the same layout (``size_bytes_huffman``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pet_core.compose import StoredTensor

MAX_INDEX_BITS = 16


def filler_count(values: torch.Tensor, index_bits: int) -> int:
    """Filler zeros that relative indexing with ``index_bits``-bit gaps needs for ``values``.

    Example: positions 0 and 9 non-zero, 3-bit gaps: the 8 zeros between need one filler.
        >>> filler_count(torch.tensor([1.] + [0.] * 8 + [2.]), 3)
        1
    """
    gaps = _gaps(values)
    return int(torch.div(gaps, 1 << index_bits, rounding_mode="floor").sum())


def _gaps(values: torch.Tensor) -> torch.Tensor:
    """Zeros before each non-zero, in row-major order (trailing zeros need no entry)."""
    pos = torch.nonzero(values.flatten()).flatten()                       # (z,)
    if pos.numel() == 0:
        return pos
    prev = torch.cat([pos.new_tensor([-1]), pos[:-1]])
    return pos - prev - 1


def relative_bits(values: torch.Tensor, value_bits: int) -> tuple[int, int]:
    """Best relative-index layout: (total bits, index bits p)."""
    gaps = _gaps(values)
    z = gaps.numel()
    best = None
    for p in range(1, MAX_INDEX_BITS + 1):
        fillers = int(torch.div(gaps, 1 << p, rounding_mode="floor").sum())
        bits = (z + fillers) * (p + value_bits)
        if best is None or bits < best[0]:
            best = (bits, p)
    return best


@dataclass
class TensorSize:
    name: str
    params: int
    nonzero: int
    value_bits: int
    value_format: str
    encoding: str        # "dense", "bitmask" or "relative-<p>bit"
    size_bytes: int


def tensor_size(t: StoredTensor) -> TensorSize:
    """Bytes of one stored tensor in the smallest of the dense, bitmask and relative layouts."""
    n = t.values.numel()
    z = int(torch.count_nonzero(t.values))
    b = t.value_bits
    options = {"dense": n * b}
    if z < n:
        options["bitmask"] = n + z * b
        rel_bits, p = relative_bits(t.values, b)
        options[f"relative-{p}bit"] = rel_bits
    encoding = min(options, key=options.get)
    size_bytes = (options[encoding] + t.overhead_bits + 7) // 8
    return TensorSize(t.name, n, z, b, t.value_format, encoding, size_bytes)


def huffman_tensor_bytes(t: StoredTensor, encoding: str | None = None) -> int:
    """Bytes of one stored tensor in the packed format with entropy coding (``save_packed(huffman=True)``).

    Same layout as :func:`tensor_size`; the value codes and the relative-index gaps are each
    Huffman-coded (code-length table included) where that is smaller than their fixed width, as in
    Deep Compression's last stage. Includes the zero-flag bits the packed format needs when the
    zero code is also a real value (see ``pet_core.packed.streams``). float32 values are not coded.
    ``encoding``: :func:`tensor_size`'s choice when the caller has it (saves recomputing it).
    """
    if t.value_bits > 16:
        return tensor_size(t).size_bytes
    from pet_core.packed.streams import build_streams    # the packed format imports this module
    from pet_core.packed.tensor_blob import blob_bytes
    return blob_bytes(build_streams(t, encoding or tensor_size(t).encoding), huffman=True)


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

    def as_dict(self) -> dict:
        return dict(name=self.name, type=self.type, params=self.params, nonzero=self.nonzero, bits=self.bits,
                    encoding=self.encoding, size_bytes=self.size_bytes, weight_bytes=self.weight_bytes,
                    other_bytes=self.other_bytes, rank=self.rank,
                    tensors=[vars(t) for t in self.tensors])


def layer_size(name: str, type_: str, weight_params: int, stored: list[StoredTensor],
               others: list[torch.Tensor], rank: int | None = None) -> LayerSize:
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
                     weight_bytes, other_bytes, rank, sizes)


def plain_size(name: str, type_: str, tensors: list[torch.Tensor]) -> LayerSize:
    """Size row of a module that is not compressed: every tensor at its stored size."""
    size = sum(stored_bytes(t) for t in tensors)
    bits = max((t.element_size() * 8 for t in tensors), default=0)
    return LayerSize(name, type_, sum(t.numel() for t in tensors),
                     sum(int(torch.count_nonzero(t)) for t in tensors), bits, "stored", size, 0, size)


def model_bytes(model: torch.nn.Module) -> int:
    """Every parameter and buffer of a model at its stored size: the dense baseline."""
    return sum(stored_bytes(t) for t in model.parameters()) + sum(stored_bytes(t) for t in model.buffers())
