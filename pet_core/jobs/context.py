"""What a job sees inside its worker process: a stop signal, a deadline and a progress board.

The server and the worker share nothing but the job's folder:

* ``status.json`` — written by the worker (atomically): state, progress, error, result;
* ``stop`` — created by the server to ask the job to stop at its next check.

So the protocol survives a crashed worker, needs no shared memory, and a page can read a
job's progress from any session or after a reload.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pet_core.atomic import atomic_write_text

STATUS_FILE = "status.json"
STOP_FILE = "stop"
# Live states a status file can hold; the runner adds "queued" and "cancelled" for jobs never started.
STATES = ("queued", "running", "done", "stopped", "failed", "cancelled")


class JobStopped(Exception):
    """Raised inside a task to end it early (stop asked, or the wall-clock cap reached)."""


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON so that readers never see half a file."""
    atomic_write_text(path, json.dumps(data, default=str), prefix=f".{path.name}.", mode=0o644)


def read_status(folder: Path) -> dict[str, Any]:
    """The job's last written status, or {} before the worker wrote one."""
    try:
        return json.loads((folder / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}


class JobContext:
    """Handed to a task: ``is_set()`` (stop wanted: asked or past the cap) and ``report(progress)``.

    ``is_set`` makes it a drop-in for the ``threading.Event`` that ``finetune(stop=...)`` polls.
    """

    def __init__(self, folder: str | Path, time_cap_s: float | None = None, report_every_s: float = 0.5) -> None:
        self.folder = Path(folder)
        self.started = time.monotonic()
        self.deadline = None if not time_cap_s else self.started + float(time_cap_s)
        self.report_every_s = report_every_s
        self.reason: str | None = None
        self._last_report = 0.0
        self._last_check = 0.0
        self.progress: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []

    def is_set(self) -> bool:
        """True once a stop was asked or the wall-clock cap is reached (checked at most every 0.2 s)."""
        if self.reason is not None:
            return True
        now = time.monotonic()
        if now - self._last_check < 0.2:
            return False
        self._last_check = now
        if (self.folder / STOP_FILE).exists():
            self.reason = "stopped on request"
        elif self.deadline is not None and now > self.deadline:
            self.reason = f"stopped at the server's time cap of {self.deadline - self.started:.0f} s per job"
        return self.reason is not None

    def check(self) -> None:
        """Raise :class:`JobStopped` when the job should end (for tasks without a stop hook)."""
        if self.is_set():
            raise JobStopped(self.reason)

    def report(self, progress: dict[str, Any], *, force: bool = False, keep: bool = False) -> None:
        """Publish the latest progress (rate-limited); ``keep`` also appends it to the history."""
        self.progress = progress
        if keep:
            self.history.append(progress)
        now = time.monotonic()
        if force or now - self._last_report >= self.report_every_s:
            self._last_report = now
            self.write("running")

    def write(self, state: str, **fields: Any) -> None:
        write_json_atomic(self.folder / STATUS_FILE, {
            "state": state, "progress": self.progress, "history": self.history[-500:],
            "elapsed_s": round(time.monotonic() - self.started, 2), "reason": self.reason,
            "pid": os.getpid(), **fields})
