"""``python -m pet_core``: models, analyze, evaluate, finetune, export, runs, sensitivity, plan, compare — the same numbers as the app.

Bad input exits 2 with one line on stderr. Accuracies are fractions in [0, 1]; sizes are bytes. A
language model's metric is perplexity (lower is better); the text output names the metric.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from pet_core.analysis import analysis_report
from pet_core.cli_compare import add_compare_parser, compare_command, print_compare
from pet_core.cli_plan import add_plan_parsers, plan_command, print_plan, print_sensitivity
from pet_core.cli_runs import (add_record_args, add_runs_parser, export_run, owner_of, print_runs,
                               record_evaluation_run, record_finetune_run, runs_command)
from pet_core.errors import PetError
from pet_core.export.formats import FORMATS
from pet_core.loader import is_run_source, load_baseline, open_workbench
from pet_core.memory import release_freed_memory
from pet_core.metrics import METRICS, TASKS, Metric
from pet_core.recipe import Recipe, load as load_recipe
from pet_core.runs import NO_DATASET, load_source
from pet_core.steps import describe_methods, describe_steps
from pet_core.zoo import list_models


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise PetError(f"{self.prog}: {message}")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="zoo name, Hugging Face model folder or model file "
                                    "(default: the recipe's, else lenet_300_100)")
    p.add_argument("--dataset", help="digits | mnist | PATH.npz | PATH.txt (token text for a causal LM); "
                                     "default: the recipe's; left out: weights only (a zoo model uses digits)")
    p.add_argument("--task", choices=TASKS, help="the model's task, when its folder or file does not say "
                                                 "(default: an HF folder's config, else image_classification)")
    p.add_argument("--data-dir", help="MNIST folder with the four IDX files (or set PET_MNIST_DIR)")
    p.add_argument("--recipe", help="recipe file (.yaml, .yml or .json)")
    p.add_argument("--arch", help="zoo architecture of a state_dict file (inferred when left out), or "
                                   "module.path:factory (with --trust-code)")
    p.add_argument("--trust-code", "--allow-pickle", dest="trust_code", action="store_true",
                   help="allow model files that run their own code when loaded: pickle, TorchScript, torch.export")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m pet_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("models", help="list the zoo")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("steps", help="every recipe field: default, allowed values, help")
    p.add_argument("--json", action="store_true")
    _common(sub.add_parser("analyze", help="per-layer weight statistics"))
    p = sub.add_parser("evaluate", help="apply a recipe; accuracy and honest size")
    _common(p)
    add_record_args(p)
    p = sub.add_parser("finetune", help="apply a recipe, then fine-tune as its finetune section says")
    _common(p)
    add_record_args(p)
    p.add_argument("--out", help="folder for the checkpoint, the fine-tuned weights, recipe and report")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--checkpoint-every", type=float, default=60.0, metavar="SECONDS",
                   help="with --out: also write the checkpoint every SECONDS while training (default 60)")
    p.add_argument("--checkpoint-every-steps", type=int, metavar="N",
                   help="with --out: also write the checkpoint every N steps")
    p = sub.add_parser("export", help="apply a recipe, write a deployable file; measured size, accuracy, latency")
    _common(p)
    add_record_args(p, export=True)
    p.add_argument("--format", required=True, choices=list(FORMATS))
    p.add_argument("--out", required=True, help="file to write")
    p.add_argument("--physical", action="store_true",
                   help="remove channel-pruned channels for real (Torch-Pruning) before writing")
    add_runs_parser(sub)
    add_plan_parsers(sub, _common, add_record_args)
    add_compare_parser(sub)
    return parser


def _progress(event: dict) -> None:
    if "epoch" in event and event.get("step") == event.get("steps"):
        print(f"training: epoch {event['epoch']}/{event['epochs']} loss {event.get('loss', 0):.4f}",
              file=sys.stderr)


def _context(args: argparse.Namespace):
    recipe = load_recipe(args.recipe) if args.recipe else Recipe()
    model = args.model or recipe.model
    dataset = args.dataset or (recipe.dataset if args.recipe and _names_dataset(args.recipe) else None)
    if dataset is not None and dataset.strip().lower() == NO_DATASET:
        dataset = None                                 # a weights-only run's recipe says dataset: none
    if is_run_source(model):
        baseline = load_source(model, dataset, args.data_dir, arch=args.arch,
                               trust_code=args.trust_code, progress=_progress)
    else:
        baseline = load_baseline(model, dataset, args.data_dir, arch=args.arch, task=args.task,
                                 trust_code=args.trust_code, progress=_progress)
    if dataset is None and baseline.dataset is not None:
        dataset = baseline.dataset.name            # a zoo model's default, digits
    return recipe.replace(model=model, dataset=dataset or recipe.dataset), baseline


def _names_dataset(path: str) -> bool:
    """True when the recipe file itself names a dataset. Without one, a recipe's dataset is the default
    (digits), which fits zoo models only; the loader gives those digits anyway, and anything else
    is loaded weights only."""
    from pet_core.bounded import load_yaml

    text = Path(path).read_text(encoding="utf-8")         # already read and checked by recipe.load
    data = json.loads(text) if Path(path).suffix.lower() == ".json" else load_yaml(text)
    return isinstance(data, dict) and data.get("dataset") is not None


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "models":
        return {"models": [dict(name=m.name, description=m.description, min_hw=m.min_hw) for m in list_models()]}
    if args.command == "steps":
        return {"methods": describe_methods(), "fields": describe_steps()}
    if args.command == "runs":
        return runs_command(args)
    if args.command == "compare":
        return compare_command(args)
    if args.command == "export" and args.run is not None:
        return export_run(args)
    recipe, baseline = _context(args)
    if args.command in ("sensitivity", "plan"):
        return plan_command(args, baseline, owner_of(args))
    wb = open_workbench(baseline)
    wb.apply(recipe)
    ds = baseline.dataset
    head = {"model": recipe.model, "dataset": None if ds is None else recipe.dataset,
            "dataset_note": "" if ds is None else ds.note, "task": baseline.task}
    if args.command == "analyze":
        return {**head, **analysis_report(wb.model)}
    if args.command == "finetune":
        return {**head, **_finetune(args, recipe, baseline, wb)}
    if args.command == "export":
        from pet_core.export.artifacts import export_report

        physical = None
        if args.physical:
            from pet_core.physical import physical_workbench

            wb, info = physical_workbench(wb)
            physical = {k: info[k] for k in ("params_before", "params_after", "skipped")}
        return {**head, **export_report(args.format, wb, baseline, args.out), "physical": physical}
    report = wb.report(huffman=True)   # not interactive: the Huffman size too, at any model size
    return {**head, **report, "run_id": record_evaluation_run(args, baseline, report)}


def _finetune(args: argparse.Namespace, recipe: Recipe, baseline, wb) -> dict[str, Any]:
    from pet_core.finetune import finetune
    from pet_core.model_io import save_state_dict
    from pet_core.recipe import save as save_recipe

    if not recipe.finetune:
        raise PetError("recipe has no finetune section (add e.g. finetune: {epochs: 2, techniques: {qat: {}}})")
    if args.resume and not args.out:
        raise PetError("--resume needs --out, the folder holding the checkpoint")
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    def progress(event: dict) -> None:
        if not args.json or event.get("step") == event.get("steps"):
            acc = event.get("val_accuracy")
            print(f"{event.get('phase', 'train')}: step {event['step']}/{event['steps']} loss {event['loss']:.4f}"
                  + (f" val {acc:.4f}" if acc is not None else ""), file=sys.stderr)

    stop = threading.Event()
    with _stop_on_sigterm(stop):
        result = finetune(wb, recipe, baseline.dataset, progress=progress, stop=stop, checkpoint_dir=out,
                          resume=args.resume, checkpoint_every_steps=args.checkpoint_every_steps,
                          checkpoint_every_s=args.checkpoint_every)
    report = result.report
    report["run_id"] = record_finetune_run(args, baseline, result)
    if result.stopped:   # only SIGTERM stops a CLI run: say so, and exit 128 + SIGTERM after the report
        f, ck = report["finetune"], report["finetune"]["checkpoint"]
        kept = ("no checkpoint kept (run with --out DIR to keep one)" if not ck["written"]
                else f"checkpoint written to {ck['path']}; " + ("a lottery run cannot resume, start it afresh"
                                                                 if "lottery" in f["techniques"] else
                                                                 "resume with --resume"))
        print(f"SIGTERM: stopped at step {f['steps']}/{f['total_steps']}; {kept}", file=sys.stderr)
        args.exit_status = 128 + signal.SIGTERM
    if out is not None:
        from pet_core.export.artifacts import write_packed_artifact

        save_state_dict(result.model, out / "model.safetensors")
        save_recipe(recipe, out / "recipe.yaml")
        # the fine-tuned model as a packed file (Huffman-coded), for zoo architectures (packed rebuilds those only)
        report["packed"] = (None if baseline.arch is None else
                            write_packed_artifact(result.workbench, baseline, out / "model.petz", huffman=True))
        (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


@contextlib.contextmanager
def _stop_on_sigterm(stop: threading.Event):
    """SIGTERM sets ``stop`` (the run ends at the next step and writes its checkpoint) instead of killing."""
    if threading.current_thread() is not threading.main_thread():   # handlers live in the main thread only
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_text(command: str, out: Any) -> None:
    if command == "runs":
        print_runs(out)
        return
    if command == "compare":
        print_compare(out)
        return
    if command in ("sensitivity", "plan"):
        (print_sensitivity if command == "sensitivity" else print_plan)(out)
        if out.get("run_id") is not None:
            print(f"recorded as run {out['run_id']}", file=sys.stderr)
        return
    if out.get("run_id") is not None:
        print(f"recorded as run {out['run_id']} (python -m pet_core runs show {out['run_id']})", file=sys.stderr)
    if command == "models":
        for m in out["models"]:
            print(f"{m['name']:16s} {m['description']}")
        return
    if command == "steps":
        print("| step | method | what it does |\n|---|---|---|")
        for m in out["methods"]:
            print(f"| {m['step']} | {m['name']} | {m['summary']} |")
        print("\n| step | method | field | default | allowed | help |\n|---|---|---|---|---|---|")
        for f in out["fields"]:
            cells = [str(f[k]).replace("|", "\\|") for k in ("step", "method", "field", "default", "allowed", "help")]
            print("| " + " | ".join(cells) + " |")
        return
    if command == "analyze":
        print(f"{'layer':24s} {'type':8s} {'params':>9s} {'sparsity':>8s} {'std':>9s} {'absmax':>9s} {'kurt':>7s}")
        for s in out["layers"]:
            print(f"{s['name']:24s} {s['type']:8s} {s['params']:9d} {s['sparsity']:8.3f} {s['std']:9.4f} "
                  f"{s['abs_max']:9.4f} {s['kurtosis']:7.2f}")
        return
    if command == "export":
        lat = ", ".join(f"{k} {v:.3f} ms" for k, v in out["latency_ms"].items())
        acc = "n/a" if out["accuracy"] is None else f"{out['accuracy']:.4f}"
        print(f"{out['format']}: {out['path']}  {out['size_bytes']:,} bytes on disk  accuracy {acc}  {lat}")
        print(f"accounted: {out['accounted_size_bytes']:,} bytes; baseline {out['baseline']['size_bytes']:,} bytes")
        return
    b, c = out["baseline"], out["compressed"]
    if "finetune" in out:
        f = out["finetune"]
        print(f"fine-tuned on {f.get('device')}: {f.get('steps')} steps in {f.get('seconds', 0):.1f} s"
              + (" (stopped early)" if f.get("stopped") else ""))
    print(f"{'layer':24s} {'params':>9s} {'nonzero':>9s} {'bits':>4s} {'bytes':>10s}  encoding")
    for r in out["layers"]:
        print(f"{r['name']:24s} {r['params']:9d} {r['nonzero']:9d} {r['bits']:4d} {r['size_bytes']:10d}  {r['encoding']}")
    print(f"baseline:   {_metric_text(out, b)}  {b['size_bytes']:,} bytes  {b['params']:,} params")
    print(f"compressed: {_metric_text(out, c)}  {c['size_bytes']:,} bytes  "
          f"{c['compression_ratio']:.2f}x  (sizes accounted, not a file)")


def _metric_text(out: dict[str, Any], part: dict[str, Any]) -> str:
    """"accuracy 0.9778", "perplexity 43.21 (lower is better)" or "<metric> not measured", from
    ``out["metric"]`` ({"name", "higher_is_better"}) when the report has one, else accuracy."""
    given = out.get("metric") if isinstance(out.get("metric"), dict) else {}
    name = str(given.get("name") or "accuracy")
    metric = METRICS.get(name) or Metric(name, bool(given.get("higher_is_better", True)), name)
    value = part.get(name, part.get("metric_value", part.get("accuracy")))
    if value is None:
        return f"{name} not measured"
    if metric.name == "accuracy":
        return f"accuracy {value:.4f}"
    return f"{name} {value:.2f}" + ("" if metric.higher_is_better else " (lower is better)")


def main(argv: list[str] | None = None) -> int:
    release_freed_memory()
    try:
        args = build_parser().parse_args(argv)
        out = run(args)
    except PetError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    if getattr(args, "json", False):
        print(json.dumps(out))
    else:
        _print_text(args.command, out)
    return getattr(args, "exit_status", 0)
