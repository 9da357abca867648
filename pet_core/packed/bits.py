"""Fixed-width bit packing: unsigned integers of any width 1..32, least significant bit first.

The packed format concatenates several streams of different widths (a bitmask, p-bit gaps,
b-bit codes, Huffman codes) into one bit string per tensor, so that a tensor costs exactly
``ceil(total bits / 8)`` bytes, as the size accounting says. Streams are therefore built as
*bit arrays* (one uint8 0/1 per bit) and packed to bytes once, at the end.

Bit ``k`` of value ``i`` is bit ``i·bits + k`` of the stream; stream bit ``j`` is bit ``j % 8``
of byte ``j // 8`` (LSB first, ``numpy.packbits(bitorder="little")``).
"""

from __future__ import annotations

import numpy as np

from pet_core.errors import PetError

MAX_BITS = 32


def _check_width(bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise PetError(f"bit width must be 1..{MAX_BITS}, got {bits}")


def to_bit_array(values: np.ndarray, bits: int) -> np.ndarray:
    """Bits of ``values`` (n,), ``bits`` per value, LSB first: a (n·bits,) uint8 array of 0/1.

    >>> to_bit_array(np.array([1, 6]), 3).tolist()
    [1, 0, 0, 0, 1, 1]
    """
    _check_width(bits)
    v = np.asarray(values).astype(np.uint64, copy=False).reshape(-1)          # (n,)
    if v.size and int(v.max()) >> bits:
        raise PetError(f"value {int(v.max())} does not fit {bits} bits")
    out = np.empty((v.size, bits), dtype=np.uint8)                             # (n, bits)
    for k in range(bits):   # one vectorised pass per bit: n·bits bytes of memory, never n·bits·8
        out[:, k] = (v >> np.uint64(k)) & np.uint64(1)
    return out.reshape(-1)


def from_bit_array(bit_array: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`to_bit_array`: the first ``count`` values as uint64 (count,)."""
    _check_width(bits)
    need = count * bits
    if bit_array.size < need:
        raise PetError(f"bit stream too short: {count} values of {bits} bits need {need} bits, have {bit_array.size}")
    b = bit_array[:need].reshape(count, bits)                                  # (count, bits)
    out = np.zeros(count, dtype=np.uint64)
    for k in range(bits):
        out |= b[:, k].astype(np.uint64) << np.uint64(k)
    return out


def bits_to_bytes(bit_array: np.ndarray) -> bytes:
    """Pack a 0/1 array into bytes (LSB first); the last byte is zero-padded."""
    return np.packbits(bit_array.astype(np.uint8, copy=False), bitorder="little").tobytes()


def bytes_to_bits(data: bytes) -> np.ndarray:
    """All bits of ``data`` as a (8·len,) uint8 0/1 array, LSB first."""
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack unsigned ``values`` at ``bits`` bits each into ``ceil(n·bits / 8)`` bytes.

    >>> pack_bits(np.array([1, 2, 3]), 2).hex()
    '39'
    """
    return bits_to_bytes(to_bit_array(values, bits))


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    """The ``count`` values of width ``bits`` packed in ``data``, as uint64 (count,).

    >>> unpack_bits(bytes.fromhex("39"), 2, 3).tolist()
    [1, 2, 3]
    """
    return from_bit_array(bytes_to_bits(data), bits, count)


class BitReader:
    """Reads consecutive streams out of one bit array."""

    def __init__(self, bit_array: np.ndarray) -> None:
        self.bits = bit_array
        self.pos = 0

    def fixed(self, width: int, count: int) -> np.ndarray:
        """The next ``count`` values of ``width`` bits."""
        out = from_bit_array(self.bits[self.pos:], width, count) if count else np.zeros(0, np.uint64)
        self.pos += width * count
        return out

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` raw bits."""
        if self.pos + n > self.bits.size:
            raise PetError(f"bit stream too short: need {n} more bits, have {self.bits.size - self.pos}")
        out = self.bits[self.pos:self.pos + n]
        self.pos += n
        return out
