"""Canonical Huffman coding of small-alphabet symbol streams (Deep Compression's last stage).

Han et al. Huffman-code the k-means indices and the relative-index gaps: both are far from
uniform (small gaps and central clusters dominate), which saves another 20-30%.

Serialised stream (a bit string, see :mod:`pet_core.packed.bits`):

* table: ``k - 1`` in 16 bits, then for each used symbol in ascending order the symbol in
  ``width`` bits and its code length in 5 bits (``width <= 16``, so ``k <= 65536``);
* codes: each symbol's canonical codeword, most significant bit first.

Code lengths are limited to ``MAX_CODE_BITS`` (frequencies are halved until they fit), which
keeps the decoder's lookup table at ``2^16`` entries. A stream with one distinct symbol has a
0-bit code: the table alone says it all.
"""

from __future__ import annotations

import heapq

import numpy as np

from pet_core.errors import PetError
from pet_core.packed.bits import BitReader, bits_to_bytes, bytes_to_bits, from_bit_array, to_bit_array

MAX_CODE_BITS = 16
MAX_WIDTH = 16
COUNT_BITS = 16
LENGTH_BITS = 5


def _tree_depths(freqs: list[int]) -> list[int]:
    """Huffman code lengths for positive ``freqs`` (ties broken by index, so deterministic)."""
    k = len(freqs)
    if k == 1:
        return [0]
    heap = [(f, i) for i, f in enumerate(freqs)]
    heapq.heapify(heap)
    parent = [0] * (2 * k - 1)
    nxt = k
    while len(heap) > 1:
        f1, a = heapq.heappop(heap)
        f2, b = heapq.heappop(heap)
        parent[a] = parent[b] = nxt
        heapq.heappush(heap, (f1 + f2, nxt))
        nxt += 1
    depth = [0] * (2 * k - 1)
    for node in range(2 * k - 3, -1, -1):   # parents are created after their children
        depth[node] = depth[parent[node]] + 1
    return depth[:k]


def code_lengths(freqs: np.ndarray) -> np.ndarray:
    """Length-limited Huffman code lengths for the symbols with ``freqs > 0`` (0 for unused)."""
    freqs = np.asarray(freqs, dtype=np.int64)
    used = np.flatnonzero(freqs)
    f = freqs[used]
    while True:
        depths = np.array(_tree_depths(f.tolist()), dtype=np.int64)
        if depths.max(initial=0) <= MAX_CODE_BITS:
            break
        f = np.maximum(1, f >> 1)   # flatter frequencies give a shallower tree; ends at uniform
    out = np.zeros(freqs.size, dtype=np.int64)
    out[used] = depths
    return out


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codewords: symbols sorted by (length, symbol) get consecutive codes."""
    codes = np.zeros(lengths.size, dtype=np.int64)
    order = sorted(np.flatnonzero(lengths).tolist(), key=lambda s: (lengths[s], s))
    code, prev = 0, 0
    for s in order:
        code <<= int(lengths[s]) - prev
        prev = int(lengths[s])
        codes[s] = code
        code += 1
    return codes


def _check(symbols: np.ndarray, width: int) -> np.ndarray:
    if not 1 <= width <= MAX_WIDTH:
        raise PetError(f"Huffman symbols must be 1..{MAX_WIDTH} bits wide, got {width}")
    s = np.asarray(symbols).astype(np.int64, copy=False).reshape(-1)
    if s.size and (s.min() < 0 or s.max() >> width):
        raise PetError(f"Huffman symbols must lie in 0..{2 ** width - 1}")
    return s


def _table_bits(k: int, width: int) -> int:
    return COUNT_BITS + max(k, 1) * (width + LENGTH_BITS)


def huffman_bits(symbols: np.ndarray, width: int) -> int:
    """Exact size in bits of :func:`encode_stream` (table plus codes) for ``symbols``.

    >>> huffman_bits(np.array([0, 0, 0, 1, 2]), 2)    # table 16 + 3·(2+5), codes 3·1 + 2·2
    44
    """
    return huffman_bits_of_counts(np.bincount(_check(symbols, width), minlength=1 << width), width)


def huffman_bits_of_counts(freqs: np.ndarray, width: int) -> int:
    """:func:`huffman_bits` of a stream given only how often each symbol occurs (``freqs[s]``).

    >>> huffman_bits_of_counts(np.array([3, 1, 1, 0]), 2)
    44
    """
    freqs = np.asarray(freqs, dtype=np.int64)
    lengths = code_lengths(freqs)
    return _table_bits(int(np.count_nonzero(freqs)), width) + int(freqs @ lengths)


def _code_bit_array(s: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated codewords of the symbols ``s``, MSB first, as a 0/1 array."""
    codes = canonical_codes(lengths)
    ln, cw = lengths[s], codes[s]                                               # (n,) each
    starts = np.cumsum(ln) - ln
    out = np.zeros(int(ln.sum()), dtype=np.uint8)
    for j in range(int(ln.max(initial=0))):   # one pass per bit of the longest code
        sel = ln > j
        out[starts[sel] + j] = (cw[sel] >> (ln[sel] - 1 - j)) & 1
    return out


