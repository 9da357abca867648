"""``python -m pet_core``: models, analyze, evaluate — the same numbers as the app.

Bad input exits 2 with one line on stderr. Accuracies are fractions in [0, 1]; sizes are bytes.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pet_core.analysis import analysis_report
from pet_core.errors import PetError
from pet_core.loader import load_baseline, open_workbench
from pet_core.recipe import Recipe, load as load_recipe
from pet_core.steps import describe_steps
from pet_core.zoo import list_models


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise PetError(f"{self.prog}: {message}")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="zoo name or model file (default: the recipe's, else lenet_300_100)")
    p.add_argument("--dataset", help="digits | mnist | PATH.npz (default: the recipe's, else digits)")
    p.add_argument("--data-dir", help="MNIST folder with the four IDX files (or set PET_MNIST_DIR)")
    p.add_argument("--recipe", help="recipe file (.yaml, .yml or .json)")
    p.add_argument("--arch", help="zoo architecture of a state_dict file (inferred when left out)")
    p.add_argument("--allow-pickle", action="store_true", help="allow a pickled module (runs code from the file)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m pet_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("models", help="list the zoo")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("steps", help="every recipe field: default, allowed values, help")
    p.add_argument("--json", action="store_true")
    _common(sub.add_parser("analyze", help="per-layer weight statistics"))
    _common(sub.add_parser("evaluate", help="apply a recipe; accuracy and honest size"))
    return parser


def _progress(event: dict) -> None:
    if "epoch" in event and event.get("step") == event.get("steps"):
        print(f"training: epoch {event['epoch']}/{event['epochs']} loss {event.get('loss', 0):.4f}",
              file=sys.stderr)


def _context(args: argparse.Namespace):
    recipe = load_recipe(args.recipe) if args.recipe else Recipe()
    model = args.model or recipe.model
    dataset = args.dataset or recipe.dataset
    baseline = load_baseline(model, dataset, args.data_dir, arch=args.arch,
                             allow_pickle=args.allow_pickle, progress=_progress)
    return recipe.replace(model=model, dataset=dataset), baseline


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "models":
        return {"models": [dict(name=m.name, description=m.description, min_hw=m.min_hw) for m in list_models()]}
    if args.command == "steps":
        return {"fields": describe_steps()}
    recipe, baseline = _context(args)
    wb = open_workbench(baseline)
    wb.apply(recipe)
    head = {"model": recipe.model, "dataset": recipe.dataset, "dataset_note": baseline.dataset.note}
    if args.command == "analyze":
        return {**head, **analysis_report(wb.model)}
    return {**head, **wb.report()}


def _print_text(command: str, out: dict[str, Any]) -> None:
    if command == "models":
        for m in out["models"]:
            print(f"{m['name']:16s} {m['description']}")
        return
    if command == "steps":
        print("| step | field | default | allowed | help |\n|---|---|---|---|---|")
        for f in out["fields"]:
            cells = [str(f[k]).replace("|", "\\|") for k in ("step", "field", "default", "allowed", "help")]
            print("| " + " | ".join(cells) + " |")
        return
    if command == "analyze":
        print(f"{'layer':24s} {'type':8s} {'params':>9s} {'sparsity':>8s} {'std':>9s} {'absmax':>9s} {'kurt':>7s}")
        for s in out["layers"]:
            print(f"{s['name']:24s} {s['type']:8s} {s['params']:9d} {s['sparsity']:8.3f} {s['std']:9.4f} "
                  f"{s['abs_max']:9.4f} {s['kurtosis']:7.2f}")
        return
    b, c = out["baseline"], out["compressed"]
    print(f"{'layer':24s} {'params':>9s} {'nonzero':>9s} {'bits':>4s} {'bytes':>10s}  encoding")
    for r in out["layers"]:
        print(f"{r['name']:24s} {r['params']:9d} {r['nonzero']:9d} {r['bits']:4d} {r['size_bytes']:10d}  {r['encoding']}")
    print(f"baseline:   accuracy {b['accuracy']:.4f}  {b['size_bytes']:,} bytes  {b['params']:,} params")
    print(f"compressed: accuracy {c['accuracy']:.4f}  {c['size_bytes']:,} bytes  "
          f"{c['compression_ratio']:.2f}x  (sizes accounted, not a file)")


def main(argv: list[str] | None = None) -> int:
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
    return 0
