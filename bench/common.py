"""Shared pieces of the benchmarks: timing, result rows, machine description.

Timing rules (every benchmark follows them):

* ``time.perf_counter`` around the measured call only; set-up is outside the timed region;
* warm-up calls first (not recorded), then ``reps`` recorded calls;
* the value reported is the median (p90 kept as well), in milliseconds;
* a result's baseline is measured in the same run, interleaved with the measured thing
  (``measure_pair``) so that load from other processes hits both alike.
"""

from __future__ import annotations

import datetime as _dt
import gc
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

BENCH_THREADS = 2  # the goals are stated for 2 cores


@dataclass
class Context:
    """What every benchmark gets from the runner."""

    quick: bool = False
    reps: int = 20          # recorded repetitions (>= 20 unless --quick)
    warmup: int = 3         # unrecorded calls before the recorded ones
    data_dir: str | None = None
    log: Callable[[str], None] = print


@dataclass
class Goal:
    text: str
    met: bool


@dataclass
class Result:
    """One row of results.json. ``ratio = baseline / value`` (> 1: faster than the baseline)."""

    name: str
    value: float
    unit: str
    baseline: float | None = None
    p90: float | None = None
    min: float | None = None
    baseline_p90: float | None = None
    baseline_min: float | None = None
    baseline_desc: str = ""
    goals: list[Goal] = field(default_factory=list)
    notes: str = ""
    reps: int = 0
    group: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.value:
            return None
        return self.baseline / self.value

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "value": _round(self.value),
            "unit": self.unit,
            "baseline": _round(self.baseline),
            "ratio": _round(self.ratio),
        }
        if self.goals:
            d["goal"] = "; ".join(g.text for g in self.goals)
            d["met"] = all(g.met for g in self.goals)
            d["goals"] = [{"goal": g.text, "met": g.met} for g in self.goals]
        if self.p90 is not None:
            d["p90"] = _round(self.p90)
        if self.min is not None:
            d["min"] = _round(self.min)
        if self.baseline_p90 is not None:
            d["baseline_p90"] = _round(self.baseline_p90)
        if self.baseline_min is not None:
            d["baseline_min"] = _round(self.baseline_min)
        if self.baseline_desc:
            d["baseline_desc"] = self.baseline_desc
        if self.notes:
            d["notes"] = self.notes
        d["reps"] = self.reps
        d["group"] = self.group
        return d


@dataclass
class Row(Result):
    """A result row with an optional ratio direction and a markdown block for RESULTS.md."""

    higher_is_better: bool = False     # True (accuracy, throughput): ratio = value / baseline (> 1: better)
    section: str = ""                  # a markdown section bench/run.py appends to RESULTS.md
    extra: dict | None = None          # more keys for results.json (wall_s, cpu_s, ...)

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.value:
            return None
        return self.value / self.baseline if self.higher_is_better else self.baseline / self.value

    def as_dict(self) -> dict[str, Any]:
        d = super().as_dict()
        if self.section:
            d["section"] = self.section
        if self.extra:
            d.update(self.extra)
        return d

def _round(x: float | None) -> float | None:
    if x is None:
        return None
    return float(f"{x:.4g}")


# --- timing -------------------------------------------------------------------------------------

def median(xs: list[float]) -> float:
    return statistics.median(xs)


def p90(xs: list[float]) -> float:
    """90th percentile (nearest rank) of a non-empty list."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(0.9 * len(s))) - 1))]


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def measure(fn: Callable[[], Any], reps: int, warmup: int) -> list[float]:
    """Milliseconds of ``reps`` calls of ``fn`` after ``warmup`` unrecorded calls."""
    for _ in range(warmup):
        fn()
    gc.collect()
    return [timed(fn) for _ in range(reps)]


def measure_pair(fa: Callable[[], Any], fb: Callable[[], Any], reps: int, warmup: int
                 ) -> tuple[list[float], list[float]]:
    """Time ``fa`` and ``fb`` interleaved (a b, b a, a b, ...): same load, same run, no order bias."""
    for _ in range(warmup):
        fa()
        fb()
    gc.collect()
    ta, tb = [], []
    for i in range(reps):
        if i % 2 == 0:
            ta.append(timed(fa))
            tb.append(timed(fb))
        else:
            tb.append(timed(fb))
            ta.append(timed(fa))
    return ta, tb


def measure_many(fns: dict[Any, Callable[[], Any]], reps: int, warmup: int,
                 prepare: dict[Any, Callable[[], Any]] | None = None) -> dict[Any, list[float]]:
    """Time each of ``fns`` ``reps`` times, interleaved in rotating order (round ``i`` starts with the
    ``i``-th function), after ``warmup`` unrecorded rounds; ``prepare[name]()``, when given, runs
    untimed right before each call of ``fns[name]`` (e.g. a slider move before timing its evaluation).
    Returns the milliseconds per name. With two functions this is :func:`measure_pair`'s a b, b a order.

    >>> calls = []
    >>> ms = measure_many({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 2, 0,
    ...                   prepare={"b": lambda: calls.append("prep")})
    >>> calls, [len(v) for v in ms.values()]
    (['a', 'prep', 'b', 'prep', 'b', 'a'], [2, 2])
    """
    names = list(fns)
    prepare = prepare or {}

    def call(name: Any) -> float:
        if name in prepare:
            prepare[name]()
        return timed(fns[name])

    for _ in range(warmup):
        for name in names:
            call(name)
    gc.collect()
    out: dict[Any, list[float]] = {n: [] for n in names}
    for i in range(reps):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            out[name].append(call(name))
    return out


def setup_torch() -> None:
    torch.set_num_threads(BENCH_THREADS)


# --- machine ------------------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu() -> str:
    if torch.cuda.is_available():
        return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().replace("\n", ", ") + " (not used: torch is a CPU build)"
    except (OSError, subprocess.SubprocessError):
        pass
    return "none"


def load_avg() -> str:
    """The 1/5/15-minute load averages: above the core count, other processes competed for the CPU."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def machine() -> dict[str, Any]:
    """CPU model, cores, torch version and threads, GPU, date."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    import numpy

    return {
        "cpu": _cpu_model(),
        "cores_usable": usable,
        "cores_total": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "gpu": _gpu(),
        "load_avg": load_avg(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
