"""How a compressed tensor is stored: its values and codes (``StoredTensor``) and the layouts that
place its non-zeros, with their exact bit counts. Size accounting and the packed format both use
this module (neither imports the other).

A layout turns the positions of a tensor's non-zero values into index streams and a list of
*entries*, one value symbol each. Formulas (``n`` positions, ``z`` non-zero, ``b`` bits per value):

* dense:     ``n·b``                    every position is an entry;
* bitmask:   ``n + z·b``                one presence bit per position, then the non-zeros;
* relative:  ``(z + f)·(p + b)``        Deep Compression: each entry stores the gap to the previous
  one in ``p`` bits; a gap of ``g`` zeros needs ``⌊g / 2^p⌋`` filler entries (``p`` in 1..16,
  chosen to minimise the total).

A prune method may add layouts its pattern makes possible (N:M sparsity: ``N`` entries per group
of ``M`` with ``⌈log2 M⌉``-bit slot indices). Entries that stand for a zero (dense zeros, fillers,
padding) carry a *zero code*; see ``pet_core.packed.streams``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from pet_core.errors import PetError

MAX_INDEX_BITS = 16


@dataclass
class StoredTensor:
    """One tensor as it would be stored: its values and what its encoding needs."""

    name: str                      # "weight", or "weight.first" / "weight.second" when factored
    values: torch.Tensor           # effective values (dequantised, pruned positions exactly 0)
    value_bits: int                # bits per stored value: 32, quantisation bits, or index bits
    overhead_bits: int = 0         # scales, offsets, codebooks
    value_format: str = "float32"  # "float32", "int4", "shared16" ...
    pruned: bool = False           # a pruning mask was applied (zeros are structural)
    # What the packed format stores (None where they do not apply): the int32 codes, values' shape,
    # as the coding method returned them, and the float32 scale/offset (groups,) or codebook (m,).
    codes: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    offset: torch.Tensor | None = None
    codebook: torch.Tensor | None = None
    layouts: tuple = ()            # extra layouts the prune method's pattern allows (besides the core ones)
    coding: str | None = None      # the coding method that made ``codes`` (None: float32 values)


@dataclass
class Index:
    """Where a layout's entries stand: its index streams and each entry's position."""

    streams: list[tuple[str, np.ndarray, int]]   # (name, symbols, width), written before the values
    entry_pos: np.ndarray                        # (E,) the flat position each entry stands for
    zero_slots: np.ndarray                       # (E,) bool: entries where a zero may stand
    real: np.ndarray | None = None               # (z,) entry of each non-zero value (encoding only)
    meta: dict = field(default_factory=dict)     # what the decoder must be told (manifest fields)


# A decoder's stream reader: (stream name, width in bits, count) -> symbols (count,) int64.
Reader = Callable[[str, int, int], np.ndarray]


class Layout:
    """A way to place non-zeros. ``name`` is the manifest's ``layout``; labels may add parameters."""

    name: str
    huffman: tuple[str, ...] = ()          # index streams that may be Huffman-coded

    def options(self, pos: np.ndarray, shape: tuple[int, ...], b: int) -> dict[str, int]:
        """{label: bits of index and value streams} for a tensor of ``shape`` with non-zeros at flat
        positions ``pos``; empty when the layout does not apply."""
        raise NotImplementedError

    def index(self, label: str, pos: np.ndarray, shape: tuple[int, ...]) -> Index:
        """The index streams and entries of ``label`` (one of :meth:`options`' labels)."""
        raise NotImplementedError

    def read(self, meta: dict, read: Reader, n: int) -> Index:
        """Read the index streams back (``meta`` checked by :meth:`check`; its ``shape`` is the tensor's)."""
        raise NotImplementedError

    def check(self, meta: dict, where: str, n: int, get_int: Callable[..., int]) -> tuple[dict[str, tuple[int, int]], int]:
        """Bounds for the manifest checker: ({index stream: (width, count)}, most entries).

        ``meta["shape"]`` is already checked; ``get_int(meta, key, where, lo, hi)`` reads a checked
        integer field."""
        raise NotImplementedError


class Dense(Layout):
    name = "dense"

    def options(self, pos, shape, b):
        return {"dense": math.prod(shape) * b}

    def index(self, label, pos, shape):
        entries = np.arange(math.prod(shape))
        return Index([], entries, np.ones(entries.size, dtype=bool), real=pos)

    def read(self, meta, read, n):
        return Index([], np.arange(n), np.ones(n, dtype=bool))

    def check(self, meta, where, n, get_int):
        return {}, n


