"""Sensitivity and plan benchmarks (issue "inverse design: per-layer settings that hit a size"):

1. ``plan_vs_uniform``: for lenet_300_100 and mnist_cnn on MNIST and accounted compression targets
   10x, 20x, 40x, the accuracy of ``pet_core.plan.plan`` (per-layer settings from the sensitivity
   analysis, measured and refined) against two references tuned to the same bytes, with the same
   technique mix and the same ladder of bit widths the plan chose from:

   * *uniform* (``pet_core.plan.uniform``): one per-layer magnitude sparsity and one bit width for
     every layer, the least sparsity that fits, the best bit width measured;
   * *global magnitude*: one global magnitude threshold (``scope: global``) plus one bit width for
     every layer, the sparsity bisected to the least that fits, the best bit width measured.

   Accuracies are exact (the 10,000 MNIST test images); sizes are the accounted bytes Compress shows.
   The goal: planned >= uniform at every target.
2. ``sensitivity_time_*``: the wall time of ``sensitivity()`` with the default ladder (10 sparsities x
   4 bit widths per layer) against the naive cost of the same number of exact evaluations, each an
   eager PyTorch evaluation of the unmodified model over the test set, timed in the same run.

Registered in ``bench/run.py``: ``python bench/run.py --only plan_vs_uniform`` / ``--only sensitivity_time``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.common import Context, Goal, Row, load_avg, median, timed  # noqa: E402
from bench.engine import _load  # noqa: E402
from pet_core.accuracy import top1_accuracy  # noqa: E402
from pet_core.errors import PetError  # noqa: E402
from pet_core.loader import open_workbench  # noqa: E402
from pet_core.plan import PlanTarget, plan as plan_layers, uniform  # noqa: E402
from pet_core.sensitivity import SensitivityConfig, sensitivity  # noqa: E402
from pet_core.size import model_bytes  # noqa: E402
from pet_core.workbench import Workbench  # noqa: E402

MODELS = ("lenet_300_100", "mnist_cnn")
TARGETS = (10.0, 20.0, 40.0)
SENSITIVITY_GOAL_S = {"lenet_300_100": 30.0, "mnist_cnn": 180.0}
NAIVE_BATCH = 256            # the evaluation engine's batch size (pet_core.evaluation.engine.EVAL_BATCH)


# --- plan vs uniform vs global magnitude ------------------------------------------------------------

def global_magnitude(wb, target: PlanTarget, bits: list[int | None]) -> dict[str, Any]:
    """One global magnitude sparsity (a shared threshold) and one bit width for every layer, the least
    sparsity whose accounted bytes fit the target, for each bit width; the best measured one ({} if none fits)."""
    try:
        return uniform(wb, target, bits, scope="global")
    except PetError:
        return {}


def _bits_label(b: int | None) -> str:
    return "fp32" if b is None else f"{b}-bit"


def _pct(x: float) -> float:
    return 100.0 * x


def bench_plan_vs_uniform(ctx: Context) -> list[Row]:
    loaded = [(name, *_load(name, ctx)) for name in MODELS]        # pretraining happens here, untimed
    start_load = load_avg()
    config = SensitivityConfig()
    ladder_bits: list[int | None] = [None, *config.bits]
    rows: list[Row] = []
    table: list[dict[str, Any]] = []
    for name, base, label, note in loaded:
        wb = open_workbench(base)
        base_acc = wb.baseline_metric
        base_bytes = model_bytes(wb.baseline)
        sens = sensitivity(wb, config)
        ctx.log(f"  {name}: sensitivity {sens['evaluations']} evaluations in {sens['seconds']:.1f} s")
        for ratio in TARGETS:
            target = PlanTarget(ratio=ratio)
            t0 = time.perf_counter()
            rep = plan_layers(wb, sens, target)
            plan_s = time.perf_counter() - t0
            m = rep["measured"]
            planned_bits = sorted({row["bits"] for row in rep["layers"]}, key=lambda b: -1 if b is None else b)
            t0 = time.perf_counter()
            uni = uniform(wb, target, ladder_bits)
            uni_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            glob = global_magnitude(wb, target, ladder_bits)
            glob_s = time.perf_counter() - t0
            acc, uacc = m["accuracy"], uni["value"]
            gacc = glob.get("value")
            gain = _pct(acc - uacc)
            entry = {"model": name, "target": ratio, "byte_budget": rep["target"]["byte_budget"],
                     "baseline_accuracy": base_acc, "baseline_bytes": base_bytes,
                     "planned": {"accuracy": acc, "size_bytes": m["size_bytes"], "ratio": m["compression_ratio"],
                                 "met": rep["met"], "layers": [f"{r['name']}: {r['setting']}" for r in rep["layers"]],
                                 "bits_used": planned_bits, "evaluations": rep["search"]["evaluations"],
                                 "seconds": rep["search"]["seconds"], "stopped": rep["search"]["stopped"],
                                 "found_by": m["found_by"]},
                     "uniform": {"accuracy": uacc, "size_bytes": uni["size_bytes"],
                                 "ratio": base_bytes / uni["size_bytes"], "sparsity": uni["sparsity"],
                                 "bits": uni["bits"], "seconds": uni_s,
                                 "tried": [{k: t[k] for k in ("sparsity", "bits", "value", "size_bytes")}
                                           for t in uni["tried"]]},
                     "global_magnitude": None if gacc is None else {
                         "accuracy": gacc, "size_bytes": glob["size_bytes"], "ratio": base_bytes / glob["size_bytes"],
                         "sparsity": glob["sparsity"], "bits": glob["bits"], "seconds": glob_s,
                         "tried": [{k: t[k] for k in ("sparsity", "bits", "value", "size_bytes")}
                                   for t in glob["tried"]]},
                     "gain_points": gain, "dataset": label}
            table.append(entry)
            ctx.log(f"  {name} {ratio:g}x: planned {acc:.4f} ({m['compression_ratio']:.2f}x, "
                    f"{rep['search']['evaluations']} evals, {plan_s:.1f} s) | uniform {uacc:.4f} "
                    f"({uni['sparsity']:.3f}, {_bits_label(uni['bits'])}) | global "
                    + ("–" if gacc is None else f"{gacc:.4f} ({glob['sparsity']:.3f}, {_bits_label(glob['bits'])})"))
            gnote = ("no bit width of the ladder fits" if gacc is None else
                     f"global magnitude {_pct(gacc):.2f}% ({glob['sparsity']:.3f} global sparsity, "
                     f"{_bits_label(glob['bits'])}, {glob['size_bytes']:,} bytes)")
            notes = (f"{note}{name} on {label}, accounted target {ratio:g}x ({rep['target']['byte_budget']:,} bytes of "
                     f"{base_bytes:,}): planned {_pct(acc):.2f}% at {m['size_bytes']:,} bytes "
                     f"({m['compression_ratio']:.2f}x; layers: {'; '.join(entry['planned']['layers'])}; target "
                     f"{'met' if rep['met'] else 'NOT met'}; {rep['search']['evaluations']} recipes measured in "
                     f"{rep['search']['seconds']:.1f} s, stopped: {rep['search']['stopped']}) vs uniform "
                     f"{_pct(uacc):.2f}% ({uni['sparsity']:.3f} per-layer sparsity, {_bits_label(uni['bits'])}, "
                     f"{uni['size_bytes']:,} bytes): {gain:+.2f} points; {gnote}. Dense {_pct(base_acc):.2f}%. "
                     "Exact accuracy on the test set; value and baseline in % accuracy, ratio = planned / uniform "
                     "(> 1: the plan is more accurate). One run (deterministic).")
            rows.append(Row(f"plan vs uniform, {name} {ratio:g}x: accuracy", _pct(acc), "%",
                            baseline=_pct(uacc), higher_is_better=True, reps=1, notes=notes,
                            baseline_desc=(f"uniform allocation at the same bytes: one per-layer magnitude sparsity "
                                           f"and one bit width (best of {', '.join(map(_bits_label, ladder_bits))}, "
                                           "the ladder the plan chose from) for every layer, measured exactly"),
                            goals=[Goal("planned >= uniform (accuracy, same accounted bytes)", acc >= uacc)],
                            extra={"plan_vs_uniform": entry}))
    end_load = load_avg()
    rows[0].section = section(table, start_load, end_load)
    return rows


def section(table: list[dict[str, Any]], start_load: str, end_load: str) -> str:
    lines = ["## Planned vs uniform vs global magnitude (MNIST, accounted bytes)", "",
             "| model | target | planned acc | planned bytes (×) | uniform acc | uniform bytes (×) | "
             "global-magnitude acc | gain (points) | plan evals / seconds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for e in table:
        p, u, g = e["planned"], e["uniform"], e["global_magnitude"]
        gtxt = "–" if g is None else f"{_pct(g['accuracy']):.2f}% ({g['sparsity']:.2f}, {_bits_label(g['bits'])})"
        lines.append(
            f"| {e['model']} | {e['target']:g}× | **{_pct(p['accuracy']):.2f}%** | {p['size_bytes']:,} "
            f"({p['ratio']:.2f}×) | {_pct(u['accuracy']):.2f}% ({u['sparsity']:.2f}, {_bits_label(u['bits'])}) | "
            f"{u['size_bytes']:,} ({u['ratio']:.2f}×) | {gtxt} | {e['gain_points']:+.2f} | "
            f"{p['evaluations']} / {p['seconds']:.1f} s |")
    lines += ["", "Planned per-layer settings:", ""]
    for e in table:
        lines.append(f"- {e['model']} {e['target']:g}×: {'; '.join(e['planned']['layers'])} "
                     f"(found by {e['planned']['found_by']}, search stopped: {e['planned']['stopped']})")
    dense = {e["model"]: (e["baseline_accuracy"], e["baseline_bytes"]) for e in table}
    lines += ["", "Dense: " + "; ".join(f"{m} {_pct(a):.2f}%, {b:,} bytes" for m, (a, b) in dense.items()) + ". "
              "Planned: `pet_core.plan.plan` from one `sensitivity()` per model with the default ladder "
              "(10 sparsities × 4 bit widths), no time budget. Uniform: `pet_core.plan.uniform`, one per-layer "
              "magnitude sparsity and one bit width for every layer, the least sparsity that fits the same byte "
              "budget, best of fp32/8/4/3/2-bit. Global magnitude: one global magnitude sparsity (shared "
              "threshold) and one bit width for every layer, bisected the same way. In parentheses: the sparsity "
              "and bit width chosen. Accuracies are exact on the 10,000 test images; bytes are accounted (what "
              "Compress shows); gain = planned − uniform, in points. "
              f"Load average {start_load} at the start, {end_load} at the end."]
    return "\n".join(lines)


# --- sensitivity time --------------------------------------------------------------------------------

def _fresh_workbench(base) -> Workbench:
    """A workbench with its own evaluation engine (no identity: no values cached by earlier runs),
    warmed up: backend chosen and the baseline evaluated, as on a workbench the app has open."""
    ds = base.dataset
    wb = Workbench(base.model, ds.x_test, ds.y_test, task=base.task)
    wb.baseline_metric                          # noqa: B018 (chooses the backend, evaluates the baseline)
    return wb


def bench_sensitivity_time(model_name: str, ctx: Context) -> list[Row]:
    base, label, note = _load(model_name, ctx)
    x, y = base.dataset.x_test, base.dataset.y_test
    config = SensitivityConfig()
    reps = 1 if ctx.quick else (3 if model_name == "lenet_300_100" else 2)
    naive_per_rep = 3

    def naive() -> float:
        with torch.no_grad():
            return top1_accuracy(base.model.eval(), x, y, batch_size=NAIVE_BATCH)

    naive()                                                  # warm-up, unrecorded
    seconds, naive_ms, engine_ms, evaluations, layers, backends = [], [], [], set(), set(), set()
    estimated = None
    start_load = load_avg()
    for _ in range(reps):                                    # interleaved: naive evals, sensitivity, naive evals
        naive_ms += [timed(naive) for _ in range(naive_per_rep)]
        wb = _fresh_workbench(base)
        engine_ms.append(timed(lambda: wb.engine.exact(wb.model)))   # no key: really evaluated
        estimated = wb.exact_is_slow(0.08)
        t0 = time.perf_counter()
        result = sensitivity(wb, config)
        seconds.append(time.perf_counter() - t0)
        evaluations.add(result["evaluations"])
        layers.add(len(result["layers"]))
        backends.add(result["backend"])
        naive_ms += [timed(naive) for _ in range(naive_per_rep)]
    end_load = load_avg()
    n_eval = max(evaluations)
    naive_total = median(naive_ms) / 1e3 * n_eval
    engine_total = median(engine_ms) / 1e3 * n_eval
    value = median(seconds)
    goal_s = SENSITIVITY_GOAL_S[model_name]
    notes = (f"{note}`sensitivity(wb, SensitivityConfig())` on {model_name} ({label}): {n_eval} exact evaluations "
             f"({max(layers)} layers × {len(config.points())} rungs: sparsities "
             f"{', '.join(map(str, config.sparsities))}; bits {', '.join(map(str, config.bits))})"
             + (", each estimated on the stratified subset first" if estimated else "")
             + f", backend {', '.join(sorted(map(str, backends)))}. {reps} repetition(s) "
             f"({', '.join(f'{s:.1f}' for s in seconds)} s), median reported, each on a fresh workbench with its own "
             "engine (no cached values; backend chosen and baseline evaluated before the timing). One exact "
             f"evaluation of the unmodified model: eager PyTorch {median(naive_ms):.0f} ms (batch {NAIVE_BATCH}, "
             f"{len(naive_ms)} timings interleaved with the runs), the engine's {median(engine_ms):.0f} ms "
             f"(× {n_eval} = {engine_total:.1f} s). Load average {start_load} → {end_load}.")
    return [Row(f"sensitivity() default ladder, {model_name}", value, "s", baseline=naive_total,
                min=min(seconds), p90=max(seconds), reps=reps, notes=notes,
                baseline_desc=(f"{n_eval} × one eager PyTorch evaluation of the unmodified model over the "
                               f"{len(y):,} test images (median of {len(naive_ms)}, same run)"),
                goals=[Goal(f"< {goal_s:g} s", value < goal_s)],
                extra={"evaluations": n_eval, "layers": max(layers), "seconds_each": [round(s, 2) for s in seconds],
                       "naive_eval_ms": round(median(naive_ms), 2), "engine_eval_ms": round(median(engine_ms), 2)})]
