"""A job runner over a pool of worker processes, with per-owner limits and a wall-clock cap.

Jobs (first-use training, fine-tunes, sweeps) run in ``spawn``-ed worker processes, never in the
server's threads: a job sets its own torch threads and seeds, and cannot stall or corrupt a model
the server is using. An owner (a browser session) has at most ``running_per_owner`` job running
and ``queued_per_owner`` waiting; more is refused with a message. Stopping is cooperative: the
runner creates the job's ``stop`` file and the task ends at its next check (see ``context``).

Example:
    runner = JobRunner(max_workers=1)
    job = runner.submit("pretrain", {"source": {"model": "lenet_300_100", "dataset": "digits"}},
                        owner="session-1", label="lenet_300_100 on digits")
    job.status()["state"]   # "queued" → "running" → "done"
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pet_core.errors import PetError
from pet_core.jobs.context import STOP_FILE, read_status

FINAL_STATES = ("done", "stopped", "failed", "cancelled")
JOB_NICENESS = 10


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass
class Job:
    """One submitted job; ``status()`` merges the runner's view with what the worker wrote."""

    id: str
    task: str
    owner: str
    label: str
    folder: Path
    kwargs: dict[str, Any]
    submitted_at: float = field(default_factory=time.time)
    future: Future | None = None
    state: str = "queued"          # the runner's view: queued → submitted → finished/cancelled
    result: dict[str, Any] | None = None
    error: str | None = None

    def status(self) -> dict[str, Any]:
        written = read_status(self.folder)
        if self.state == "cancelled":
            return {**written, "state": "cancelled", "reason": written.get("reason") or "cancelled before it started"}
        if self.state == "finished":
            state = written.get("state")
            if state not in FINAL_STATES:      # the worker died before it could write its end
                state = "failed" if self.error else "done"
            return {**written, "state": state, "result": self.result, "error": self.error or written.get("error")}
        if not written or self.state == "queued":
            return {"state": "queued", "progress": {}, "history": []}
        return written

    @property
    def done(self) -> bool:
        return self.state in ("finished", "cancelled")


def _watch_parent(parent_pid: int) -> None:
    """In a worker: exit when the server that started it is gone, instead of lingering as an orphan."""
    def watch() -> None:
        while True:
            time.sleep(2.0)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, name="pet-parent-watch", daemon=True).start()


def _run_in_worker(task: str, kwargs: dict[str, Any], folder: str, time_cap_s: float | None,
                   threads: int) -> dict[str, Any]:
    """The worker's entry point: set this process's threads, run the task, write its final status."""
    import torch

    from pet_core.jobs.context import JobContext, JobStopped
    from pet_core.jobs.tasks import TASKS, _one_line
    from pet_core.memory import release_freed_memory

    release_freed_memory()
    torch.set_num_threads(max(1, threads))
    try:
        os.nice(JOB_NICENESS)     # a job yields the CPU to the sessions' sliders
    except OSError:
        pass
    ctx = JobContext(folder, time_cap_s)
    ctx.write("running")
    try:
        result = TASKS[task](ctx, **kwargs)
    except JobStopped:
        ctx.write("stopped")
        return {"stopped_reason": ctx.reason}
    except BaseException as exc:   # reported on the page; the server process is unaffected
        ctx.write("failed", error=_one_line(exc))
        raise
    ctx.write("stopped" if ctx.reason else "done", result=result)
    return result


@contextlib.contextmanager
def _spawnable_main():
    """Hide ``__main__`` from ``spawn`` while workers start: they need only ``pet_core``, and re-running
    the server's main module (a script without a ``__main__`` guard, ``python -``) would be wrong."""
    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__file__", "__spec__") if hasattr(main, k)}
    for k in saved:
        setattr(main, k, None) if k == "__spec__" else delattr(main, k)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)