class Bitmask(Layout):
    name = "bitmask"

    def options(self, pos, shape, b):
        n = math.prod(shape)
        return {"bitmask": n + pos.size * b} if pos.size < n else {}

    def index(self, label, pos, shape):
        mask = np.zeros(math.prod(shape), dtype=np.int64)
        mask[pos] = 1
        return Index([("mask", mask, 1)], pos, np.zeros(pos.size, dtype=bool), real=np.arange(pos.size))

    def read(self, meta, read, n):
        pos = np.flatnonzero(read("mask", 1, n))
        return Index([], pos, np.zeros(pos.size, dtype=bool))

    def check(self, meta, where, n, get_int):
        return {"mask": (1, n)}, n


def gaps_of(pos: np.ndarray) -> np.ndarray:
    """Zeros before each non-zero, in row-major order (trailing zeros need no entry).

    >>> gaps_of(np.array([0, 9]))
    array([0, 8])
    """
    return np.diff(pos, prepend=-1) - 1


def filler_count(values: torch.Tensor, index_bits: int) -> int:
    """Filler entries that relative indexing with ``index_bits``-bit gaps needs for ``values``.

    Example: positions 0 and 9 non-zero, 3-bit gaps: the 8 zeros between need one filler.
        >>> filler_count(torch.tensor([1.] + [0.] * 8 + [2.]), 3)
        1
    """
    return int((gaps_of(nonzero_positions(values)) >> index_bits).sum())


def relative_bits(values: torch.Tensor, value_bits: int) -> tuple[int, int]:
    """Best relative-index layout of ``values``: (total bits, index bits p).

    >>> relative_bits(torch.tensor([1.] + [0.] * 8 + [2.]), 4)
    (16, 4)
    """
    # n + 1: the layout's size does not depend on n, and it is then priced even with no zeros
    (label, bits), = Relative().options(nonzero_positions(values), (values.numel() + 1,), value_bits).items()
    return bits, int(label[len("relative-"):-len("bit")])


def filler_counts(gaps: np.ndarray) -> np.ndarray:
    """Filler entries ``Σ (g >> p)`` for every index width ``p`` in 0..16 at once: (17,) int64.

    One histogram of the gaps below 2^16 instead of one pass over them per width; the few larger
    gaps are summed as they are.

    >>> filler_counts(np.array([0, 8, 70000]))[[1, 3, 16]].tolist()
    [35004, 8751, 1]
    """
    small = gaps < (1 << MAX_INDEX_BITS)
    if small.all():
        return fillers_of(np.bincount(gaps), gaps[:0])
    return fillers_of(np.bincount(gaps[small]), gaps[~small])


def fillers_of(hist: np.ndarray, big: np.ndarray) -> np.ndarray:
    """:func:`filler_counts` from a histogram of the gaps below 2^16 and the larger gaps themselves."""
    widths = np.arange(MAX_INDEX_BITS + 1)
    values = np.arange(hist.size)
    out = np.array([int(hist @ (values >> p)) for p in widths], dtype=np.int64)
    if big.size:
        out += np.array([int((big >> p).sum()) for p in widths], dtype=np.int64)
    return out


class Relative(Layout):
    name = "relative"
    huffman = ("gaps",)

    def options(self, pos, shape, b):
        if pos.size >= math.prod(shape):
            return {}
        widths = np.arange(1, MAX_INDEX_BITS + 1)
        fillers = pos.fillers() if isinstance(pos, Positions) else filler_counts(gaps_of(pos))
        bits = (pos.size + fillers[1:]) * (widths + b)                          # (16,) for p = 1..16
        p = int(widths[np.argmin(bits)])                                        # the first (narrowest) minimum
        return {f"relative-{p}bit": int(bits[p - 1])}

    def index(self, label, pos, shape):
        p = int(label[len("relative-"):-len("bit")])
        g = gaps_of(pos)                                                        # (z,) zeros before each
        fillers = g >> p                                                        # each covers 2^p positions
        real = np.cumsum(fillers + 1) - 1                                       # (z,)
        top = (1 << p) - 1
        gaps = np.full(int(pos.size + fillers.sum()), top, dtype=np.int64)     # (z + f,) fillers: gap 2^p - 1
        gaps[real] = g & top
        return Index([("gaps", gaps, p)], np.cumsum(gaps + 1) - 1, gaps == top, real=real,
                     meta=dict(index_bits=p, entries=int(gaps.size)))

    def read(self, meta, read, n):
        gaps = read("gaps", meta["index_bits"], meta["entries"])
        return Index([], np.cumsum(gaps + 1) - 1, gaps == (1 << meta["index_bits"]) - 1)

    def check(self, meta, where, n, get_int):
        p = get_int(meta, "index_bits", where, 1, MAX_INDEX_BITS)
        entries = get_int(meta, "entries", where, 0, n)               # each entry stands for >= 1 position
        return {"gaps": (p, entries)}, entries