def encode_stream(symbols: np.ndarray, width: int) -> np.ndarray:
    """Table plus codes for ``symbols`` as one 0/1 bit array (see the module docstring)."""
    s = _check(symbols, width)
    freqs = np.bincount(s, minlength=1 << width)
    lengths = code_lengths(freqs)
    used = np.flatnonzero(freqs)
    if used.size == 0:                       # an empty stream still has a (dummy) one-entry table
        used = np.zeros(1, dtype=np.int64)
    table = np.concatenate([to_bit_array(used, width).reshape(-1, width),
                            to_bit_array(lengths[used], LENGTH_BITS).reshape(-1, LENGTH_BITS)], axis=1)
    head = to_bit_array(np.array([used.size - 1]), COUNT_BITS)
    return np.concatenate([head, table.reshape(-1), _code_bit_array(s, lengths)])


def decode_stream(reader: BitReader, width: int, count: int) -> np.ndarray:
    """Read one :func:`encode_stream` stream of ``count`` symbols from ``reader`` (int64 (count,))."""
    k = int(reader.fixed(COUNT_BITS, 1)[0]) + 1
    table = reader.take(k * (width + LENGTH_BITS)).reshape(k, width + LENGTH_BITS)
    syms = from_bit_array(table[:, :width].reshape(-1), width, k).astype(np.int64)
    lens = from_bit_array(table[:, width:].reshape(-1), LENGTH_BITS, k).astype(np.int64)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if k == 1:
        return np.full(count, syms[0], dtype=np.int64)
    if lens.min() < 1 or lens.max() > MAX_CODE_BITS or np.unique(syms).size != k:
        raise PetError("Huffman table is damaged")
    lengths = np.zeros(1 << width, dtype=np.int64)
    lengths[syms] = lens
    codes = canonical_codes(lengths)
    top = int(lens.max())
    # lookup table over every top-bit window: the symbol and length of the code it starts with
    sym_of = np.zeros(1 << top, dtype=np.int64)
    len_of = np.zeros(1 << top, dtype=np.uint8)
    for s, ln in zip(syms.tolist(), lens.tolist()):
        lo = int(codes[s]) << (top - ln)
        sym_of[lo:lo + (1 << (top - ln))] = s
        len_of[lo:lo + (1 << (top - ln))] = ln
    rest = reader.bits[reader.pos:reader.pos + count * top]                     # no code is longer than top
    padded = np.concatenate([rest, np.zeros(top, dtype=np.uint8)])
    window = np.zeros(rest.size, dtype=np.int32)                                # (bits,) top-bit window at each bit
    for j in range(top):
        window <<= 1
        window |= padded[j:j + rest.size]
    step = len_of[window].tobytes()     # one byte per bit; indexing bytes is as fast as a list, 8x smaller
    starts = [0] * count
    pos = 0
    try:
        for i in range(count):   # the only sequential part: each code starts where the last ended
            starts[i] = pos
            pos += step[pos]
    except IndexError:
        raise PetError("Huffman stream is truncated") from None
    if pos > rest.size or len_of[0] == 0:
        raise PetError("Huffman stream is truncated or damaged")
    reader.pos += pos
    return sym_of[window[starts]]


def huffman_encode(symbols: np.ndarray, width: int | None = None) -> tuple[dict[int, int], bytes]:
    """Canonical Huffman code of ``symbols``: ({symbol: code length}, codeword bytes).

    ``width`` (bits per symbol, default: the widest symbol) only matters for the stored table.

    >>> table, data = huffman_encode(np.array([0, 0, 0, 1, 2]))
    >>> table, len(data)
    ({0: 1, 1: 2, 2: 2}, 1)
    """
    s = np.asarray(symbols).astype(np.int64).reshape(-1)
    width = width or max(1, int(s.max(initial=0)).bit_length())
    freqs = np.bincount(_check(s, width), minlength=1 << width)
    lengths = code_lengths(freqs)
    table = {int(i): int(lengths[i]) for i in np.flatnonzero(freqs)}
    return table, bits_to_bytes(_code_bit_array(s, lengths))


def huffman_decode(table: dict[int, int], data: bytes, count: int) -> np.ndarray:
    """Inverse of :func:`huffman_encode`: the ``count`` symbols coded in ``data`` (int64 (count,))."""
    if len(table) <= 1:
        return np.full(count, next(iter(table), 0), dtype=np.int64)
    width = max(1, max(table).bit_length())
    syms = np.array(sorted(table), dtype=np.int64)
    lens = np.array([table[s] for s in syms.tolist()], dtype=np.int64)
    head = np.concatenate([to_bit_array(syms, width).reshape(-1, width),
                           to_bit_array(lens, LENGTH_BITS).reshape(-1, LENGTH_BITS)], axis=1).reshape(-1)
    count_bits = to_bit_array(np.array([syms.size - 1]), COUNT_BITS)
    return decode_stream(BitReader(np.concatenate([count_bits, head, bytes_to_bits(data)])), width, count)
