"""One stored tensor as one blob: float32 overhead bytes, then all its streams in one bit string.

Streams are concatenated bit to bit (no byte alignment between them), so a tensor costs
``overhead bytes + ceil(stream bits / 8)``: the size accounting's ``ceil((bits + overhead) / 8)``
exactly, as long as no flag bits are needed (see :mod:`pet_core.packed.streams`).

With ``huffman=True`` the value stream (codes of at most 16 bits) and the index streams the layout
allows (relative gaps) are each Huffman-coded when that is smaller than their fixed width; the
manifest records which were.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from pet_core.encoding import CORE_LAYOUTS, Layout, StoredTensor, choose_layout, gaps_of, nonzero_positions
from pet_core.errors import PetError
from pet_core.methods import METHODS
from pet_core.methods.base import PruneMethod
from pet_core.packed.bits import BitReader, bits_to_bytes, bytes_to_bits, to_bit_array
from pet_core.packed.huffman import MAX_WIDTH, decode_stream, encode_stream, huffman_bits, huffman_bits_of_counts
from pet_core.packed.streams import (Streams, _symbols, build_streams, decode_values, flag_count, overhead_bytes,
                                     zero_entries)
from pet_core.size import tensor_size


@functools.cache
def packed_layouts() -> dict[str, Layout]:
    """Every layout a packed file may name: the core ones and those the prune methods add (the
    registry does not change while the process runs, so this is built once)."""
    out = {layout.name: layout for layout in CORE_LAYOUTS}
    for method in METHODS.values():
        if isinstance(method, PruneMethod):
            out.update({layout.name: layout for layout in method.packed_layouts()})
    return out


def huffman_streams(layout: Layout) -> tuple[str, ...]:
    """The streams of ``layout`` that may be Huffman-coded: the values and its listed index streams."""
    return ("values", *layout.huffman)


def _coded(name: str, symbols: np.ndarray, width: int, huffman: tuple[str, ...]) -> tuple[bool, int]:
    """(use Huffman, bits) for one stream: Huffman only where allowed and strictly smaller."""
    fixed = symbols.size * width
    if name in huffman and width <= MAX_WIDTH and symbols.size:
        coded = huffman_bits(symbols, width)
        if coded < fixed:
            return True, coded
    return False, fixed


def tensor_streams(t: StoredTensor) -> Streams:
    """``t``'s streams in the layout the size accounting chose for it."""
    return build_streams(t, choose_layout(t)[0])


def blob_bytes(s: Streams, huffman: bool) -> int:
    """Bytes :func:`encode_tensor` would write, computed without building the bit string."""
    allowed = huffman_streams(packed_layouts()[s.meta["layout"]]) if huffman else ()
    bits = sum(_coded(name, sym, width, allowed)[1] for name, sym, width in s.streams)
    return len(s.overhead) + (bits + 7) // 8


def huffman_tensor_bytes(t: StoredTensor, encoding: str | None = None) -> int:
    """Bytes of one stored tensor in the packed format with entropy coding (``save_packed(huffman=True)``).

    Same layout as the size accounting; the value codes and the index streams a layout allows
    (relative gaps) are each Huffman-coded (code-length table included) where that is smaller
    than their fixed width, as in Deep Compression's last stage. Includes the flag bits the packed
    format needs when the zero code is also a real value. float32 values are not coded.
    ``encoding``: the accounting's layout label when the caller has it (saves choosing it again).

    The core layouts are counted from histograms of the codes and gaps (no stream is built);
    a layout a prune method adds (N:M) builds its streams.
    """
    if t.value_bits > 16:
        return tensor_size(t).size_bytes
    pos = nonzero_positions(t.values)                                       # (z,)
    label = encoding or choose_layout(t, pos)[0]
    name = label.split("-")[0]
    if name not in ("dense", "bitmask", "relative"):
        return blob_bytes(build_streams(t, label), huffman=True)
    _, sym, overhead, _ = _symbols(t)
    if len(overhead) * 8 != t.overhead_bits:
        raise PetError(f"tensor {t.name}: {len(overhead) * 8} overhead bits, the accounting has {t.overhead_bits}")
    b, n = t.value_bits, t.values.numel()
    real = np.bincount(sym[pos], minlength=1 << b)                           # codes of the non-zeros
    if name == "dense":         # every position an entry; zeros take the zero code, any real one may be it
        bits = _values_bits(real, real, n - pos.size, b)
    elif name == "bitmask":     # n presence bits, then the non-zeros only
        bits = n + _coded_bits(real, int(pos.size), b, True)
    else:                       # (z + f) gaps of p bits; a filler (gap 2^p - 1) stands for a zero
        p = int(label[len("relative-"):-len("bit")])
        top = (1 << p) - 1
        gaps = gaps_of(pos)
        fillers = int((gaps >> p).sum())
        gaps &= top
        gap_freqs = np.bincount(gaps, minlength=1 << p)
        gap_freqs[top] += fillers
        context = np.bincount(sym[pos[gaps == top]], minlength=1 << b)     # real entries in zero slots
        bits = _coded_bits(gap_freqs, int(pos.size) + fillers, p, True) + _values_bits(real, context, fillers, b)
    return len(overhead) + (bits + 7) // 8


