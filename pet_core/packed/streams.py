"""One stored tensor as symbol streams in the layout the size accounting chose, and back.

Symbols are unsigned integers of ``b = value_bits`` bits:

* ``float32``: the IEEE bit pattern of each value (32 bits);
* ``symmetric``: the signed code shifted by ``2^(b-1)`` (1-bit codes ±1 become 0/1);
* ``asymmetric``: the code itself (levels ``offset + code·scale``);
* ``shared``: the index into the k-means codebook.

A layout (:mod:`pet_core.encoding`) gives the index streams and the entries; the streams are, in
this order, the layout's index streams, the entries' value symbols, then any flag bits:

* ``dense``: ``n`` value symbols;
* ``bitmask``: ``n`` presence bits, then the ``z`` non-zero value symbols;
* ``relative``: ``z + f`` gaps of ``p`` bits, then ``z + f`` value symbols. A gap of ``g`` zeros
  is preceded by ``g >> p`` filler entries (gap ``2^p - 1``, a zero), as in Deep Compression;
* a prune method's own layout (N:M: ``⌈log2 M⌉``-bit slots, ``N`` entries per group).

Zeros written into a stream (dense zeros, relative fillers, padding) use one *zero code*: the value
symbol least used by the real entries that could be confused with them (those in slots where a
zero may stand). Symmetric codes
(signed 0), float32 (+0.0) and codebooks with a spare index always have an unused one; for
asymmetric codes, 1-bit codes and full codebooks the zero code may also be a real value, and a
*flag* bit per ambiguous entry (1 = zero) tells them apart. Those flag bits are the only bits the
size accounting does not count (it assumes a free zero code); they are reported.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch

from pet_core.encoding import StoredTensor, layout_for, nonzero_positions
from pet_core.methods import METHODS
from pet_core.methods.base import CodeMethod
from pet_core.errors import PetError

FLOAT_BITS = 32


@dataclass
class Streams:
    """The symbol streams of one tensor, plus what a decoder must be told (the manifest part)."""

    meta: dict                                   # JSON-ready: kind, layout, widths, counts, zero code
    overhead: bytes                              # float32 scale (+ offset) or codebook
    streams: list[tuple[str, np.ndarray, int]] = field(default_factory=list)   # (name, symbols, width)


@functools.cache
def coding_methods() -> dict[str, CodeMethod]:
    """{manifest kind: the coding method that writes and reads it}, from the registry (built once)."""
    return {kind: m for m in METHODS.values() if isinstance(m, CodeMethod) for kind in m.packed_kinds}


def _symbols(t: StoredTensor) -> tuple[str, np.ndarray, bytes, dict]:
    """(kind, unsigned symbols (n,) int64 for every position, float32 overhead bytes, manifest fields)."""
    if t.values.dtype != torch.float32:
        raise PetError(f"tensor {t.name}: packed export stores float32 weights, got {t.values.dtype}")
    if t.coding is None:
        if t.value_bits != FLOAT_BITS:
            raise PetError(f"tensor {t.name}: float32 values must be stored at 32 bits, got {t.value_bits}")
        bits = t.values.detach().contiguous().reshape(-1).view(torch.int32).numpy()
        return "float32", bits.astype(np.int64) & 0xFFFFFFFF, b"", {}
    if t.codes is None:
        raise PetError(f"tensor {t.name}: {t.value_format} values carry no codes (re-apply the recipe)")
    return METHODS[t.coding].packed_symbols(t)


def overhead_bytes(meta: dict) -> int:
    """Bytes of float32 overhead (scales, codebook) before a tensor's streams (checked meta)."""
    kind = meta["kind"]
    return 0 if kind == "float32" else coding_methods()[kind].packed_overhead(kind, meta)


def _zero_code(context: np.ndarray, bits: int) -> tuple[int, bool]:
    """The zero code and whether flags are needed: the symbol least used among ``context``."""
    if bits > 16:            # float32 bit patterns: 0 is +0.0, never a non-zero value
        return 0, False
    counts = np.bincount(context, minlength=1 << bits)
    code = int(np.argmin(counts))
    return code, bool(counts[code] > 0)


