"""The run ledger on the command line: ``runs``, ``runs show ID``, ``export --run ID``, and recording.

``evaluate`` and ``finetune`` record their runs (owner: ``--owner``, else ``$PET_USER``, else "cli")
unless ``--no-record``; ``export --run ID`` writes exactly that run's model and records an "export"
run under it with the measured numbers. The text output names each run's metric ("accuracy",
"perplexity") beside its value, and ``runs show`` says which way is better.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from pet_core.errors import PetError
from pet_core.ledger import KINDS, Ledger

TABLE = (("id", 5), ("parent", 6), ("kind", 13), ("status", 9), ("model", 16), ("dataset", 10),
         ("metric", 10), ("value", 8), ("size_bytes", 11), ("ratio", 7), ("owner", 8), ("label", 0))


def add_record_args(p: argparse.ArgumentParser, *, export: bool = False) -> None:
    """``--owner`` and ``--no-record`` (and, for export, ``--run``)."""
    p.add_argument("--owner", help="owner of the recorded run (default: $PET_USER, else 'cli')")
    p.add_argument("--no-record", action="store_true", help="do not record this run in the ledger")
    if export:
        p.add_argument("--run", type=int, metavar="ID",
                       help="export exactly this recorded run (its weights) instead of model/dataset/recipe")


def add_runs_parser(sub) -> None:
    """``runs [--json] [filters]`` and ``runs show ID [--json]``."""
    p = sub.add_parser("runs", help="list the runs in the ledger, or show one with its lineage")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--model", help="only runs on this model (name as given, or its hash)")
    p.add_argument("--dataset", help="only runs on this dataset (name as given, or its fingerprint)")
    p.add_argument("--owner", help="only this owner's runs")
    p.add_argument("--kind", choices=KINDS, help="only runs of this kind")
    shows = p.add_subparsers(dest="runs_command", parser_class=type(p))
    s = shows.add_parser("show", help="one run with its lineage (root first)")
    s.add_argument("id", type=int, help="run id")
    s.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")


def owner_of(args: argparse.Namespace) -> str:
    return getattr(args, "owner", None) or os.environ.get("PET_USER") or "cli"


def _ledger() -> Ledger:
    try:
        return Ledger()
    except PetError as exc:
        raise PetError(f"{exc} (pass --no-record to run without the ledger)") from None


def runs_command(args: argparse.Namespace) -> Any:
    """The runs that match (a list), or ``{"run": ..., "lineage": [...]}`` for ``runs show ID``."""
    led = Ledger()
    if getattr(args, "runs_command", None) == "show":
        return {"run": led.get(args.id), "lineage": led.lineage(args.id)}
    return led.runs(model=args.model, dataset=args.dataset, owner=args.owner,
                    kinds=None if args.kind is None else [args.kind])


def record_evaluation_run(args: argparse.Namespace, baseline, report: dict) -> int | None:
    if args.no_record:
        return None
    from pet_core.runs import record_evaluation

    return record_evaluation(_ledger(), baseline, report, owner=owner_of(args))


def record_finetune_run(args: argparse.Namespace, baseline, result) -> int | None:
    if args.no_record:
        return None
    from pet_core.runs import record_finetune

    return record_finetune(_ledger(), baseline, result, owner=owner_of(args))


def export_run(args: argparse.Namespace) -> dict[str, Any]:
    """``export --run ID``: the run's own model written as ``--format``, measured, recorded under it."""
    from pet_core.export.artifacts import export_report
    from pet_core.runs import metric_fields, open_run, original_numbers

    given = [flag for flag, value in (("--recipe", args.recipe), ("--model", args.model),
                                      ("--dataset", args.dataset)) if value]
    if given:
        raise PetError(f"export --run {args.run} exports that run as it was recorded; leave out {', '.join(given)}")
    led = Ledger()
    run = led.get(args.run)
    baseline, wb = open_run(led, args.run, trust_code=getattr(args, "trust_code", False))
    physical = None
    if args.physical:
        from pet_core.physical import physical_workbench

        wb, info = physical_workbench(wb)
        physical = {k: info[k] for k in ("params_before", "params_after", "skipped")}
    out = export_report(args.format, wb, baseline, args.out)
    out["baseline"] = {k: v for k, v in original_numbers(baseline, wb).items() if k != "params"}
    name = baseline.metric.name
    measured = {name: out.get(name, out.get("accuracy"))}   # the file measured on the task's metric
    metrics = {**metric_fields(baseline.metric.to_dict(), measured), "size_bytes": out["size_bytes"],
               "latency_ms": out["latency_ms"],
               "compression_ratio": out["baseline"]["size_bytes"] / out["size_bytes"],
               "format": out["format"], "path": out["path"]}
    export_id = None
    if not args.no_record:
        export_id = led.record("export", model=run["model"], model_hash=run["model_hash"], dataset=run["dataset"],
                               dataset_hash=run["dataset_hash"], recipe=run["recipe"], metrics=metrics,
                               extra={**(run["extra"] or {}), "physical": physical, "exported_run": args.run},
                               parent_id=args.run, owner=owner_of(args), weights_path=out["path"])
    return {"model": run["model"], "dataset": run["dataset"], "dataset_note": baseline.dataset.note,
            "source_run": args.run, "run_id": export_id, **out, "physical": physical}


