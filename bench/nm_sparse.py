"""2:4 semi-structured sparsity on a GPU's sparse tensor cores: the real speed figure for N:M.

For large Linear layers (fp16, batch 4096 tokens), ``F.linear`` with the dense 2:4-pruned weight
(baseline) against the same weight converted by ``torch.sparse.to_sparse_semi_structured``, timed
interleaved in the same run with CUDA events. Ratio = dense / sparse (> 1: the sparse kernel is
faster). The outputs are compared first (same numbers up to fp16 accumulation order).

Needs a CUDA GPU with sparse tensor cores (compute capability 8.0+); on a CPU-only machine it
records nothing and says so (masks on a CPU give no speed-up: the packed file is what is real).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.common import Context, Goal, Result, median, p90
from pet_core.methods.nm import nm_mask

SHAPES = [(4096, 4096), (8192, 8192), (4096, 16384)]     # (out, in): GPT-2 XL / LLaMA-sized projections
TOKENS = 4096


def _time_cuda(fn, reps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        out.append(start.elapsed_time(end))
    return out


def bench_nm_sparse(ctx: Context) -> list[Result]:
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8:
        ctx.log("nm_sparse: no CUDA GPU with sparse tensor cores here; nothing measured")
        return []
    from torch.sparse import to_sparse_semi_structured

    rows = []
    for out_f, in_f in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(0)
        w = torch.randn(out_f, in_f, device="cuda", dtype=torch.float16, generator=g)
        w = w * nm_mask(w.float().cpu(), 2, 4).to("cuda")                          # (out, in) 2:4
        x = torch.randn(TOKENS, in_f, device="cuda", dtype=torch.float16, generator=g)
        sparse = to_sparse_semi_structured(w)
        ref, got = F.linear(x, w), F.linear(x, sparse)
        err = float((ref - got).abs().max() / ref.abs().max())
        dense_ms, sparse_ms = [], []
        for _ in range(ctx.reps):                                                   # interleaved
            dense_ms += _time_cuda(lambda: F.linear(x, w), 1, 1 if dense_ms else ctx.warmup)
            sparse_ms += _time_cuda(lambda: F.linear(x, sparse), 1, 1 if sparse_ms else ctx.warmup)
        ratio = median(dense_ms) / median(sparse_ms)
        rows.append(Result(
            f"nm_2to4_linear_{out_f}x{in_f}", median(sparse_ms), "ms", baseline=median(dense_ms),
            p90=p90(sparse_ms), baseline_p90=p90(dense_ms),
            baseline_desc=f"dense fp16 F.linear, {TOKENS} tokens, same 2:4 weight",
            goals=[Goal("sparse tensor cores faster than dense (ratio > 1)", ratio > 1.0)],
            notes=f"{torch.cuda.get_device_name()}; max relative output difference {err:.1e}"))
    return rows
