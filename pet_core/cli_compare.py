"""``compare RUN_A RUN_B``: how two runs of the ledger behave differently on the test set.

``python -m pet_core compare 1 7`` prints the agreement of the two runs' predictions, how many
items B fixed and broke, the per-class table, the flipped items with the largest change in
confidence and each layer's relative weight difference; ``--json`` prints
:func:`pet_core.compare.compare_runs`'s data instead.
"""

from __future__ import annotations

import argparse
from typing import Any

from pet_core.compare_stats import MAX_EXAMPLES

SHOWN_EXAMPLES = 10     # flipped items printed as text (--json carries all that were asked for)


def add_compare_parser(sub) -> None:
    """``compare RUN_A RUN_B [--examples N] [--trust-code] [--json]``."""
    p = sub.add_parser("compare", help="compare two runs' predictions on the test set and their weights")
    p.add_argument("run_a", type=int, metavar="RUN_A", help="the reference run id (e.g. the baseline)")
    p.add_argument("run_b", type=int, metavar="RUN_B", help="the run compared with it")
    p.add_argument("--examples", type=int, default=50, metavar="N",
                   help=f"flipped items to list, 0 to {MAX_EXAMPLES} (default 50)")
    p.add_argument("--trust-code", action="store_true",
                   help="allow model files that carry code (pickle, TorchScript, torch.export)")
    p.add_argument("--json", action="store_true", help="print JSON")


def compare_command(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`pet_core.compare.compare_runs` on the workspace's ledger."""
    from pet_core.compare import compare_runs
    from pet_core.ledger import Ledger

    return compare_runs(Ledger(), args.run_a, args.run_b, trust_code=getattr(args, "trust_code", False),
                        examples=getattr(args, "examples", 50))


def _value(name: str, v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if name == "accuracy" else f"{v:.2f}"


def _runs_lines(out: dict[str, Any]) -> list[str]:
    name = out["metric"]["name"]
    lines = []
    for side in ("a", "b"):
        r = out["runs"][side]
        size = "-" if r["size_bytes"] is None else f"{r['size_bytes']:,} bytes"
        lines.append(f"{side.upper()}: run {r['id']} ({r['kind']}{', ' + r['label'] if r['label'] else ''}), "
                     f"{name} {_value(name, r['value'])}, {size}")
    return lines


def print_compare(out: dict[str, Any]) -> None:
    """Readable text of a comparison: runs, agreement, fixed/broken, per class, flipped items, layers."""
    name, unit = out["metric"]["name"], out["unit"]
    print("\n".join(_runs_lines(out)))
    print(f"{name} on {out['n']:,} test {unit}s: A {_value(name, out['metric_a'])}, B {_value(name, out['metric_b'])} "
          f"(B - A {out['metric_change']:+.4f})")
    print(f"agreement {out['agreement']:.2%}: {out['flipped_count']:,} {unit}s flipped; fixed {out['fixed']:,} "
          f"(A wrong, B right), broken {out['broken']:,} (A right, B wrong), both wrong differently "
          f"{out['both_wrong_differently']:,}")
    for note in out["notes"]:
        print(f"note: {note}")
    if out["per_class"] is not None:
        print(f"\n{'class':>6s} {'support':>8s} {'acc A':>7s} {'acc B':>7s} {'change':>8s}")
        for row in out["per_class"]:
            if row["support"]:
                print(f"{row['class']:6d} {row['support']:8d} {row['accuracy_a']:7.3f} {row['accuracy_b']:7.3f} "
                      f"{row['change']:+8.3f}")
    shown = out["flipped"][:SHOWN_EXAMPLES]
    if shown:
        print(f"\nflipped {unit}s, {len(shown)} of {out['flipped_total']:,} ({out['flipped_order']}):")
        print(f"{'index':>7s} {'true':>6s} {'A (conf)':>14s} {'B (conf)':>14s} {'p_true A→B':>15s}")
        for f in shown:
            print(f"{f['index']:7d} {f['label']:6d} {f['pred_a']:6d} ({f['conf_a']:.2f}) {f['pred_b']:7d} "
                  f"({f['conf_b']:.2f}) {f['p_true_a']:6.2f} → {f['p_true_b']:.2f}"
                  + (f"  after {f['context_text']!r}" if "context_text" in f else ""))
    print(f"\n{'layer':24s} {'shape':>14s} {'rel. diff':>10s} {'changed':>8s} {'zeros A':>8s} {'zeros B':>8s}")
    for row in out["layers"]:
        rel = "-" if row["relative_diff"] is None else f"{row['relative_diff']:.4f}"
        shape = "x".join(str(d) for d in row["shape"])
        print(f"{row['name']:24s} {shape:>14s} {rel:>10s} {row['changed_fraction']:8.2%} {row['sparsity_a']:8.2%} "
              f"{row['sparsity_b']:8.2%}")
    for row in out["layers_not_comparable"]:
        print(f"{row['name']:24s} not comparable: {row['reason']}")


__all__ = ["add_compare_parser", "compare_command", "print_compare"]
