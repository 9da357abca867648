"""Give freed tensor memory back to the operating system at once.

glibc's malloc serves large blocks with ``mmap`` and unmaps them when freed, but after a large
block is freed it raises that threshold (up to 32 MB), so the next big tensors come from the heap
and stay in the process after they are freed. A session that rewrites a GPT-2's layers then keeps
about 0.4x of the model's bytes it no longer uses. Fixing the threshold at 1 MiB keeps the peak of
a GPT-2 session at 2.5x the model's fp32 bytes instead of 2.9x (bench/gpt2_scale.py). The app's
server, the CLI and job workers call :func:`release_freed_memory` once at start; elsewhere (not
glibc) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_MMAP_THRESHOLD = -3           # mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20


@functools.cache
def release_freed_memory() -> bool:
    """Fix glibc's mmap threshold at 1 MiB; True when it was set."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False
