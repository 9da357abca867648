"""One stored tensor as one blob: float32 overhead bytes, then all its streams in one bit string.

Streams are concatenated bit to bit (no byte alignment between them), so a tensor costs
``overhead bytes + ceil(stream bits / 8)``: the size accounting's ``ceil((bits + overhead) / 8)``
exactly, as long as no flag bits are needed (see :mod:`pet_core.packed.streams`).

With ``huffman=True`` the value stream (codes of at most 16 bits) and the gap stream are each
Huffman-coded when that is smaller than their fixed width; the manifest records which were.
"""

from __future__ import annotations

import numpy as np
import torch

from pet_core.compose import StoredTensor
from pet_core.errors import PetError
from pet_core.packed.bits import BitReader, bits_to_bytes, bytes_to_bits, to_bit_array
from pet_core.packed.huffman import MAX_WIDTH, decode_stream, encode_stream, huffman_bits
from pet_core.packed.streams import Streams, build_streams, decode_values, flag_count, zero_entries
from pet_core.size import tensor_size

HUFFMAN_STREAMS = ("values", "gaps")


def _coded(name: str, symbols: np.ndarray, width: int, huffman: bool) -> tuple[bool, int]:
    """(use Huffman, bits) for one stream: Huffman only where it is strictly smaller."""
    fixed = symbols.size * width
    if huffman and name in HUFFMAN_STREAMS and width <= MAX_WIDTH and symbols.size:
        coded = huffman_bits(symbols, width)
        if coded < fixed:
            return True, coded
    return False, fixed


def tensor_streams(t: StoredTensor) -> Streams:
    """``t``'s streams in the layout the size accounting chose for it."""
    return build_streams(t, tensor_size(t).encoding)


def blob_bytes(s: Streams, huffman: bool) -> int:
    """Bytes :func:`encode_tensor` would write, computed without building the bit string."""
    bits = sum(_coded(name, sym, width, huffman)[1] for name, sym, width in s.streams)
    return len(s.overhead) + (bits + 7) // 8


def encode_tensor(t: StoredTensor, huffman: bool = False) -> tuple[bytes, dict]:
    """(blob, manifest entry) for one stored tensor."""
    s = tensor_streams(t)
    parts, used = [], {}
    for name, sym, width in s.streams:
        use, _ = _coded(name, sym, width, huffman)
        used[name] = use
        parts.append(encode_stream(sym, width) if use else to_bit_array(sym, width))
    bits = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    meta = dict(s.meta, huffman={k: v for k, v in used.items() if k in HUFFMAN_STREAMS},
                escape_bits=sum(sym.size for name, sym, _ in s.streams if name == "flags"))
    return s.overhead + bits_to_bytes(bits), meta


def _overhead_bytes(meta: dict) -> int:
    if meta["kind"] == "shared":
        return 4 * meta["codebook"]
    return 4 * meta["groups"] * (2 if meta["kind"] == "asymmetric" else 1)


def _read(reader: BitReader, meta: dict, name: str, width: int, count: int) -> np.ndarray:
    if meta["huffman"].get(name):
        return decode_stream(reader, width, count)
    return reader.fixed(width, count).astype(np.int64)


def decode_tensor(blob: bytes, meta: dict) -> torch.Tensor:
    """The float32 values of a tensor written by :func:`encode_tensor`."""
    cut = _overhead_bytes(meta)
    if len(blob) < cut:
        raise PetError(f"tensor {meta['name']}: blob shorter than its scales/codebook")
    overhead, reader = blob[:cut], BitReader(bytes_to_bits(blob[cut:]))
    n = int(np.prod(meta["shape"], dtype=np.int64))
    b, layout = meta["value_bits"], meta["layout"]
    if layout == "bitmask":
        mask = reader.fixed(1, n).astype(bool)
        positions = np.flatnonzero(mask)
        symbols = _read(reader, meta, "values", b, positions.size)
    else:
        gaps = None
        if layout == "relative":
            gaps = _read(reader, meta, "gaps", meta["index_bits"], meta["entries"])
        values = _read(reader, meta, "values", b, n if gaps is None else meta["entries"])
        flags = reader.fixed(1, flag_count(meta, values, gaps))
        real = ~zero_entries(meta, values, gaps, flags)
        at = np.arange(n) if gaps is None else np.cumsum(gaps + 1) - 1           # position of each entry
        positions, symbols = at[real], values[real]
    if not 0 <= reader.bits.size - reader.pos < 8:
        raise PetError(f"tensor {meta['name']}: blob length does not match its streams")
    return decode_values(meta, overhead, symbols, positions)
