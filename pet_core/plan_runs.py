"""Sensitivity and plans as runs: the glue the CLI and the worker jobs share.

``sensitivity_run`` returns the cached analysis of a model, dataset and ladder or measures and
records it; ``plan_run`` plans from it, records the planned recipe as a "post-training" run whose
parent is the sensitivity run (lineage: baseline → sensitivity → plan), and returns the plan's report
with its ``run_id``.
"""

from __future__ import annotations

from typing import Any, Callable

from pet_core.plan import PlanTarget, plan
from pet_core.sensitivity import SensitivityConfig, analyse


def sensitivity_run(ledger, baseline, config: SensitivityConfig, *, owner: str = "me", wb=None,
                    progress: Callable[[dict], None] | None = None, cancel: Any = None) -> dict[str, Any]:
    """The analysis (cached in ``ledger`` when it was made before; ``ledger`` None: not stored)."""
    return analyse(ledger, baseline, config, owner=owner, wb=wb, progress=progress, cancel=cancel)


def plan_run(ledger, baseline, target: PlanTarget, config: SensitivityConfig | None = None, *, owner: str = "me",
             budget_s: float | None = None, max_evaluations: int | None = None,
             progress: Callable[[dict], None] | None = None, cancel: Any = None) -> dict[str, Any]:
    """Sensitivity (cached), plan, measure, refine; the planned run recorded in ``ledger`` (when given)."""
    from pet_core.loader import open_workbench
    from pet_core.recipe import Recipe
    from pet_core.runs import identity, record_evaluation

    wb = open_workbench(baseline)
    ident = identity(baseline)          # the planned recipe names the model and dataset as the ledger does
    wb.apply(Recipe(model=ident["model"], dataset=ident["dataset"]))
    result = sensitivity_run(ledger, baseline, config or SensitivityConfig(), owner=owner, wb=wb,
                             progress=progress, cancel=cancel)
    if not result.get("complete"):
        raise _stopped()
    out = plan(wb, result, target, budget_s=budget_s, max_evaluations=max_evaluations, progress=progress,
               cancel=cancel)
    out["sensitivity"] = {"run_id": result.get("run_id"), "cached": result.get("cached"),
                          "seconds": result.get("seconds"), "ranking": result["ranking"]}
    out["run_id"] = None
    if ledger is not None:
        report = wb.report(accuracy=out["measured"][wb.metric.name])
        run_id = record_evaluation(ledger, baseline, report, owner=owner, parent_id=result.get("run_id"))
        label = f"plan {_target_text(target)}: {report['compressed']['compression_ratio']:.1f}×"
        ledger.update(run_id, label=label, extra={"plan": {k: out[k] for k in ("target", "met", "search")}})
        out["run_id"] = run_id
    return out


def _target_text(target: PlanTarget) -> str:
    if target.ratio is not None:
        return f"{target.ratio:g}×"
    if target.size_bytes is not None:
        return f"{target.size_bytes:,} B"
    return f"drop ≤ {target.max_drop:g}"


def _stopped():
    from pet_core.errors import PetError

    return PetError("plan: the sensitivity analysis was stopped before it finished; nothing was planned")