def _cell(run: dict, col: str) -> str:
    from pet_core.runs import run_metric

    m = run["metrics"] or {}
    name = run_metric(run)["name"]
    value = {"parent": run["parent_id"], "metric": name, "value": m.get(name), "size_bytes": m.get("size_bytes"),
             "ratio": m.get("compression_ratio")}.get(col, run.get(col))
    if value is None:
        return "-"
    if col == "value":
        return f"{value:.4f}" if name == "accuracy" else f"{value:.2f}"
    if col == "ratio":
        return f"{value:.2f}x"
    if col == "size_bytes":
        return f"{value:,}"
    return str(value)


def _table(runs: list[dict]) -> None:
    right = {"id", "parent", "value", "size_bytes", "ratio"}
    header = " ".join(name.rjust(w) if name in right else name.ljust(w) for name, w in TABLE)
    print(header.rstrip())
    for run in runs:
        cells = [_cell(run, name) for name, _ in TABLE]
        print(" ".join(c.rjust(w) if name in right else c.ljust(w)
                       for c, (name, w) in zip(cells, TABLE)).rstrip())


def _metric_line(run: dict) -> str:
    """"accuracy 0.9778 (higher is better)", "perplexity 43.21 (lower is better)" or "perplexity not measured"."""
    from pet_core.runs import run_metric

    metric = run_metric(run)
    value = (run["metrics"] or {}).get(metric["name"])
    if value is None:
        return f"{metric['name']} not measured"
    shown = f"{value:.4f}" if metric["name"] == "accuracy" else f"{value:.2f}"
    return f"{metric['name']} {shown} ({'higher' if metric['higher_is_better'] else 'lower'} is better)"


def print_runs(out: Any) -> None:
    """Text output of ``runs`` (a table; nothing for an empty ledger) and ``runs show``."""
    if isinstance(out, list):
        if out:
            _table(out)
        return
    run = out["run"]
    print(f"run {run['id']}: {run['kind']}, {run['status']}, owner {run['owner']}"
          + (f", label {run['label']!r}" if run["label"] else ""))
    print(f"model {run['model']} ({run['model_hash']}), dataset {run['dataset']} ({run['dataset_hash']})")
    print(_metric_line(run))
    for key, value in sorted((run["metrics"] or {}).items()):
        print(f"  {key}: {value}")
    if run["weights_path"]:
        print(f"weights: {run['weights_path']}")
    if run["error"]:
        print(f"error: {run['error']}")
    print("lineage (root first):")
    _table(out["lineage"])
