"""``sensitivity`` and ``plan`` on the command line.

``python -m pet_core sensitivity --model M --dataset D [--sparsities 0.5,0.9] [--bits 8,4] [--clusters 16]``
measures (or reads from the ledger) every layer alone at every rung; ``python -m pet_core plan ...
(--target-ratio R | --target-bytes B | --max-drop X) [--budget-s S]`` plans per-layer settings from it,
measures and refines them, records the planned run and prints its recipe, measured metric and bytes.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pet_core.errors import PetError
from pet_core.sensitivity import SensitivityConfig


def _numbers(kind: type):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a comma-separated list of numbers") from None
    return parse


def _ladder_args(p: argparse.ArgumentParser) -> None:
    d = SensitivityConfig()
    p.add_argument("--sparsities", type=_numbers(float), default=d.sparsities,
                   help=f"comma-separated sparsities (default {','.join(map(str, d.sparsities))})")
    p.add_argument("--bits", type=_numbers(int), default=d.bits,
                   help=f"comma-separated bit widths (default {','.join(map(str, d.bits))})")
    p.add_argument("--clusters", type=_numbers(int), default=(),
                   help="comma-separated k-means cluster counts (default: none)")


def add_plan_parsers(sub, common, record_args) -> None:
    """The ``sensitivity`` and ``plan`` subcommands (``common``/``record_args``: the CLI's shared options)."""
    p = sub.add_parser("sensitivity", help="each layer alone pruned / quantized at a ladder of settings")
    common(p)
    record_args(p)
    _ladder_args(p)
    p = sub.add_parser("plan", help="per-layer settings that hit a size or a largest drop, measured")
    common(p)
    record_args(p)
    _ladder_args(p)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-ratio", type=float, metavar="R", help="compression ratio (baseline bytes / bytes)")
    target.add_argument("--target-bytes", type=int, metavar="B", help="accounted size in bytes")
    target.add_argument("--max-drop", type=float, metavar="X",
                        help="largest metric drop (accuracy as a fraction: 0.01 is one point)")
    p.add_argument("--budget-s", type=float, metavar="S", help="keep searching for S seconds; return the best")
    p.add_argument("--max-evaluations", type=int, metavar="N", help="measure at most N candidate recipes")
    p.add_argument("--out", help="also write the planned recipe to this file (.yaml or .json)")


def plan_command(args: argparse.Namespace, baseline, owner: str) -> dict[str, Any]:
    """Run ``sensitivity`` or ``plan`` on a loaded baseline; the ledger unless ``--no-record``."""
    from pet_core.plan import PlanTarget
    from pet_core.plan_runs import plan_run, sensitivity_run

    if baseline.dataset is None:
        raise PetError(f"{args.command} needs a dataset: give --dataset (digits, mnist, PATH.npz, PATH.txt)")
    config = SensitivityConfig(sparsities=args.sparsities, bits=args.bits, clusters=args.clusters)
    ledger = None if args.no_record else _ledger()

    def progress(event: dict) -> None:
        if not args.json and event.get("step") == event.get("steps"):
            print(f"{event.get('stage')}: {event['step']}/{event['steps']}", file=sys.stderr)

    if args.command == "sensitivity":
        return sensitivity_run(ledger, baseline, config, owner=owner, progress=progress)
    target = PlanTarget(ratio=args.target_ratio, size_bytes=args.target_bytes, max_drop=args.max_drop)
    out = plan_run(ledger, baseline, target, config, owner=owner, budget_s=args.budget_s,
                   max_evaluations=args.max_evaluations, progress=progress)
    if args.out:
        from pet_core.recipe import Recipe, save

        save(Recipe.from_dict(out["recipe"]), args.out)
    return out


def _ledger():
    from pet_core.ledger import Ledger

    try:
        return Ledger()
    except PetError as exc:
        raise PetError(f"{exc} (pass --no-record to run without the ledger)") from None


def print_sensitivity(out: dict[str, Any]) -> None:
    name = out["metric"]["name"]
    print(f"baseline {name} {out['baseline']['value']:.4f}; drop = baseline - value"
          + ("" if out["metric"]["higher_is_better"] else " (as value - baseline: lower is better)")
          + (f"; from the ledger (run {out.get('run_id')})" if out.get("cached") else
             f"; {out['evaluations']} evaluations in {out['seconds']:.1f} s"))
    settings = [(p["step"], p["setting"]) for p in out["layers"][0]["points"]] if out["layers"] else []
    head = " ".join(f"{('s' if s == 'prune' else 'b' if s == 'quantize' else 'k') + str(v):>6s}" for s, v in settings)
    print(f"{'layer':24s} {head}")
    for row in out["layers"]:
        print(f"{row['name'][:24]:24s} " + " ".join(f"{p['drop']:6.3f}" for p in row["points"]))
    print("most tolerant first: " + ", ".join(out["ranking"]))


def print_plan(out: dict[str, Any]) -> None:
    m, name = out["measured"], out["metric"]["name"]
    print(f"{'layer':24s} {'setting':28s} {'bytes':>10s} {'predicted drop':>14s}")
    for row in out["layers"]:
        print(f"{row['name'][:24]:24s} {row['setting']:28s} {row['bytes']:10,d} {row['predicted_drop']:14.4f}")
    print(f"measured: {name} {m[name]:.4f} (drop {m['drop']:+.4f}), {m['size_bytes']:,} bytes accounted, "
          f"{m['compression_ratio']:.2f}x; target {'met' if out['met'] else 'NOT met (closest found)'}")
    s = out["search"]
    print(f"search: {s['evaluations']} recipes measured in {s['seconds']:.1f} s ({s['stopped']}); "
          f"found by {m['found_by']}")
