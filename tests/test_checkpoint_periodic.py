"""Periodic fine-tuning checkpoints: written while training, atomically, and a killed run resumes.

In-process runs observe the file from the progress callback (no timing); the CLI is run in real
subprocesses that are killed with SIGKILL or stopped with SIGTERM once ``finetune.pt`` exists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pet_core.errors import PetError
from pet_core.finetune import checkpoint as checkpoint_module
from pet_core.finetune import finetune
from pet_core.finetune.checkpoint import checkpoint_path, load_checkpoint
from pet_core.layers import compressible_layers
from pet_core.loader import load_baseline, open_workbench
from pet_core.recipe import Recipe

ROOT = Path(__file__).resolve().parents[1]
MODEL = "lenet_300_100"
CPU = torch.device("cpu")
DEFAULT = {"prune": {"sparsity": 0.8}, "quantize": {"bits": 4}}
FT = {"steps": 40, "techniques": {"qat": {}}}


@pytest.fixture(scope="module")
def baseline():
    """Trains (or loads) the model into the session's cache once, so the subprocesses only load it."""
    return load_baseline(MODEL, "digits")


def run(baseline, ft: dict = FT, **kwargs):
    recipe = Recipe(model=MODEL, default=DEFAULT, finetune=ft)
    return finetune(open_workbench(baseline), recipe, baseline.dataset, device=CPU, **kwargs)


def stored_step(directory: Path) -> int:
    return torch.load(checkpoint_path(directory), weights_only=True)["step"]


# --- in process ----------------------------------------------------------------------------------------

def test_periodic_checkpoint_appears_during_the_run_and_resume_matches_uninterrupted(baseline, tmp_path):
    full = run(baseline)
    seen, copy_dir = {}, tmp_path / "at_step_15"

    def progress(row):          # rows at steps 10, 20, 30, 40; checkpoints after steps 5, 10, 15, ...
        seen[row["step"]] = stored_step(tmp_path / "run") if checkpoint_path(tmp_path / "run").exists() else None
        if row["step"] == 20:   # what a kill right now would leave behind
            copy_dir.mkdir()
            shutil.copy(checkpoint_path(tmp_path / "run"), checkpoint_path(copy_dir))

    done = run(baseline, progress=progress, checkpoint_dir=tmp_path / "run", checkpoint_every_steps=5,
               checkpoint_every_s=None)
    assert seen == {10: 5, 20: 15, 30: 25, 40: 35}          # written during the run, not only at its end
    assert done.report["finetune"]["checkpoint"] == {"path": str(checkpoint_path(tmp_path / "run")),
                                                     "step": 40, "written": True}
    assert stored_step(tmp_path / "run") == 40               # a finished run keeps its final state

    resumed = run(baseline, checkpoint_dir=copy_dir, resume=True)
    assert not resumed.stopped and resumed.report["finetune"]["steps"] == 40
    assert [h["step"] for h in resumed.history] == [10, 20, 30, 40]
    for name, w in compressible_layers(full.model).items():  # batches, lr, Adam moments: all restored
        torch.testing.assert_close(compressible_layers(resumed.model)[name].weight, w.weight, rtol=0, atol=1e-6)


def test_checkpoint_every_seconds_writes_after_steps(baseline, tmp_path):
    seen = {}

    def progress(row):
        seen[row["step"]] = stored_step(tmp_path)

    run(baseline, {"steps": 20}, progress=progress, checkpoint_dir=tmp_path, checkpoint_every_s=1e-9)
    assert seen[10] == 9          # due after every step; the report of step 10 comes before its write


def test_report_says_no_checkpoint_without_a_folder_and_bad_periods_are_refused(baseline, tmp_path):
    res = run(baseline, {"steps": 10})
    assert res.report["finetune"]["checkpoint"] == {"path": None, "step": None, "written": False}
    assert res.report["finetune"]["total_steps"] == 10
    for bad in ({"checkpoint_every_steps": 0}, {"checkpoint_every_steps": 2.5}, {"checkpoint_every_s": 0}):
        with pytest.raises(PetError, match="checkpoint_every"):
            run(baseline, {"steps": 10}, checkpoint_dir=tmp_path, **bad)


