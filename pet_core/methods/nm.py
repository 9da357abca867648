"""N:M semi-structured sparsity: in every group of M consecutive input weights keep the N largest |w|.

2:4 is the pattern NVIDIA's sparse tensor cores run (Mishra et al. 2021, "Accelerating Sparse Deep
Neural Networks"; ``torch.sparse.to_sparse_semi_structured``). Groups run along each row of the
weight as a matrix ``(out, in_flat)``: for a Linear layer, M consecutive inputs of one output, as
the hardware groups them; for a Conv, ``in_flat`` is PyTorch's ``(in, kh, kw)`` order. A row whose
length is not a multiple of M ends with a shorter group, which keeps at most N.

Stored as the hardware does: for every group, N values and N slot indices of ``⌈log2 M⌉`` bits
(2:4: 2 bits per kept value). A kept value that is 0 after quantisation still takes its entry.

>>> w = torch.tensor([[0.1, -0.9, 0.5, 0.2, 1.0, 0.0, -2.0, 0.3]])
>>> nm_mask(w, 2, 4).int()
tensor([[0, 1, 1, 0, 1, 0, 1, 0]], dtype=torch.int32)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from pet_core.errors import PetError
from pet_core.encoding import Index, Layout, positions_array
from pet_core.fields import spec_field
from pet_core.methods.base import Pruned, PruneMethod, StepConfig
from pet_core.methods.magnitude import magnitude_scores

MAX_M = 16


@dataclass(frozen=True)
class NMConfig(StepConfig):
    """Keep ``n`` of every ``m`` consecutive weights along a row.

    >>> NMConfig().n, NMConfig().m
    (2, 4)
    """

    STEP: ClassVar[str] = "prune"
    method: str = spec_field("nm", "N:M semi-structured sparsity", choices=("nm",), kind=str)
    n: int = spec_field(2, "weights kept in every group (N)", lo=1, hi=MAX_M, kind=int)
    m: int = spec_field(4, "group size (M): consecutive input weights of one output", lo=2, hi=MAX_M, kind=int)

    def check(self) -> None:
        if self.n > self.m:
            raise PetError(f"nm: n = {self.n} is more than m = {self.m} (keep at most the whole group)")


def _rows(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, row length) of a tensor as a matrix ``(out, in_flat)``; a vector is one row."""
    if len(shape) < 2:
        return 1, math.prod(shape)
    return shape[0], math.prod(shape[1:])


def nm_mask(w: Tensor, n: int, m: int) -> Tensor:
    """Bool keep mask of ``w``'s shape: the ``n`` largest |w| of every ``m`` consecutive values of a row.

    Ties keep the lower index (a stable sort), so the mask is the same on every machine.
    """
    rows, length = _rows(tuple(w.shape))
    groups = -(-length // m)
    scores = torch.full((rows, groups * m), -1.0, dtype=torch.float64)                  # padding never wins
    scores[:, :length] = magnitude_scores(w).reshape(rows, length).double()
    order = torch.argsort(scores.reshape(rows, groups, m), dim=-1, descending=True, stable=True)  # (rows, groups, m)
    keep = torch.zeros(rows, groups, m, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], True)
    return keep.reshape(rows, groups * m)[:, :length].reshape(w.shape)


class NMLayout(Layout):
    """N entries per group of M: ``⌈log2 M⌉``-bit slot indices, then the values; padding is a zero."""

    name = "nm"

    def __init__(self, n: int = 2, m: int = 4) -> None:
        self.n, self.m = n, m

    def _groups(self, shape: tuple[int, ...], m: int) -> tuple[int, int, int]:
        rows, length = _rows(shape)
        return rows, length, -(-length // m)

    def options(self, pos: np.ndarray, shape: tuple[int, ...], b: int) -> dict[str, int]:
        pos = positions_array(pos)
        rows, length, groups = self._groups(shape, self.m)
        present = np.zeros((rows, groups * self.m), dtype=np.int64)
        present.reshape(-1)[(pos // length) * groups * self.m + pos % length] = 1
        if rows and present.reshape(rows, groups, self.m).sum(-1).max(initial=0) > self.n:
            return {}                                        # some group holds more than N non-zeros
        slot_bits = max(1, (self.m - 1).bit_length())
        return {f"nm-{self.n}:{self.m}": rows * groups * self.n * (slot_bits + b)}

    def index(self, label: str, pos: np.ndarray, shape: tuple[int, ...]) -> Index:
        n, m = (int(v) for v in label[len("nm-"):].split(":"))
        rows, length, groups = self._groups(shape, m)
        present = np.zeros((rows * groups, m), dtype=bool)
        present.reshape(-1)[(pos // length) * groups * m + pos % length] = True
        slots = np.argsort(~present, axis=1, kind="stable")[:, :n]                     # (groups, n) present first
        real = np.take_along_axis(present, slots, axis=1)                              # (groups, n)
        index = self._index(slots, rows, length, groups, m, n)
        index.real = np.flatnonzero(real.reshape(-1))
        index.meta = dict(n=n, m=m)
        return index

    def _index(self, slots: np.ndarray, rows: int, length: int, groups: int, m: int, n: int) -> Index:
        slot_bits = max(1, (m - 1).bit_length())
        g = np.arange(rows * groups)[:, None]                                            # (groups, 1)
        entry_pos = (g // groups) * length + (g % groups) * m + slots                    # (groups, n)
        flat = slots.reshape(-1).astype(np.int64)
        return Index([("slots", flat, slot_bits)], entry_pos.reshape(-1), np.ones(flat.size, dtype=bool))

    def read(self, meta: dict, read, n_values: int) -> Index:
        n, m = meta["n"], meta["m"]
        rows, length, groups = self._groups(tuple(meta["shape"]), m)
        slots = read("slots", max(1, (m - 1).bit_length()), rows * groups * n).reshape(rows * groups, n)
        return self._index(slots, rows, length, groups, m, n)

    def check(self, meta: dict, where: str, n_values: int, get_int) -> tuple[dict, int]:
        m = get_int(meta, "m", where, 2, MAX_M)
        n = get_int(meta, "n", where, 1, m)
        rows, _, groups = self._groups(tuple(meta["shape"]), m)
        entries = rows * groups * n
        return {"slots": (max(1, (m - 1).bit_length()), entries)}, entries


class NM(PruneMethod):
    name = "nm"
    config = NMConfig
    summary = "Keep the N largest |w| in every group of M consecutive input weights (2:4 runs on sparse tensor cores)."
    choice_label = "N:M (2:4)"
    example = {"n": 2, "m": 4}
    keeps_own_mask = True

    def masks(self, stored: list[Tensor], weight: Tensor, cfg: NMConfig, threshold: float | None) -> Pruned:
        return Pruned([nm_mask(t, cfg.n, cfg.m) for t in stored])

    def layouts(self, cfg: NMConfig) -> tuple:
        return (NMLayout(cfg.n, cfg.m),)

    def packed_layouts(self) -> tuple:
        return (NMLayout(),)

    def label(self, cfg: NMConfig) -> str:
        return f"{cfg.n}:{cfg.m} semi-structured"