CORE_LAYOUTS: tuple[Layout, ...] = (Dense(), Bitmask(), Relative())


def nonzero_positions(values: torch.Tensor) -> np.ndarray:
    """Flat positions (z,) of the non-zero values, ascending."""
    return np.flatnonzero(values.detach().reshape(-1).cpu().numpy() != 0)


class Positions:
    """The non-zero positions of a tensor as the layout search needs them, found in chunks of
    :attr:`CHUNK` values: their number (``size``) and the histogram of the gaps between them, so
    pricing a 38 M-value embedding holds a few MB, not an int64 array per position and its
    differences (about 17 bytes a value). The array itself comes on request (N:M, packing).

    >>> p = Positions(torch.tensor([1.] + [0.] * 8 + [2.]))
    >>> p.size, p.fillers()[3].item(), p.array().tolist()
    (2, 1, [0, 9])
    """

    CHUNK = 1 << 20

    def __init__(self, values: torch.Tensor) -> None:
        self.values = values.detach().reshape(-1).cpu()
        hist = np.zeros(1 << MAX_INDEX_BITS, dtype=np.int64)
        big: list[np.ndarray] = []
        last, count = -1, 0
        for start in range(0, self.values.numel(), self.CHUNK):
            pos = np.flatnonzero((self.values[start:start + self.CHUNK] != 0).numpy()) + start
            if not pos.size:
                continue
            gaps = np.diff(pos, prepend=last) - 1
            small = gaps < hist.size
            hist += np.bincount(gaps[small], minlength=hist.size)
            if not small.all():
                big.append(gaps[~small])
            last, count = int(pos[-1]), count + int(pos.size)
        self.size = count
        self._hist = hist
        self._big = np.concatenate(big) if big else np.zeros(0, dtype=np.int64)

    def fillers(self) -> np.ndarray:
        """:func:`filler_counts` of the gaps: (17,) int64."""
        return fillers_of(self._hist, self._big)

    def array(self) -> np.ndarray:
        return nonzero_positions(self.values)


def positions_array(pos: "np.ndarray | Positions") -> np.ndarray:
    """The flat positions as an array, from either form."""
    return pos.array() if isinstance(pos, Positions) else pos


def layout_options(t: StoredTensor, pos: np.ndarray | None = None) -> dict[str, tuple[Layout, int]]:
    """Every layout ``t`` can be stored in: {label: (layout, index + value bits)}.

    The prune method's own layouts come first, so they win a tie (2:4 with a bitmask: both 2 bits
    per kept value; the hardware's format is named). ``pos``: ``nonzero_positions(t.values)`` when
    the caller has them.
    """
    shape = tuple(t.values.shape)
    pos = nonzero_positions(t.values) if pos is None else pos
    out: dict[str, tuple[Layout, int]] = {}
    for layout in (*t.layouts, *CORE_LAYOUTS):
        for label, bits in layout.options(pos, shape, t.value_bits).items():
            out[label] = (layout, bits)
    return out


def choose_layout(t: StoredTensor, pos: np.ndarray | None = None) -> tuple[str, int]:
    """(label, bits) of the smallest layout for ``t`` (values and index, without the overhead)."""
    options = layout_options(t, pos)
    label = min(options, key=lambda k: options[k][1])
    return label, options[label][1]


def layout_for(t: StoredTensor, label: str) -> Layout:
    """The layout a label names, among ``t``'s own and the core ones."""
    name = label.split("-")[0]
    for layout in (*t.layouts, *CORE_LAYOUTS):
        if layout.name == name:
            return layout
    raise PetError(f"tensor {t.name}: unknown encoding {label!r}")
