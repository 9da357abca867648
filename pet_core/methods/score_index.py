"""The exact k-th smallest |x| over many tensors, asked again and again, in little memory.

A global magnitude threshold needs the k-th smallest |w| of a whole model (GPT-2 small: 124M
weights) for every sparsity the slider asks. Sorting every score once makes each question O(1)
but holds a sorted float copy, as many bytes as the model; ``torch.kthvalue`` holds nothing but
takes seconds per question. ``ScoreIndex`` holds 1.25 bytes a score, is built in one pass over
the tensors, and answers a new rank in milliseconds, exactly.

How. The bit pattern of a non-negative float, read as an integer, is monotone in its value, so
the top 16 bits of |x| (sign, exponent, leading mantissa bits) order the scores coarsely. A
strided sample chooses how those 2^15 keys fall into ``BUCKETS`` buckets of about equal counts
(key 0, exact zeros, gets bucket 0 of its own: a pruned model is mostly zeros). The tensors are
then read once, in chunks of about ``CHUNK`` scores, and the positions of each bucket's scores in
a chunk are stored Elias-Fano coded: the low 8 bits in one byte, the rest in unary (one bit per
score plus one per 256 positions). A question for rank ``k`` finds its bucket from the counts,
decodes that bucket's positions (about N/256), reads their scores from the tensors themselves
(the index keeps references, no copy) and selects within them.

The scores are ``|x|`` of the tensors given; float16/bfloat16 are compared as float32, float64
as float64 (both exact), as ``torch.kthvalue`` over their concatenation compares them.

>>> index = ScoreIndex([[torch.tensor([3.0, -1.0])], [torch.tensor([[1.0], [2.0]])]])
>>> index.kth(2), index.kth(3)
(1.0, 2.0)
>>> index.ties(1)      # the smallest is 1.0, twice: member 0's counts first
(1.0, [1, 0])
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

BUCKETS = 256
CHUNK = 1 << 19          # scores per chunk: each of the (2) encoding threads holds ~15 MB of temporaries
LOW_BITS = 8             # Elias-Fano: low bits of a position stored as is (one byte)
NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)
SAMPLE_STEP = 64         # every 64th score chooses the buckets


def memory_order(t: Tensor) -> Tensor:
    """``t``'s values, 1-D, in memory order: a view, no copy, when ``t`` is a dense block in any
    dimension order (a transposed weight, HF Conv1D's canonical view); else a contiguous copy.

    The index numbers positions in this order: only the multiset of scores and each member's
    count of them matter, so any numbering within a member will do.
    """
    t = t.detach()
    if t.dim() > 1:
        p = t.permute(sorted(range(t.dim()), key=lambda d: -t.stride(d)))
        t = p if p.is_contiguous() else t.contiguous()
    return t.reshape(-1)


class ScoreIndex:
    """Exact order statistics of ``|x|`` over the tensors of several members (layers).

    Args:
        members: one list of tensors per member (a layer's stored tensors), or one tensor per member.
            Members are ordered: among equal scores, an earlier member's count first.
    """

    def __init__(self, members: list) -> None:
        members = [[m] if isinstance(m, Tensor) else list(m) for m in members]
        tensors = [t for m in members for t in m]
        self.members = len(members)
        wide = any(t.dtype == torch.float64 for t in tensors)
        self.dtype = torch.float64 if wide else torch.float32
        self._float, self._int = (np.float64, np.int64) if wide else (np.float32, np.int32)
        self._shift = 48 if wide else 16                                  # keep the top 16 bits
        self._flat = [memory_order(t) for t in tensors]
        # numpy views to gather from (indexing numpy is ~100x faster than torch for a few thousand)
        self._np = [f.numpy() if f.dtype in NUMPY_FLOATS else None for f in self._flat]
        self.numel = sum(t.numel() for t in tensors)
        self._lut = self._bucket_table()
        self._plan_chunks([i for i, m in enumerate(members) for _ in m])
        self._encode()

    # --- building -------------------------------------------------------------------------------

    def _abs(self, t: Tensor | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """|t| (1-D) as numpy of the index's dtype (float16 and bfloat16 widen exactly)."""
        if isinstance(t, Tensor):
            t = t.numpy() if t.dtype in NUMPY_FLOATS else t.to(self.dtype).numpy()
        return np.abs(t, out=out, dtype=self._float)                      # |-0.0| is +0.0: key 0

    def _bucket_table(self) -> np.ndarray:
        """Bucket of each 16-bit key: 0 for key 0 (zeros), then about equal counts in a sample."""
        parts = [self._abs(f[::SAMPLE_STEP]).view(self._int) >> self._shift for f in self._flat]
        keys = np.concatenate(parts) if parts else np.zeros(0, dtype=self._int)
        hist = np.bincount(keys, minlength=1 << 16)[:1 << 16]
        hist[0] = 0
        before = np.cumsum(hist) - hist                                   # sampled scores below each key
        lut = 1 + before * (BUCKETS - 1) // max(1, int(hist.sum()))       # monotone in the key
        lut[0] = 0
        return np.minimum(lut, BUCKETS - 1).astype(np.uint8)

    def _plan_chunks(self, member_of_tensor: list[int]) -> None:
        """Chunks of at most ``CHUNK`` scores of one tensor, and where each one's bytes go."""
        chunks = [(i, s, min(CHUNK, f.numel() - s)) for i, f in enumerate(self._flat)
                  for s in range(0, f.numel(), CHUNK)]
        self.chunk_tensor = np.array([c[0] for c in chunks], dtype=np.int64)
        self.chunk_member = np.array(member_of_tensor, dtype=np.int64)[self.chunk_tensor]
        self.chunk_first = np.array([c[1] for c in chunks], dtype=np.int64)    # within its tensor
        self.chunk_size = np.array([c[2] for c in chunks], dtype=np.int64)
        self.chunk_sub = (self.chunk_size + (1 << LOW_BITS) - 1) >> LOW_BITS  # unary ticks per bucket
        self.low_start = np.cumsum(self.chunk_size) - self.chunk_size
        self.high_bytes = (self.chunk_size + BUCKETS * self.chunk_sub + 7) >> 3
        self.high_start = np.cumsum(self.high_bytes) - self.high_bytes

    def _encode(self) -> None:
        n_chunks = self.chunk_tensor.size
        self.lows = np.empty(self.numel, dtype=np.uint8)                  # (N,) low 8 bits of positions
        self.highs = np.empty(int(self.high_bytes.sum()), dtype=np.uint8)  # unary high parts
        self.counts = np.zeros((n_chunks, BUCKETS), dtype=np.int64)       # (chunks, buckets)
        self._zeros = np.zeros(n_chunks, dtype=np.int64)                  # exact zeros per chunk
        workers = max(1, min(torch.get_num_threads(), n_chunks, 8))
        with ThreadPoolExecutor(workers) as pool:                         # numpy releases the GIL
            list(pool.map(lambda w: self._encode_chunks(range(w, n_chunks, workers)), range(workers)))
        self.starts = np.cumsum(self.counts, axis=1) - self.counts        # (chunks, buckets)
        self.bucket_total = self.counts.sum(axis=0)                       # (buckets,)
        self.bucket_end = np.cumsum(self.bucket_total)                    # scores in buckets <= b
        self.member_counts = np.zeros((self.members, BUCKETS), dtype=np.int64)
        np.add.at(self.member_counts, self.chunk_member, self.counts)
        self.only_zeros = bool(self._zeros.sum() == self.bucket_total[0])  # bucket 0 holds nothing else

    def _encode_chunks(self, chunks: range) -> None:
        """Positions of each bucket in each chunk, ascending: low bytes, then unary high parts."""
        size = int(self.chunk_size.max(initial=0))
        scores = np.empty(size, dtype=self._float)
        keys = np.empty(size, dtype=self._int)
        ids = np.empty(size, dtype=np.uint8)
        bits = np.empty(size + BUCKETS * ((size + 255) >> LOW_BITS), dtype=bool)
        count = np.arange(size, dtype=np.int32)
        for j in chunks:
            n, sub, first = int(self.chunk_size[j]), int(self.chunk_sub[j]), int(self.chunk_first[j])
            a = self._abs(self._flat[self.chunk_tensor[j]][first:first + n], out=scores[:n])
            np.take(self._lut, np.right_shift(a.view(self._int), self._shift, out=keys[:n]), out=ids[:n])
            order = np.argsort(ids[:n], kind="stable")                    # (n,) by bucket, ascending within
            grouped = ids[:n][order]                                      # (n,) bucket ids, sorted
            counts = np.diff(np.searchsorted(grouped, np.arange(BUCKETS + 1)))
            self.counts[j] = counts
            if counts[0]:
                self._zeros[j] = n - np.count_nonzero(a)
            lo = int(self.low_start[j])
            self.lows[lo:lo + n] = order                                  # keeps the low 8 bits
            # the i-th entry in bucket order, at position p in bucket b, sets bit b*sub + (p >> 8) + i
            # (its bucket's unary part starts after the sub ticks of each bucket before and their entries)
            order >>= LOW_BITS
            order += np.repeat(np.arange(BUCKETS, dtype=np.int32) * sub, counts)
            order += count[:n]
            used = bits[:n + BUCKETS * sub]
            used.fill(False)
            used[order] = True
            hi = int(self.high_start[j])
            self.highs[hi:hi + int(self.high_bytes[j])] = np.packbits(used)

    # --- asking ---------------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        """Bytes the index holds (not counting the tensors it reads)."""
        arrays = (self.lows, self.highs, self.counts, self.starts, self.member_counts, self._lut)
        return sum(a.nbytes for a in arrays) + 64 * self.chunk_size.size

    def _decode(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, member of each) of bucket ``b``."""
        js = np.flatnonzero(self.counts[:, b])                            # chunks holding some
        ms, firsts, subs = self.counts[js, b], self.starts[js, b], self.chunk_sub[js]
        lows, highs = [], []
        bits0 = self.high_start[js] * 8 + b * subs + firsts
        for m, lo, bit0, sub in zip(ms.tolist(), (self.low_start[js] + firsts).tolist(), bits0.tolist(),
                                    subs.tolist()):
            raw = np.unpackbits(self.highs[bit0 >> 3:(bit0 + m + sub + 7) >> 3])
            highs.append(np.flatnonzero(raw[bit0 & 7:(bit0 & 7) + m + sub]))
            lows.append(self.lows[lo:lo + m])
        if not lows:
            return np.zeros(0, dtype=self._float), np.zeros(0, dtype=np.int64)
        total = int(ms.sum())
        chunk_first = np.cumsum(ms) - ms                                  # each chunk's first entry here
        high = np.concatenate(highs) - (np.arange(total) - np.repeat(chunk_first, ms))
        pos = (high << LOW_BITS) | np.concatenate(lows)                   # (total,) within each chunk
        pos += np.repeat(self.chunk_first[js], ms)                        # within each tensor
        scores = np.empty(total, dtype=self._float)
        tensor = self.chunk_tensor[js]
        edges = np.flatnonzero(np.diff(tensor)) + 1                       # chunks of one tensor run together
        for start, end in zip([0, *edges.tolist()], [*edges.tolist(), js.size]):
            i, a, z = int(tensor[start]), int(chunk_first[start]), int(chunk_first[end - 1] + ms[end - 1])
            src = self._np[i] if self._np[i] is not None else self._flat[i]
            part = pos[a:z] if self._np[i] is not None else torch.from_numpy(pos[a:z])
            scores[a:z] = self._abs(src[part])
        return scores, np.repeat(self.chunk_member[js], ms)

    def ties(self, k: int) -> tuple[float, list[int]]:
        """(the k-th smallest score t, how many scores equal to t each member has among the k smallest).

        Among equal scores an earlier member's count first, so each member pruning its scores
        below t plus its share of those equal to t prunes exactly ``k`` in all. ``k`` in ``1..numel``.
        """
        if not 1 <= k <= self.numel:
            raise ValueError(f"rank {k} outside 1..{self.numel}")
        b = int(np.searchsorted(self.bucket_end, k))                    # first bucket reaching rank k
        rank = k - int(self.bucket_end[b] - self.bucket_total[b])         # 1-based, within the bucket
        if b == 0 and self.only_zeros:                                    # only exact zeros: no decoding
            return 0.0, _first(self.member_counts[:, 0], rank)
        scores, members = self._decode(b)
        t = np.partition(scores, rank - 1)[rank - 1]
        need = rank - int(np.count_nonzero(scores < t))
        return float(t), _first(np.bincount(members[scores == t], minlength=self.members), need)

    def kth(self, k: int) -> float:
        """The k-th smallest score (``k`` in ``1..numel``)."""
        return self.ties(k)[0]


def _first(equal: np.ndarray, need: int) -> list[int]:
    """Members' shares of the first ``need`` equal scores, filled in member order."""
    before = np.cumsum(equal) - equal
    return np.clip(need - before, 0, equal).astype(np.int64).tolist()
