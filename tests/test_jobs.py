"""The job runner: worker processes, per-owner limits, stop, the wall-clock cap, failures, the ledger.

Oracles: the ledger rows a job writes, the engine's own numbers for the same recipe, and the
server process's torch settings (a job must not change them).
"""

import time

import pytest
import torch

from pet_core.errors import PetError
from pet_core.jobs import JobRunner, tasks
from pet_core.jobs.context import STOP_FILE, JobContext
from pet_core.ledger import Ledger
from pet_core.loader import load_baseline, open_workbench
from pet_core.recipe import Recipe

SOURCE = {"model": "lenet_300_100", "dataset": "digits"}
GRID = {"sparsities": [0.1 * i for i in range(1, 10)], "bits": [2, 3, 4, 5, 6, 8]}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("PET_WORKSPACE", str(tmp_path_factory.mktemp("ws")))
    load_baseline("lenet_300_100", "digits")       # in the model cache before any worker asks
    yield Ledger()
    mp.undo()


@pytest.fixture(scope="module")
def runner(workspace):
    r = JobRunner(max_workers=1)
    yield r
    r.shutdown()


def wait(job, limit_s: float = 180) -> dict:
    deadline = time.monotonic() + limit_s
    while not job.done and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job.done, job.status()
    return job.status()


def sweep_kwargs(ledger: Ledger, owner: str, **grid) -> dict:
    recipe = Recipe(default={"prune": {"method": "magnitude", "scope": "global", "sparsity": 0.5}}).to_dict()
    return {"source": SOURCE, "recipe": recipe, "ledger_path": str(ledger.path), "owner": owner,
            **(grid or {"sparsities": [0.5, 0.9], "bits": [4]})}


def test_a_sweep_records_every_point_with_the_engines_numbers(runner, workspace):
    threads = torch.get_num_threads()
    job = runner.submit("sweep", sweep_kwargs(workspace, "alice"), owner="s1")
    status = wait(job)
    assert status["state"] == "done", status
    assert torch.get_num_threads() == threads      # the worker set its own threads, not ours
    runs = workspace.runs(kinds=["sweep"], owner="alice")
    assert len(runs) == 2 and status["result"]["run_ids"] == [r["id"] for r in runs]
    base = load_baseline("lenet_300_100", "digits")
    wb = open_workbench(base)
    for run in runs:
        wb.apply(Recipe.from_dict(run["recipe"]))
        assert run["metrics"]["accuracy"] == wb.report()["compressed"]["accuracy"]


def test_an_owner_gets_one_running_and_one_queued(runner, workspace):
    first = runner.submit("sweep", sweep_kwargs(workspace, "bob", **GRID), owner="s2")
    second = runner.submit("sweep", sweep_kwargs(workspace, "bob"), owner="s2")
    with pytest.raises(PetError, match="1 running \\+ 1 queued"):
        runner.submit("sweep", sweep_kwargs(workspace, "bob"), owner="s2")
    other = runner.submit("sweep", sweep_kwargs(workspace, "carol"), owner="s3")   # others are not blocked
    assert second.status()["state"] == "queued"
    runner.cancel(second.id)                     # queued: never starts
    assert second.status()["state"] == "cancelled"
    runner.cancel(first.id)                      # running: stops at its next check
    assert wait(first)["state"] in ("stopped", "cancelled")
    assert wait(other)["state"] == "done"


def test_stop_ends_a_running_job_and_keeps_what_it_did(runner, workspace):
    job = runner.submit("sweep", sweep_kwargs(workspace, "dave", **GRID), owner="s4")
    deadline = time.monotonic() + 120
    while (job.status().get("progress") or {}).get("step", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    runner.cancel(job.id)
    status = wait(job)
    assert status["state"] == "stopped" and status["reason"] == "stopped on request"
    done = len(workspace.runs(kinds=["sweep"], owner="dave"))
    assert 2 <= done < len(GRID["sparsities"]) * len(GRID["bits"])


def test_the_wall_clock_cap_stops_a_job(workspace):
    r = JobRunner(max_workers=1, time_cap_s=0.5)
    try:
        job = r.submit("sweep", sweep_kwargs(workspace, "erin", **GRID), owner="s5")
        status = wait(job)
        assert status["state"] == "stopped" and "time cap" in status["reason"], status
    finally:
        r.shutdown()


def test_a_failing_job_reports_one_line_and_the_runner_goes_on(runner, workspace):
    job = runner.submit("pretrain", {"source": {"model": "no_such_model", "dataset": "digits"}}, owner="s6")
    status = wait(job)
    assert status["state"] == "failed"
    assert "no_such_model" in status["error"] and "\n" not in status["error"]
    again = runner.submit("sweep", sweep_kwargs(workspace, "frank"), owner="s6")
    assert wait(again)["state"] == "done"


def test_a_session_that_ends_has_its_jobs_cancelled(runner, workspace):
    a = runner.submit("sweep", sweep_kwargs(workspace, "gina", **GRID), owner="gone")
    b = runner.submit("sweep", sweep_kwargs(workspace, "gina"), owner="gone")
    assert runner.cancel_owner("gone") == 2
    assert wait(b)["state"] == "cancelled"
    assert wait(a)["state"] in ("stopped", "cancelled")
    assert "gone" not in runner.owners()


class StopAsked(JobContext):
    """A job context whose stop file appears after ``n`` progress reports (as the Stop button writes it)."""

    def __init__(self, folder, n: int) -> None:
        super().__init__(folder)
        self.n = n

    def report(self, progress, **kw) -> None:
        super().report(progress, **kw)
        self.n -= 1
        if self.n == 0:
            (self.folder / STOP_FILE).touch()
            self._last_check = 0.0


def test_a_stopped_sensitivity_task_records_nothing(workspace, tmp_path):
    ctx = StopAsked(tmp_path, 3)
    out = tasks.sensitivity(ctx, SOURCE, {"sparsities": [0.5, 0.9], "bits": [8, 4]}, str(workspace.path), "hana")
    assert out["complete"] is False and out["run_id"] is None and out["stopped_reason"] == "stopped on request"
    assert workspace.runs(kinds=["sensitivity"], owner="hana") == []


def test_a_plan_job_records_its_run_under_the_analysis(runner, workspace):
    small = {"sparsities": [0.5, 0.9], "bits": [8, 4]}
    job = runner.submit("plan", {"source": SOURCE, "target": {"ratio": 10}, "ladder": small,
                                 "ledger_path": str(workspace.path), "owner": "hana"}, owner="s8")
    status = wait(job)
    assert status["state"] == "done", status
    out = status["result"]
    run = workspace.get(out["run_id"])
    assert run["owner"] == "hana" and run["metrics"]["accuracy"] == out["measured"]["accuracy"]
    assert workspace.get(run["parent_id"])["kind"] == "sensitivity" and out["met"]
    wb = open_workbench(load_baseline("lenet_300_100", "digits"))
    wb.apply(Recipe.from_dict(out["recipe"]))
    assert wb.evaluate() == out["measured"]["accuracy"]
    assert sum(r.size_bytes for r in wb.sizes()) == out["measured"]["size_bytes"]
