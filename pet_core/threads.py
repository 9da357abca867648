"""How many threads one request may use on a shared server.

On a server that several people share, every request competes for the same few cores. Intra-op
parallelism then hurts: OpenMP's workers spin and wait for each other while another session holds
the core, and an element-wise op on a quarter-million weights took 4 ms with 2 threads on 2 busy
cores against 0.2 ms with one (a slider move on lenet_300_100: 170 ms against 12 ms). The app's
server therefore runs torch (and ONNX Runtime, which reads torch's setting) with one intra-op thread
unless ``PET_TORCH_THREADS`` says otherwise; sessions run in parallel on the other cores instead.
Fine-tuning workers (separate processes) set their own.
"""

from __future__ import annotations

import functools
import os

import torch

THREADS_ENV = "PET_TORCH_THREADS"


@functools.cache
def configure_server_threads() -> int:
    """Set torch's intra-op threads for the app's process (once); returns the number set."""
    try:
        threads = max(1, int(os.environ.get(THREADS_ENV, "1")))
    except ValueError:
        threads = 1
    torch.set_num_threads(threads)
    return threads


__all__ = ["THREADS_ENV", "configure_server_threads"]