class JobRunner:
    """Owns the worker pool and every job's folder (removed when the job is forgotten)."""

    def __init__(self, max_workers: int | None = None, *, running_per_owner: int = 1, queued_per_owner: int = 1,
                 time_cap_s: float | None = None, threads_per_job: int | None = None,
                 root: str | Path | None = None) -> None:
        self.max_workers = max_workers or int(_env_float("PET_MAX_JOBS", 1))
        self.running_per_owner, self.queued_per_owner = running_per_owner, queued_per_owner
        self.time_cap_s = time_cap_s if time_cap_s is not None else _env_float("PET_JOB_TIME_CAP_S", 1800)
        self.threads_per_job = threads_per_job or max(1, (os.cpu_count() or 2) // max(2, self.max_workers + 1))
        self.root = Path(root or tempfile.mkdtemp(prefix="pet_jobs_"))
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._jobs: dict[str, Job] = {}
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.max_workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_watch_parent, initargs=(os.getpid(),))
        return self._pool

    # ------------------------------------------------------------------ submitting

    def submit(self, task: str, kwargs: dict[str, Any], *, owner: str, label: str = "") -> Job:
        """Queue ``task`` for ``owner``; PetError when the owner already has as many jobs as allowed."""
        with self._lock:
            mine = [j for j in self._jobs.values() if j.owner == owner and not j.done]
            if len(mine) >= self.running_per_owner + self.queued_per_owner:
                raise PetError(f"you already have {len(mine)} job(s) running or waiting (the limit is "
                               f"{self.running_per_owner} running + {self.queued_per_owner} queued); "
                               "stop one or wait for it to finish")
            job_id = f"{next(self._ids)}-{task}"
            folder = self.root / job_id
            folder.mkdir(parents=True)
            job = Job(job_id, task, owner, label, folder, kwargs)
            self._jobs[job_id] = job
            self._dispatch(owner)
            return job

    def _dispatch(self, owner: str) -> None:
        """Hand the owner's oldest queued job to the pool when fewer than the limit of theirs run."""
        with self._lock:
            mine = [j for j in self._jobs.values() if j.owner == owner]
            running = sum(j.state == "submitted" for j in mine)
            for job in mine:
                if running >= self.running_per_owner:
                    return
                if job.state == "queued":
                    args = (_run_in_worker, job.task, job.kwargs, str(job.folder), self.time_cap_s,
                            self.threads_per_job)
                    with _spawnable_main():
                        try:
                            job.future = self._executor().submit(*args)
                        except (BrokenProcessPool, RuntimeError):
                            self._pool = None       # a worker died hard: start a fresh pool
                            job.future = self._executor().submit(*args)
                    job.state = "submitted"
                    running += 1
                    job.future.add_done_callback(lambda f, j=job: self._finished(j, f))

    def _finished(self, job: Job, future: Future) -> None:
        with self._lock:
            if future.cancelled():
                job.state = "cancelled"
            else:
                exc = future.exception()
                if isinstance(exc, BrokenProcessPool):
                    self._pool = None
                    job.error = "the worker process died (out of memory or killed)"
                elif exc is not None:
                    job.error = read_status(job.folder).get("error") or f"{type(exc).__name__}: {exc}"
                else:
                    job.result = future.result()
                job.state = "finished"
        self._dispatch(job.owner)

    # ------------------------------------------------------------------ stopping

    def cancel(self, job_id: str) -> None:
        """Stop a job: a queued one never starts, a running one ends at its next check."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.done:
                return
            (job.folder / STOP_FILE).touch()
            if job.state == "queued" or (job.future is not None and job.future.cancel()):
                job.state = "cancelled"
        if job is not None:
            self._dispatch(job.owner)

    def cancel_owner(self, owner: str) -> int:
        """Stop every job of ``owner`` (their session ended); returns how many were stopped."""
        with self._lock:
            ids = [j.id for j in self._jobs.values() if j.owner == owner and not j.done]
        for job_id in ids:
            self.cancel(job_id)
        return len(ids)

    def forget(self, job_id: str) -> None:
        """Drop a finished job and its folder."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or not job.done:
                return
            del self._jobs[job_id]
        shutil.rmtree(job.folder, ignore_errors=True)

    # ------------------------------------------------------------------ reading

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def jobs(self, owner: str | None = None) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if owner is None or j.owner == owner]

    def owners(self) -> set[str]:
        with self._lock:
            return {j.owner for j in self._jobs.values() if not j.done}

    def position(self, job: Job) -> int:
        """How many submitted jobs are ahead of ``job`` in the pool (0 when it runs or is next)."""
        with self._lock:
            if job.state != "submitted" or read_status(job.folder):
                return 0
            ahead = [j for j in self._jobs.values() if j.state == "submitted" and j.submitted_at < job.submitted_at]
            return max(0, len(ahead) - self.max_workers + 1)

    def shutdown(self) -> None:
        for owner in list(self.owners()):
            self.cancel_owner(owner)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(self.root, ignore_errors=True)