def build_streams(t: StoredTensor, encoding: str) -> Streams:
    """The streams of ``t`` in ``encoding`` (a layout label: "dense", "bitmask", "relative-<p>bit", ...)."""
    kind, sym, overhead, coded = _symbols(t)
    if len(overhead) * 8 != t.overhead_bits:
        raise PetError(f"tensor {t.name}: {len(overhead) * 8} overhead bits, the accounting has {t.overhead_bits}")
    b = t.value_bits
    layout = layout_for(t, encoding)
    pos = nonzero_positions(t.values)                                           # (z,)
    index = layout.index(encoding, pos, tuple(t.values.shape))
    meta = dict(name=t.name, shape=list(t.values.shape), kind=kind, value_bits=b, nonzero=int(pos.size),
                **{"groups": 0, "codebook": 0, **coded}, layout=layout.name, zero_code=None, flags=False, **index.meta)
    values = np.zeros(index.entry_pos.size, dtype=np.int64)                     # (E,)
    values[index.real] = sym[pos]
    streams = [*index.streams, ("values", values, b)]
    is_zero = np.ones(values.size, dtype=bool)
    is_zero[index.real] = False
    if is_zero.any():
        context = values[index.real][index.zero_slots[index.real]]    # real entries a zero could be taken for
        zero, flagged = _zero_code(context, b)
        meta.update(zero_code=zero, flags=flagged)
        values[is_zero] = zero
        if flagged:
            streams.append(("flags", is_zero[_ambiguous(meta, values, index.zero_slots)].astype(np.int64), 1))
    return Streams(meta, overhead, streams)


def _ambiguous(meta: dict, values: np.ndarray, zero_slots: np.ndarray) -> np.ndarray:
    """Entries that carry the zero code where a zero may stand."""
    return (values == meta["zero_code"]) & zero_slots


def zero_entries(meta: dict, values: np.ndarray, zero_slots: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """Which entries of a decoded stream are zeros (fillers, padding or pruned positions)."""
    if meta["zero_code"] is None:
        return np.zeros(values.size, dtype=bool)
    ambiguous = _ambiguous(meta, values, zero_slots)
    if not meta["flags"]:
        return ambiguous                          # the zero code is used by no real entry there
    is_zero = np.zeros(values.size, dtype=bool)
    is_zero[np.flatnonzero(ambiguous)[flags.astype(bool)]] = True
    return is_zero


def flag_count(meta: dict, values: np.ndarray, zero_slots: np.ndarray) -> int:
    """How many flag bits follow the value stream."""
    return int(_ambiguous(meta, values, zero_slots).sum()) if meta["flags"] else 0


def decode_values(meta: dict, overhead: bytes, symbols: np.ndarray, positions: np.ndarray) -> torch.Tensor:
    """The float32 tensor with ``symbols`` decoded at flat ``positions`` and +0.0 elsewhere.

    The coding method's decoding repeats its coding operation for operation, so values are bit-equal.
    """
    shape = meta["shape"]
    n = int(np.prod(shape, dtype=np.int64))
    out = torch.zeros(n, dtype=torch.float32)
    if positions.size and (positions.min() < 0 or positions.max() >= n):
        raise PetError(f"tensor {meta['name']}: stored positions run past its {n} values")
    kind = meta["kind"]
    idx = torch.from_numpy(positions.astype(np.int64))
    if kind == "float32":
        out[idx] = torch.from_numpy(symbols.astype(np.uint32).view(np.int32).copy()).view(torch.float32)
        return out.reshape(shape)
    floats = torch.frombuffer(bytearray(overhead), dtype=torch.float32) if overhead else torch.zeros(0)
    out[idx] = coding_methods()[kind].packed_decode(kind, meta, floats, symbols, idx, n)
    return out.reshape(shape)