def _coded_bits(freqs: np.ndarray, size: int, width: int, allowed: bool) -> int:
    """``_coded``'s bits for a stream of ``size`` symbols with these counts."""
    fixed = size * width
    if allowed and width <= MAX_WIDTH and size:
        return min(fixed, huffman_bits_of_counts(freqs, width))
    return fixed


def _values_bits(real: np.ndarray, context: np.ndarray, zeros: int, b: int) -> int:
    """Bits of a value stream with ``real`` code counts and ``zeros`` zero entries, plus its flags:
    the zero code is the one least used by the real entries that stand where a zero may
    (``context``); each entry carrying it there gets a flag bit when some real one uses it."""
    if not zeros:
        return _coded_bits(real, int(real.sum()), b, True)
    zero = int(np.argmin(context))
    freqs = real.copy()
    freqs[zero] += zeros
    flags = zeros + int(context[zero]) if context[zero] else 0
    return _coded_bits(freqs, int(freqs.sum()), b, True) + flags


def encode_tensor(t: StoredTensor, huffman: bool = False) -> tuple[bytes, dict]:
    """(blob, manifest entry) for one stored tensor."""
    s = tensor_streams(t)
    codable = huffman_streams(packed_layouts()[s.meta["layout"]])
    allowed = codable if huffman else ()
    parts, used = [], {}
    for name, sym, width in s.streams:
        use, _ = _coded(name, sym, width, allowed)
        used[name] = use
        parts.append(encode_stream(sym, width) if use else to_bit_array(sym, width))
    bits = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    meta = dict(s.meta, huffman={k: v for k, v in used.items() if k in codable},
                escape_bits=sum(sym.size for name, sym, _ in s.streams if name == "flags"))
    return s.overhead + bits_to_bytes(bits), meta


def _read(reader: BitReader, meta: dict, name: str, width: int, count: int) -> np.ndarray:
    if meta["huffman"].get(name):
        return decode_stream(reader, width, count)
    return reader.fixed(width, count).astype(np.int64)


def decode_tensor(blob: bytes, meta: dict) -> torch.Tensor:
    """The float32 values of a tensor written by :func:`encode_tensor` (``meta`` checked by the manifest)."""
    cut = overhead_bytes(meta)
    if len(blob) < cut:
        raise PetError(f"tensor {meta['name']}: blob shorter than its scales/codebook")
    overhead, reader = blob[:cut], BitReader(bytes_to_bits(blob[cut:]))
    n = int(np.prod(meta["shape"], dtype=np.int64))
    layout = packed_layouts()[meta["layout"]]
    index = layout.read(meta, lambda name, width, count: _read(reader, meta, name, width, count), n)
    values = _read(reader, meta, "values", meta["value_bits"], index.entry_pos.size)
    flags = reader.fixed(1, flag_count(meta, values, index.zero_slots))
    real = ~zero_entries(meta, values, index.zero_slots, flags)
    if not 0 <= reader.bits.size - reader.pos < 8:
        raise PetError(f"tensor {meta['name']}: blob length does not match its streams")
    return decode_values(meta, overhead, values[real], index.entry_pos[real])
