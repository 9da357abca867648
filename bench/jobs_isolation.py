"""A slider move while another session's job runs: worker process (today) against a server thread (before).

The same background work — a sweep over a large grid, evaluating configuration after configuration —
runs either in a ``JobRunner`` worker process (spawned, its own torch threads, nice 10) or in a thread
of the measuring process, as the app did before issue 9. Meanwhile the "server" moves a slider:
``Workbench.apply`` with a new sparsity plus a full evaluation. Rows:

* ``slider_during_job_worker`` / ``_thread``: median move with the job running; baseline: the same
  move with no job (measured in the same run, before and after). Ratio ≤ 1; closer to 1 is better.
* ``slider_worker_vs_thread``: the move during a worker job against the move during a thread job.
  Ratio > 1: the worker design slows a session's slider less.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time

from bench.common import Context, Result, median, p90
from pet_core.jobs import JobRunner
from pet_core.jobs.context import JobContext
from pet_core.jobs.tasks import sweep
from pet_core.ledger import Ledger
from pet_core.loader import load_baseline, open_workbench
from pet_core.recipe import Recipe

MODEL = "lenet_300_100"
JOB_MODEL = "mnist_cnn"       # the background job: convolutions keep a core busy
GRID = {"sparsities": [i / 100 for i in range(5, 100, 5)], "bits": [2, 3, 4, 5, 6, 7, 8]}


def _moves(wb, reps: int) -> list[float]:
    out = []
    for i in range(reps):
        recipe = Recipe(default={"prune": {"method": "magnitude", "scope": "global", "sparsity": 0.5 + 0.02 * (i % 20)},
                                 "quantize": {"bits": 8}})
        start = time.perf_counter()
        wb.apply(recipe)
        wb.evaluate()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def bench_isolation(ctx: Context) -> list[Result]:
    dataset = "mnist" if ctx.data_dir else "digits"
    base = load_baseline(MODEL, dataset, ctx.data_dir)
    load_baseline(JOB_MODEL, dataset, ctx.data_dir)          # cached before any job asks
    wb = open_workbench(base)
    _moves(wb, ctx.warmup)
    reps = ctx.reps
    workspace = tempfile.mkdtemp(prefix="pet_bench_ws_")
    ledger = Ledger(os.path.join(workspace, "ledger.sqlite"))
    kwargs = {"source": {"model": JOB_MODEL, "dataset": dataset, "data_dir": ctx.data_dir},
              "recipe": Recipe().to_dict(), "ledger_path": str(ledger.path), "owner": "bench", **GRID}

    quiet = _moves(wb, reps)

    runner = JobRunner(max_workers=1, time_cap_s=3600)
    job = runner.submit("sweep", kwargs, owner="bench")
    while not (job.status().get("progress") or {}).get("step"):    # the worker is evaluating
        time.sleep(0.2)
    worker = _moves(wb, reps)
    runner.cancel(job.id)
    runner.shutdown()

    folder = tempfile.mkdtemp(prefix="pet_bench_job_")
    stop = JobContext(folder)
    thread = threading.Thread(target=sweep, args=(stop,), kwargs=kwargs, daemon=True)
    thread.start()
    while not (stop.progress or {}).get("step"):
        time.sleep(0.2)
    threaded = _moves(wb, reps)
    open(os.path.join(folder, "stop"), "w").close()
    thread.join()

    quiet += _moves(wb, reps)
    ctx.log(f"  quiet {median(quiet):.1f} ms, worker job {median(worker):.1f} ms, thread job {median(threaded):.1f} ms")
    common = dict(unit="ms", reps=reps, group="jobs")
    return [
        Result("slider_during_job_worker", median(worker), baseline=median(quiet), p90=p90(worker),
               baseline_p90=p90(quiet), baseline_desc=f"the same move with no job ({MODEL}, {dataset})",
               notes=f"a {JOB_MODEL} sweep in a JobRunner worker process (spawned, nice 10)", **common),
        Result("slider_during_job_thread", median(threaded), baseline=median(quiet), p90=p90(threaded),
               baseline_p90=p90(quiet), baseline_desc=f"the same move with no job ({MODEL}, {dataset})",
               notes=f"the same {JOB_MODEL} sweep in a thread of the server process (the design before issue 9)",
               **common),
        Result("slider_worker_vs_thread", median(worker), baseline=median(threaded), p90=p90(worker),
               baseline_p90=p90(threaded), baseline_desc="the move during the same job run in a server thread",
               notes="ratio > 1: a job in a worker process slows a session's slider less than one in a thread",
               **common),
    ]
