"""Fine-tuning jobs for the app: a server-wide queue of plain threads, read by fragments.

At most ``PET_MAX_JOBS`` (default 1) run at once; the others wait in order and see their place.
A job whose session ended is stopped (the session holds a ``JobHandle``, see ``studio.jobs``).
Threads never call Streamlit.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from typing import Any

from pet_core.data import Dataset
from pet_core.finetune import finetune
from pet_core.recipe import Recipe
from pet_core.workbench import Workbench


class FinetuneJob:
    """One fine-tuning run: waits for a slot, trains, keeps its progress and result."""

    def __init__(self, queue: "JobQueue", wb: Workbench, recipe: Recipe, dataset: Dataset, label: str) -> None:
        self.queue, self.wb, self.recipe, self.dataset, self.label = queue, wb, recipe, dataset, label
        self.history: list[dict[str, Any]] = []
        self.stop_flag = threading.Event()
        self.result = None
        self.error: str | None = None
        self.state = "queued"       # queued -> running -> done | stopped | failed
        self.started_at: float | None = None
        self.thread = threading.Thread(target=self._run, name=f"pet-finetune-{label}", daemon=True)

    @property
    def done(self) -> bool:
        return self.state in ("done", "stopped", "failed")

    def _run(self) -> None:
        if not self.queue.acquire(self.stop_flag):
            self.state = "stopped"          # stopped while waiting: never started
            return
        try:
            self.state, self.started_at = "running", time.time()
            self.result = finetune(self.wb, self.recipe, self.dataset, progress=self.history.append,
                                   stop=self.stop_flag)
            self.state = "stopped" if self.result.stopped else "done"
        except Exception as exc:  # shown on the page; the loop wrote a checkpoint
            self.error = f"{type(exc).__name__}: {exc}"
            self.state = "failed"
            traceback.print_exc()
        finally:
            self.queue.release()

    def eta_s(self) -> float | None:
        """Seconds left, from the pace so far."""
        if not self.history or self.started_at is None:
            return None
        last = self.history[-1]
        done = last.get("step", 0) / max(1, last.get("steps", 1))
        return None if done <= 0 else (time.time() - self.started_at) * (1 - done) / done


class JobQueue:
    """Shared by all sessions: a semaphore of ``max_jobs`` and the waiting order."""

    def __init__(self, max_jobs: int | None = None) -> None:
        self.max_jobs = max_jobs or int(os.environ.get("PET_MAX_JOBS", "1"))
        self._sem = threading.Semaphore(self.max_jobs)
        self._lock = threading.Lock()
        self.jobs: list[FinetuneJob] = []

    def submit(self, job: FinetuneJob) -> FinetuneJob:
        with self._lock:
            self.jobs = [j for j in self.jobs if not j.done] + [job]
        job.thread.start()
        return job

    def position(self, job: FinetuneJob) -> int:
        """0 when running; k when k jobs are ahead of it."""
        with self._lock:
            waiting = [j for j in self.jobs if j.state == "queued"]
            running = sum(j.state == "running" for j in self.jobs)
        if job.state != "queued":
            return 0
        return waiting.index(job) + running if job in waiting else 0

    def acquire(self, stop_flag: threading.Event) -> bool:
        """Wait for a free slot; False when the job is stopped before one frees up."""
        while not self._sem.acquire(timeout=0.5):
            if stop_flag.is_set():
                return False
        return True

    def release(self) -> None:
        self._sem.release()
