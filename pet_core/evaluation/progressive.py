"""Exact evaluation of a workbench's working copy in the background, cancelled by the next change.

The app shows an estimate at once and asks for the exact number here; the next slider move
cancels the evaluation still running (it stops between batches) before it rewrites the model.
One lock guards the working copy: held by the evaluation while it reads the weights and by
:meth:`ExactRunner.changing` while the session rewrites them. The thread never touches Streamlit;
the page polls :meth:`ExactRunner.value`.

>>> import torch
>>> from torch import nn
>>> from pet_core.recipe import Recipe
>>> from pet_core.workbench import Workbench
>>> wb = Workbench(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), torch.randn(8, 4), torch.zeros(8, dtype=torch.long))
>>> runner = ExactRunner(wb)
>>> with runner.changing():
...     _ = wb.apply(Recipe(default={"prune": {"sparsity": 0.5}}))
>>> runner.submit(wb.state_key()).join()
>>> runner.value(wb.state_key()) == wb.evaluate()
True
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
import weakref
from typing import Any, Callable, Iterator


from pet_core.evaluation.engine import Cancelled



_RUNNERS: "weakref.WeakSet[ExactRunner]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """At exit, cancel and join what still runs: a thread left inside ONNX Runtime aborts the process."""
    for runner in list(_RUNNERS):
        runner.close()
        runner.wait(10)


class ExactRunner:
    """Background exact evaluations of one workbench (one per session)."""

    def __init__(self, wb: Any) -> None:
        _RUNNERS.add(self)
        self.wb = wb
        self.lock = threading.Lock()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._values: dict[Any, float] = {}       # the latest key's value only
        self.error: str | None = None
        self.outcome: Any = None                  # what the latest on_done returned
        self.submitted_at: float | None = None    # perf_counter of the latest request and of its answer
        self.finished_at: float | None = None

    @contextlib.contextmanager
    def changing(self) -> Iterator[None]:
        """Cancel the running evaluation and hold the working copy while it is rewritten."""
        self._cancel.set()
        with self.lock:
            yield

    def submit(self, key: Any, on_done: Callable[[float], None] | None = None) -> threading.Thread:
        """Evaluate the working copy exactly in a new thread, for ``key`` (``wb.state_key()`` now).

        ``on_done(value)`` runs in that thread, holding the lock, when the value is ready (not when
        cancelled), its result kept as :attr:`outcome`; a newer
        :meth:`changing` cancels it, and a key that no longer describes the copy is not evaluated.
        """
        cancel = self._cancel = threading.Event()
        self._values, self.error, self.outcome = {}, None, None
        self.submitted_at, self.finished_at = time.perf_counter(), None

        def work() -> None:
            with self.lock:
                if cancel.is_set() or self.wb.state_key() != key:
                    return
                try:
                    value = self.wb.evaluate(cancel=cancel)
                except Cancelled:
                    return
                except Exception as exc:  # noqa: BLE001 - shown on the page, the thread must not die silently
                    self.error = f"{type(exc).__name__}: {exc}"
                    return
                if cancel.is_set():
                    return
                if on_done is not None:   # still under the lock: it may read the working copy
                    try:
                        self.outcome = on_done(value)
                    except Exception as exc:  # noqa: BLE001
                        self.error = f"{type(exc).__name__}: {exc}"
                self._values = {key: value}
                self.finished_at = time.perf_counter()

        self._thread = threading.Thread(target=work, name="pet-exact-eval", daemon=True)
        self._thread.start()
        return self._thread

    def value(self, key: Any) -> float | None:
        """The exact value for ``key`` once ready, else None."""
        return self._values.get(key)

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the running evaluation (and its ``on_done``) to end."""
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self) -> None:
        """Cancel whatever runs (the session ended)."""
        self._cancel.set()


__all__ = ["ExactRunner"]
