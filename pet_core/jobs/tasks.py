"""The tasks a worker process runs: first-use training, fine-tuning, sweeps, sensitivity analyses, plans.

Each task takes a :class:`JobContext` plus plain data (names, recipe dicts, paths), so it can be
sent to another process; it loads what it needs itself, never touches a model of the server
process, and records what it produced in the run ledger.
"""

from __future__ import annotations

from typing import Any

from pet_core.jobs.context import JobContext, JobStopped


def _load(source: dict[str, Any], ctx: JobContext | None = None):
    from pet_core.runs import load_source

    def progress(event: dict) -> None:
        if ctx is not None:
            ctx.check()
            ctx.report({"stage": "training the baseline", **event})

    return load_source(source["model"], source.get("dataset"), source.get("data_dir"), arch=source.get("arch"),
                       task=source.get("task"), trust_code=bool(source.get("trust_code")), progress=progress)


def pretrain(ctx: JobContext, source: dict[str, Any]) -> dict[str, Any]:
    """Train (or load) a zoo model so that the server finds it in the model cache."""
    baseline = _load(source, ctx)
    return {"accuracy": baseline.info.get("accuracy"), "cached": baseline.info.get("cached")}


def finetune(ctx: JobContext, source: dict[str, Any], recipe: dict[str, Any], ledger_path: str, run_id: int,
             owner: str, checkpoint_dir: str | None = None) -> dict[str, Any]:
    """Fine-tune ``recipe`` on the source and record the result (and its weights) as run ``run_id``."""
    from pet_core.finetune import finetune as run_finetune
    from pet_core.ledger import Ledger
    from pet_core.loader import open_workbench
    from pet_core.recipe import Recipe
    from pet_core.runs import record_finetune

    ledger = Ledger(ledger_path)
    ledger.update(run_id, status="running")
    try:
        baseline = _load(source)
        wb = open_workbench(baseline)

        def progress(event: dict) -> None:
            ctx.report({"stage": "fine-tuning", **event}, keep=True)

        kwargs = {"checkpoint_dir": checkpoint_dir} if checkpoint_dir else {}
        result = run_finetune(wb, Recipe.from_dict(recipe), baseline.dataset, progress=progress, stop=ctx, **kwargs)
        record_finetune(ledger, baseline, result, owner=owner, run_id=run_id)
    except BaseException as exc:
        ledger.update(run_id, status="failed", error=_one_line(exc))
        raise
    run = ledger.get(run_id)
    name = run["metrics"].get("metric", "accuracy")
    return {"run_id": run_id, "metric": name, name: run["metrics"].get(name), "stopped_reason": ctx.reason,
            "status": run["status"]}


def sweep(ctx: JobContext, source: dict[str, Any], recipe: dict[str, Any], sparsities: list[float],
          bits: list[int], ledger_path: str, owner: str) -> dict[str, Any]:
    """Evaluate a sparsity × bits grid around ``recipe``; every point becomes a "sweep" run."""
    from pet_core.ledger import Ledger
    from pet_core.loader import open_workbench
    from pet_core.recipe import Recipe
    from pet_core.runs import record_evaluation

    ledger = Ledger(ledger_path)
    baseline = _load(source)
    wb = open_workbench(baseline)
    base = Recipe.from_dict(recipe)
    grid = [(s, b) for s in sparsities for b in bits]
    ids = []
    for i, (sparsity, b) in enumerate(grid):
        if ctx.is_set():
            break
        wb.apply(base.replace(default=sweep_default(base.to_dict()["default"], sparsity, b), finetune={}))
        ids.append(record_evaluation(ledger, baseline, wb.report(), owner=owner, kind="sweep"))
        ctx.report({"stage": "sweep", "step": i + 1, "steps": len(grid)}, force=True)
    return {"run_ids": ids, "points": len(ids), "of": len(grid), "stopped_reason": ctx.reason}


def sweep_default(default: dict[str, Any], sparsity: float, bits: int) -> dict[str, Any]:
    """``default`` with magnitude pruning at ``sparsity`` and ``bits``-bit quantization (sharing off)."""
    from pet_core.methods import METHODS

    out = {k: dict(v) for k, v in default.items()}
    prune = out.get("prune", {"method": "magnitude", "scope": "global"})
    if "sparsity" not in {f.name for f in METHODS[prune.get("method", "magnitude")].config.data_fields()}:
        prune = {"method": "magnitude", "scope": "global"}          # a pattern (N:M) has no sparsity to sweep
    prune = {**prune, "sparsity": sparsity}
    prune.pop("threshold", None)
    out["prune"] = prune
    out.pop("share", None)
    out["quantize"] = {**out.get("quantize", {}), "bits": bits}
    return out


def sensitivity(ctx: JobContext, source: dict[str, Any], ladder: dict[str, Any], ledger_path: str,
                owner: str) -> dict[str, Any]:
    """Per-layer sensitivity of the source (cached in the ledger per model, dataset and ladder)."""
    from pet_core.ledger import Ledger
    from pet_core.plan_runs import sensitivity_run
    from pet_core.sensitivity import SensitivityConfig

    def progress(event: dict) -> None:
        ctx.report({**event, "stage": f"sensitivity: {event.get('stage', '')}"}, keep=True)

    result = sensitivity_run(Ledger(ledger_path), _load(source, ctx), SensitivityConfig.from_dict(ladder),
                             owner=owner, progress=progress, cancel=ctx)
    return {"run_id": result.get("run_id"), "cached": result.get("cached"), "complete": result["complete"],
            "stopped_reason": ctx.reason}


def plan(ctx: JobContext, source: dict[str, Any], target: dict[str, Any], ladder: dict[str, Any],
         ledger_path: str, owner: str, budget_s: float | None = None) -> dict[str, Any]:
    """Plan per-layer settings for ``target`` (ratio, size_bytes or max_drop); the planned run is recorded."""
    from pet_core.ledger import Ledger
    from pet_core.plan import PlanTarget
    from pet_core.plan_runs import plan_run
    from pet_core.sensitivity import SensitivityConfig

    def progress(event: dict) -> None:
        ctx.report(event, keep=event.get("stage") == "measuring plans")

    out = plan_run(Ledger(ledger_path), _load(source, ctx), PlanTarget(**target), SensitivityConfig.from_dict(ladder),
                   owner=owner, budget_s=budget_s, progress=progress, cancel=ctx)
    return {"run_id": out["run_id"], "met": out["met"], "measured": out["measured"], "target": out["target"],
            "layers": out["layers"], "baseline": out["baseline"], "metric": out["metric"],
            "search": {k: v for k, v in out["search"].items() if k != "history"}, "recipe": out["recipe"],
            "stopped_reason": ctx.reason}


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, JobStopped):
        return str(exc)
    text = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


TASKS = {"pretrain": pretrain, "finetune": finetune, "sweep": sweep, "sensitivity": sensitivity, "plan": plan}