def test_a_write_that_dies_midway_leaves_the_previous_checkpoint(baseline, tmp_path, monkeypatch):
    run(baseline, {"steps": 10}, checkpoint_dir=tmp_path)
    before = checkpoint_path(tmp_path).read_bytes()

    def dies_midway(obj, f):
        f.write(b"half a checkpoint")
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(checkpoint_module.torch, "save", dies_midway)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        run(baseline, {"steps": 20}, checkpoint_dir=tmp_path, checkpoint_every_steps=5)
    assert checkpoint_path(tmp_path).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["finetune.pt"]      # no temporary file left


def test_an_unreadable_checkpoint_is_a_pet_error(tmp_path):
    checkpoint_path(tmp_path).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(PetError, match="cannot be read"):
        load_checkpoint(tmp_path, {})


# --- the CLI in a subprocess ---------------------------------------------------------------------------

def _recipe_file(directory: Path, steps: int) -> Path:
    path = directory / "recipe.json"
    path.write_text(json.dumps({"pet_recipe": 1, "model": MODEL, "dataset": "digits", "default": DEFAULT,
                                "finetune": {"steps": steps}}))
    return path


def _no_record() -> list[str]:
    """``--no-record`` where the CLI has it (else nothing: the run ledger lives in the test's PET_WORKSPACE)."""
    from pet_core.cli import build_parser

    try:
        build_parser().parse_args(["finetune", "--no-record"])
    except PetError:
        return []
    return ["--no-record"]


def _start(directory: Path, recipe: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ)                      # carries the session's hermetic PET_CACHE_DIR
    env["PET_WORKSPACE"] = str(directory / "workspace")
    env.setdefault("OMP_NUM_THREADS", "1")
    out = directory / "out"
    return subprocess.Popen([sys.executable, "-m", "pet_core", "finetune", "--model", MODEL, "--dataset", "digits",
                             "--recipe", str(recipe), "--out", str(out), "--json", *_no_record(), *extra],
                            cwd=ROOT, env=env, stdout=open(directory / "stdout", "w"),
                            stderr=open(directory / "stderr", "w"))


def _wait_for_checkpoint(proc: subprocess.Popen, path: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, f"exited {proc.returncode} before writing {path}"
        assert time.monotonic() < deadline, f"no checkpoint after {timeout_s} s"
        time.sleep(0.02)


def test_sigkill_then_resume_finishes_the_run(baseline, tmp_path):
    steps = 600
    recipe = _recipe_file(tmp_path, steps)
    proc = _start(tmp_path, recipe, "--checkpoint-every-steps", "20")
    _wait_for_checkpoint(proc, checkpoint_path(tmp_path / "out"))
    proc.kill()                                    # SIGKILL: no handler, no final write
    assert proc.wait(timeout=60) == -signal.SIGKILL
    killed_at = stored_step(tmp_path / "out")
    assert killed_at % 20 == 0 and 0 < killed_at < steps

    proc = _start(tmp_path, recipe, "--resume")
    assert proc.wait(timeout=600) == 0, (tmp_path / "stderr").read_text()
    report = json.loads((tmp_path / "stdout").read_text())
    f = report["finetune"]
    assert f["steps"] == f["total_steps"] == steps and not f["stopped"]
    assert f["checkpoint"] == {"path": str(checkpoint_path(tmp_path / "out")), "step": steps, "written": True}
    assert report["history"][-1]["step"] == steps
    assert report["history"][0]["step"] == 10      # the killed run's rows came back with the checkpoint


def test_sigterm_stops_at_the_next_step_and_writes_the_checkpoint(baseline, tmp_path):
    steps = 1_000_000                              # far more than it will run
    proc = _start(tmp_path, _recipe_file(tmp_path, steps), "--checkpoint-every-steps", "50")
    _wait_for_checkpoint(proc, checkpoint_path(tmp_path / "out"))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 128 + signal.SIGTERM
    stderr = (tmp_path / "stderr").read_text()
    where = checkpoint_path(tmp_path / "out")
    match = re.search(rf"SIGTERM: stopped at step (\d+)/{steps}; checkpoint written to (.+); resume with --resume",
                      stderr)
    assert match, stderr
    assert match.group(2) == str(where) and int(match.group(1)) == stored_step(tmp_path / "out") > 0
    report = json.loads((tmp_path / "stdout").read_text())
    assert report["finetune"]["stopped"] and report["finetune"]["checkpoint"]["written"]
    assert json.loads((tmp_path / "out" / "report.json").read_text())["finetune"]["steps"] == int(match.group(1))
