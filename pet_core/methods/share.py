"""Weight sharing (Deep Compression, Han et al. 2016): 1-D k-means on the kept weights.

Each weight is replaced by its cluster centroid; storage is a small codebook plus
log2(k)-bit indices. In 1-D, k-means clusters are contiguous intervals of the sorted
values: small layers get the optimal clustering by dynamic programming, larger ones Lloyd
iterations, each O(k log n) via prefix sums after one sort.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from pet_core.errors import PetError
from pet_core.fields import spec_field
from pet_core.methods.base import CodeMethod, Coded, Trainable, StepConfig

FLOAT_BITS = 32
MAX_CLUSTERS = 256


KMEANS_ITERATIONS = 3000        # Lloyd iteration cap: measured in tests/test_kmeans_oracle.py (2,832 needed)
EXACT_MAX_VALUES = 1024         # distinct values up to which the optimal clustering is computed exactly
EXACT_MAX_WORK = 16 * 1024**2   # and k · values² at most (one (n+1)² table per cluster: <= ~0.1 s)


@dataclass(frozen=True)
class ShareConfig(StepConfig):
    """Number of shared values (codebook size).

    >>> ShareConfig(clusters=32).clusters
    32
    """

    STEP: ClassVar[str] = "share"
    clusters: int = spec_field(16, "k-means clusters per layer (codebook size); indices take ceil(log2 k) bits",
                               lo=2, hi=MAX_CLUSTERS, kind=int, ui=dict(help="indices take ⌈log2 k⌉ bits"))


@dataclass
class Shared:
    """Result of ``share``."""

    values: Tensor  # w's shape and dtype; codebook[codes] on kept positions, exactly 0 on pruned
    codes: Tensor  # int32 indices into codebook, w's shape; 0 at pruned positions
    codebook: Tensor  # (m,) float32 ascending, m <= clusters


def _numpy64(x: Tensor) -> np.ndarray:
    """Flat float64 numpy copy of ``x``.

    The k-means inner loop runs in numpy: it is dozens of tiny ops on k values, where
    torch's per-op overhead (and its thread-pool wake-ups on 2 cores) dominates.
    """
    x = x.detach().reshape(-1).cpu()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.to(torch.float32)  # half / bfloat16 have no numpy equivalent
    return x.numpy().astype(np.float64)


def _midpoints(c: np.ndarray) -> np.ndarray:
    """Decision boundaries between sorted centroids (k,) -> (k-1,)."""
    return (c[1:] + c[:-1]) / 2


def _cluster_ends(xs: np.ndarray, c: np.ndarray) -> np.ndarray:
    """End index (k,) of each cluster in sorted ``xs``: cluster j is mid[j-1] < x <= mid[j]."""
    # same tie rule as torch.bucketize(right=False) used for the final codes
    inner = np.searchsorted(xs, _midpoints(c), side="right")
    return np.append(inner, xs.size)


def _lloyd_sorted(xs: np.ndarray, c: np.ndarray, iterations: int) -> np.ndarray:
    """Lloyd iterations on sorted values ``xs`` (n,) from ascending centroids ``c`` (k,)."""
    prefix = np.concatenate([[0.0], np.cumsum(xs)])  # (n+1,) prefix[i] = sum of xs[:i]
    ends = None
    for _ in range(iterations):
        new_ends = _cluster_ends(xs, c)
        if ends is not None and np.array_equal(new_ends, ends):
            break  # assignments unchanged -> converged
        ends = new_ends
        starts = np.concatenate([[0], ends[:-1]])
        counts = ends - starts  # (k,)
        sums = prefix[ends] - prefix[starts]  # (k,)
        # empty clusters keep their centroid (dropped at the end)
        c = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        c = np.sort(c)  # 1-D Lloyd keeps the order; sort guards against float rounding
    return c


def _optimal_sorted(values: np.ndarray, counts: np.ndarray, k: int) -> np.ndarray:
    """The optimal k centroids of distinct sorted ``values`` (n,) with multiplicities ``counts``.

    In 1-D an optimal partition is k contiguous runs of the sorted values, so dynamic programming
    over split points finds it: ``D[m][j] = min_i D[m-1][i] + SSE(values[i:j])``, each SSE from
    weighted prefix sums, one ``(n+1, n+1)`` table per cluster (Bellman 1973; Wang & Song 2011).
    """
    n = values.size
    w = np.concatenate([[0.0], np.cumsum(counts)])                      # (n+1,) weight of values[:i]
    s1 = np.concatenate([[0.0], np.cumsum(counts * values)])
    s2 = np.concatenate([[0.0], np.cumsum(counts * values ** 2)])
    i, j = np.arange(n + 1)[:, None], np.arange(n + 1)[None, :]         # split i, end j
    weight = np.where(j > i, w[j] - w[i], 1.0)
    cost = np.where(j > i, np.maximum(s2[j] - s2[i] - (s1[j] - s1[i]) ** 2 / weight, 0.0), np.inf)  # (n+1, n+1)
    best = cost[0].copy()                                                # one cluster over values[:j]
    splits = np.zeros((k, n + 1), dtype=np.int64)
    for m in range(1, k):
        table = best[:, None] + cost                                     # (i, j)
        splits[m] = np.argmin(table, axis=0)
        best = table[splits[m], np.arange(n + 1)]
    ends, j = [], n
    for m in range(k - 1, -1, -1):                                       # walk the splits back
        start = splits[m][j] if m else 0
        ends.append((start, j))
        j = start
    return np.array([(s1[b] - s1[a]) / (w[b] - w[a]) for a, b in reversed(ends)])


def kmeans_1d(x: Tensor, k: int, iterations: int = KMEANS_ITERATIONS) -> tuple[Tensor, Tensor]:
    """1-D k-means; returns ``(centroids (k',) float32, codes (n,) int32)``.

    Up to 1,024 distinct values (and k · values² <= 16 Mi) the clustering is the optimal one
    (:func:`_optimal_sorted`); beyond, Lloyd from linear initialisation over [min, max] (Han et al.
    2016) for at most ``iterations``. Centroids are ascending, k' <= k (empty clusters dropped). If
    ``x`` has at most k distinct values they are returned exactly (lossless).

    >>> kmeans_1d(torch.tensor([0.0, 0.1, 1.0, 1.1]), 2, 10)
    (tensor([0.0500, 1.0500]), tensor([0, 0, 1, 1], dtype=torch.int32))
    """
    if k < 1:
        raise PetError(f"k-means needs k >= 1, got {k}")
    a = _numpy64(x)  # (n,) original order
    if a.size == 0:
        return torch.empty(0, dtype=torch.float32), torch.empty(0, dtype=torch.int32)
    xs = np.sort(a)  # (n,) sorted once; clusters are contiguous runs of it
    n_distinct = 1 + int(np.count_nonzero(xs[1:] != xs[:-1]))
    if n_distinct <= k:
        distinct = np.unique(xs)
        # exact matches: searchsorted (left) finds each value's own index
        codes = np.searchsorted(distinct, a).astype(np.int32)
        return torch.from_numpy(distinct.astype(np.float32)), torch.from_numpy(codes)

    if n_distinct <= EXACT_MAX_VALUES and k * n_distinct ** 2 <= EXACT_MAX_WORK:
        values, counts = np.unique(xs, return_counts=True)
        c = _optimal_sorted(values, counts.astype(np.float64), k)
    else:
        c = np.linspace(xs[0], xs[-1], k)  # linear init, evenly spaced over [min, max] (Han et al.)
        c = _lloyd_sorted(xs, c, iterations)

    # final nearest-centroid assignment; drop empty clusters (this leaves assignments unchanged)
    ends = _cluster_ends(xs, c)
    counts = ends - np.concatenate([[0], ends[:-1]])
    c = c[counts > 0]
    codes = torch.bucketize(torch.from_numpy(a), torch.from_numpy(_midpoints(c)), out_int32=True)  # O(n log k)
    return torch.from_numpy(c.astype(np.float32)), codes


def kmeans_objective(x: Tensor, centroids: Tensor) -> float:
    """Sum of squared distances from each value to its nearest centroid.

    >>> kmeans_objective(torch.tensor([0.0, 2.0]), torch.tensor([1.0]))
    2.0
    """
    a = _numpy64(x)
    c = np.sort(_numpy64(centroids))
    idx = np.searchsorted(_midpoints(c), a)  # nearest centroid
    return float(((a - c[idx]) ** 2).sum())


def share(w: Tensor, cfg: ShareConfig, mask: Tensor | None = None) -> Shared:
    """Cluster the kept weights of ``w`` into at most ``cfg.clusters`` shared values.

    >>> s = share(torch.tensor([0.0, 0.1, 1.0, 1.1]), ShareConfig(clusters=2))
    >>> s.codebook, s.codes
    (tensor([0.0500, 1.0500]), tensor([0, 0, 1, 1], dtype=torch.int32))
    """
    if mask is not None and mask.shape != w.shape:
        raise PetError(f"mask shape {tuple(mask.shape)} does not match weight shape {tuple(w.shape)}")
    a = _numpy64(w)  # (n,) flat; gathers/scatters in numpy (much cheaper than torch here)
    keep = np.ones(a.size, dtype=bool) if mask is None else mask.detach().cpu().bool().numpy().reshape(-1)
    all_kept = bool(keep.all())
    kept = a if all_kept else a[keep]
    codebook, kept_codes = kmeans_1d(torch.from_numpy(kept), cfg.clusters)
    codes = kept_codes.numpy()
    if not all_kept:
        codes = np.zeros(a.size, dtype=np.int32)
        codes[keep] = kept_codes.numpy()  # pruned positions keep code 0
    values = codebook.numpy()[codes] if codebook.numel() else np.zeros(a.size, dtype=np.float32)
    values = np.where(keep, values, np.float32(0.0))  # pruned stay exactly 0
    return Shared(
        values=torch.from_numpy(values).reshape(w.shape).to(dtype=w.dtype, device=w.device),
        codes=torch.from_numpy(codes).reshape(w.shape),
        codebook=codebook,
    )


class SharedCentroids(nn.Module):
    """``codebook[codes] * mask`` from a trainable codebook ``(m,)``; codes and mask are buffers.

    Deep Compression's centroid fine-tuning (Han et al. 2016): ``codebook[codes]`` sums each
    cluster's gradients into its centroid.
    """

    def __init__(self, codes: Tensor, mask: Tensor | None, clusters: int) -> None:
        super().__init__()
        self.clusters = clusters
        self.register_buffer("codes", codes.long())                  # weight's shape, values in [0, m)
        self.register_buffer("mask", None if mask is None else mask.bool())

    def forward(self, codebook: Tensor) -> Tensor:
        values = codebook[self.codes]                                 # (weight shape)
        return values if self.mask is None else values * self.mask

    def right_inverse(self, w: Tensor) -> Tensor:
        """The codebook that best reproduces ``w``: each cluster's mean over its kept positions."""
        keep = torch.ones_like(w, dtype=torch.bool) if self.mask is None else self.mask
        codes, values = self.codes[keep], w.detach()[keep]          # (kept,)
        m = self.clusters
        sums = torch.zeros(m, dtype=w.dtype, device=w.device).index_add_(0, codes, values)
        counts = torch.bincount(codes, minlength=m).clamp(min=1).to(w.dtype)
        return sums / counts                                          # (m,)


class Share(CodeMethod):
    step = "share"
    name = "share"
    config = ShareConfig
    summary = "Share a small k-means codebook of values (Deep Compression)."
    choice_label = "k-means codebook"
    table_field = "clusters"
    example = {"clusters": 8}

    def code(self, t: Tensor, mask: Tensor | None, cfg: ShareConfig) -> Coded:
        out = share(t, cfg, mask=mask)
        m = out.codebook.numel()
        index_bits = max(1, (m - 1).bit_length())
        return Coded(out.values, index_bits, m * FLOAT_BITS, f"shared{m}", out.codebook.tolist(),
                     dict(codes=out.codes, codebook=out.codebook))

    # packed coding: the index into the codebook; the codebook as float32 before the streams
    packed_kinds = ("shared",)

    def packed_symbols(self, t) -> tuple[str, np.ndarray, bytes, dict]:
        codes = t.codes.detach().reshape(-1).numpy().astype(np.int64)                # (n,)
        return "shared", codes, t.codebook.to(torch.float32).numpy().tobytes(), dict(codebook=int(t.codebook.numel()))

    def packed_check(self, kind: str, meta: dict, where: str, n: int, get_int) -> tuple[int, ...]:
        get_int(meta, "groups", where, 0, 0)
        get_int(meta, "codebook", where, 0, MAX_CLUSTERS)                  # 0: every value pruned
        return tuple(range(1, (MAX_CLUSTERS - 1).bit_length() + 1))

    def packed_overhead(self, kind: str, meta: dict) -> int:
        return 4 * meta["codebook"]

    def packed_decode(self, kind: str, meta: dict, floats: Tensor, symbols: np.ndarray, idx: Tensor,
                      n: int) -> Tensor:
        if symbols.size and symbols.max() >= floats.numel():
            raise PetError(f"tensor {meta['name']}: codebook index out of range")
        return floats[torch.from_numpy(symbols.astype(np.int64))]

    def qat(self, module: nn.Module, cfg: ShareConfig, mask: Tensor | None, fixed_masks: bool):
        """Centroid fine-tuning, starting exactly at the post-training codebook; with masks that
        change during training (gradual, lottery) the codes would be stale: train fp32 instead."""
        if not fixed_masks:
            return None
        with torch.no_grad():
            s = share(module.weight, cfg, mask)
        m = s.codebook.numel()
        return Trainable(SharedCentroids(s.codes, mask, m), f"shared centroids ({m})", s.codebook)

    def label(self, cfg: ShareConfig) -> str:
        return f"k-means {cfg.clusters}"
