"""Wall-clock latency of a forward function: median and 90th percentile over timed repeats."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

from pet_core.errors import PetError


def measure_latency(fn: Callable[[Any], Any], example: Any, *, repeats: int = 50, warmup: int = 10,
                    threads: int | None = None) -> dict[str, float]:
    """Time ``fn(example)`` under ``torch.inference_mode``; returns median_ms and p90_ms.

    Args:
        fn: a model or any callable taking ``example``.
        example: its input, e.g. a (B, C, H, W) batch.
        repeats: timed calls (>= 1); medians need ~50 to be stable on a shared machine.
        warmup: untimed calls first (allocator, oneDNN kernel choice, caches).
        threads: ``torch.set_num_threads`` for the measurement, restored afterwards; None keeps it.

    Example:
        >>> r = measure_latency(lambda x: x @ x, torch.ones(4, 4), repeats=5, warmup=1)
        >>> sorted(r)[:2]
        ['median_ms', 'min_ms']
    """
    if int(repeats) < 1 or int(warmup) < 0:
        raise PetError(f"latency: repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    if threads is not None and int(threads) < 1:
        raise PetError(f"latency: threads must be >= 1, got {threads}")
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        with torch.inference_mode():
            for _ in range(int(warmup)):
                fn(example)
            times = []
            for _ in range(int(repeats)):
                start = time.perf_counter()
                fn(example)
                times.append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(old_threads)
    times.sort()
    # nearest-rank percentile: an observed time, no interpolation between runs
    p90 = times[min(len(times) - 1, max(0, int(round(0.9 * len(times))) - 1))]
    return dict(median_ms=statistics.median(times), p90_ms=p90, min_ms=times[0],
                repeats=int(repeats), threads=torch.get_num_threads() if threads is None else int(threads))
