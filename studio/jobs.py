"""Background jobs: plain threads that never call Streamlit, read by a fragment.

A job stops when asked, and when its session ends: the session holds a ``JobHandle`` whose
finaliser sets the job's stop flag once Streamlit drops the session state.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from torch import nn

from pet_core.pareto import run_record
from pet_core.recipe import Recipe
from pet_core.workbench import Workbench


class SweepJob:
    """Evaluate a grid of sparsity × bits on a private working copy, appending points as it goes."""

    def __init__(self, baseline: nn.Module, x, y, base: Recipe, sparsities: list[float], bits: list[int]) -> None:
        self.grid = [(s, b) for s in sparsities for b in bits]
        self.points: list[dict[str, Any]] = []
        self.error: str | None = None
        self.stop_flag = threading.Event()
        self._args = (baseline, x, y, base)
        self.thread = threading.Thread(target=self._run, name="pet-sweep", daemon=True)

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()

    def start(self) -> "SweepJob":
        self.thread.start()
        return self

    def _run(self) -> None:
        baseline, x, y, base = self._args
        try:
            wb = Workbench(baseline, x, y)
            for sparsity, bits in self.grid:
                if self.stop_flag.is_set():
                    return
                default = dict(base.default)
                default["prune"] = {**default.get("prune", {"method": "magnitude", "scope": "global"}),
                                    "sparsity": sparsity}
                default["prune"].pop("threshold", None)
                default.pop("share", None)
                default["quantize"] = {**default.get("quantize", {}), "bits": bits}
                wb.apply(base.replace(default=default))
                self.points.append(run_record(wb.report(), "sweep"))
        except Exception as exc:  # reported on the page by the fragment
            self.error = f"{type(exc).__name__}: {exc}"


class JobHandle:
    """Held in session state; when the session ends and it is collected, the job is stopped."""

    def __init__(self, job: "SweepJob | Any") -> None:   # anything with a stop_flag Event
        self.job = job
        weakref.finalize(self, job.stop_flag.set)
