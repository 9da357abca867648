"""PET Studio benchmark runner.

    python bench/run.py                  # everything, >= 20 repetitions each (about 16 min on 2 cores)
    python bench/run.py --quick          # fewer repetitions, long benchmarks skipped: a smoke check (< 3 min)
    python bench/run.py --list           # the benchmarks; [not in --quick] marks the skipped ones
    python bench/run.py --only slider    # benchmarks whose name starts with / contains "slider"

Writes ``bench/results.json`` (a list of {name, value, unit, baseline, ratio, goal, met, p90, ...};
ratio = baseline / value, so > 1 means faster than the baseline) and ``bench/RESULTS.md``.
With ``--only``, the rows of the benchmarks not run are kept from the previous results.json.

Adding a benchmark: write a function ``fn(ctx: Context) -> list[Result]`` in a module under
``bench/`` (see ``bench/engine.py``; the timing helpers are in ``bench/common.py``) and add a
``Benchmark`` entry to ``BENCHMARKS`` below (or ``BENCHMARKS.append(...)``). Its baseline must be
measured in the same run. ``quick=False`` leaves it out of ``--quick`` (unless named in ``--only``),
with ``quick_note`` printed to say why; a benchmark may also read ``ctx.quick`` to do less.
Models are loaded (trained when not cached) before the benchmarks start, never inside a timing.
A row whose dict has a ``section`` (markdown, see ``bench/deploy.py``) gets it appended to RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import (app_latency, deploy, engine, eval_engine, finetune_results, gpt2_scale,  # noqa: E402
                   jobs_isolation, nm_sparse, plan, rehearsal, room)
from bench.common import Context, Result, load_avg, machine, setup_torch  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS_JSON = HERE / "results.json"
RESULTS_MD = HERE / "RESULTS.md"


@dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    fn: Callable[[Context], list[Result]]
    quick: bool = True      # run by --quick; False: skipped there (unless named in --only), saying quick_note
    quick_note: str = ""


BENCHMARKS: list[Benchmark] = [
    Benchmark("slider_lenet_300_100", "slider move on lenet_300_100 (MNIST)",
              lambda ctx: engine.bench_slider("lenet_300_100", ctx)),
    Benchmark("slider_mnist_cnn", "slider move on mnist_cnn (MNIST)",
              lambda ctx: engine.bench_slider("mnist_cnn", ctx)),
    Benchmark("eval_exact", "exact full-test-set evaluation after a move: engine vs ONNX Runtime dense vs eager "
              "(every zoo model), and the engine's ONNX Runtime batch size (mnist_cnn)", eval_engine.bench_exact_eval),
    Benchmark("eval_first_number", "move -> first number, server side (apply + estimate or exact + report) vs apply "
              "+ eager evaluation + report (every zoo model)", eval_engine.bench_first_number),
    Benchmark("analysis_25m", "analyze() of a synthetic 25M-weight model", engine.bench_analysis),
    Benchmark("threshold_25m", "global threshold for a new target sparsity, 25M weights", engine.bench_threshold),
    Benchmark("gpt2_scale", "GPT-2 small (124M, random weights): analyze, global threshold, int4, sizes, a move",
              gpt2_scale.bench_gpt2_scale, quick=False,
              quick_note="GPT-2 small, 124M weights: about 3 min even with its reduced repetitions"),
    Benchmark("app_server_lenet_300_100", "Compress slider move through the app (AppTest), lenet_300_100",
              lambda ctx: app_latency.bench_server("lenet_300_100", ctx)),
    Benchmark("app_server_mnist_cnn", "Compress slider move through the app (AppTest), mnist_cnn",
              lambda ctx: app_latency.bench_server("mnist_cnn", ctx)),
    Benchmark("room_lenet_300_100", "30 participants move the Compress slider every 5 s on one server "
              "(lenet_300_100, digits): first/exact number p50/p95, errors, server RSS",
              room.bench_room_lenet, quick=False,
              quick_note="a live server and 30 websocket participants for 2 min: about 3 min"),
    Benchmark("room_mnist_cnn", "10 participants move the Compress slider every 5 s on one server "
              "(mnist_cnn, MNIST): first/exact number p50/p95, errors, server RSS",
              room.bench_room_mnist_cnn, quick=False,
              quick_note="a live server and 10 websocket participants for 2 min: about 3 min"),
    Benchmark("rehearsal", "workshop rehearsal: 30 participants join (code bench-ws, budget 10x) and work through "
              "the Lessons every 5 s (pick a lesson, guess, commit, reveal; ~1 in 10 opens the Class board) on one "
              "server (lenet_300_100, digits): p50/p95/max per interaction, errors, vs one participant alone",
              rehearsal.bench_rehearsal, quick=False,
              quick_note="a live workshop server and 30 websocket participants for 2 min: about 3-4 min"),
    Benchmark("app_browser_mnist_cnn", "Compress slider key press to first number, exact number, Size in Chromium, "
              "mnist_cnn", lambda ctx: app_latency.bench_browser("mnist_cnn", ctx), quick=False,
              quick_note="a live server driven by Chromium, each press waiting for the exact number: about 3 min"),
    Benchmark("app_browser_lenet_300_100", "Compress slider key press to first number, exact number, Size in "
              "Chromium, lenet_300_100",
              lambda ctx: app_latency.bench_browser("lenet_300_100", ctx), quick=False,
              quick_note="a live server driven by Chromium: over 2 min, and its 60 s waits time out on a busy machine"),
    Benchmark("nm_sparse", "2:4 semi-structured Linear on sparse tensor cores vs dense (CUDA only)",
              nm_sparse.bench_nm_sparse),
    Benchmark("jobs_isolation", "a slider move while another session's job runs: worker process vs server thread",
              jobs_isolation.bench_isolation),
    Benchmark("deploy_variants", "bytes, accuracy, latency of eager/masked/physical/ONNX/packed variants (3 models)",
              deploy.bench_deploy, quick=False,
              quick_note="exports, quantises and times 3 models x 10 variants: 3-5 min even with fewer rounds"),
    Benchmark("finetune_deep_compression", "Deep Compression on lenet_300_100 through the finetune CLI (MNIST)",
              finetune_results.bench_deep_compression, quick=False,
              quick_note="a whole prune-retrain-quantise run through the CLI: 1-1.5 min"),
    Benchmark("finetune_mnist_cnn_int4", "mnist_cnn 90% sparse + 4-bit QAT through the finetune CLI (MNIST)",
              finetune_results.bench_mnist_cnn_int4, quick=False,
              quick_note="a whole QAT fine-tuning run through the CLI: 2-3.5 min"),
    Benchmark("finetune_overhead_lenet_300_100", "fine-tuning samples/s, mask + fake quant vs a plain loop",
              lambda ctx: finetune_results.bench_overhead("lenet_300_100", ctx), quick=False,
              quick_note="trains epochs to time them: about 45 s"),
    Benchmark("finetune_overhead_mnist_cnn", "fine-tuning samples/s, mask + fake quant vs a plain loop",
              lambda ctx: finetune_results.bench_overhead("mnist_cnn", ctx), quick=False,
              quick_note="trains epochs to time them: about 55 s"),
    Benchmark("sensitivity_time_lenet_300_100", "sensitivity() with the default ladder (10 sparsities x 4 bit "
              "widths) on lenet_300_100 (MNIST) vs as many eager exact evaluations",
              lambda ctx: plan.bench_sensitivity_time("lenet_300_100", ctx)),
    Benchmark("sensitivity_time_mnist_cnn", "sensitivity() with the default ladder on mnist_cnn (MNIST) vs as many "
              "eager exact evaluations", lambda ctx: plan.bench_sensitivity_time("mnist_cnn", ctx), quick=False,
              quick_note="a whole sensitivity analysis of mnist_cnn, twice: 40 s idle, 2 min on a busy machine"),
    Benchmark("plan_vs_uniform", "plan() vs uniform vs global magnitude at 10x/20x/40x accounted bytes, "
              "lenet_300_100 and mnist_cnn (MNIST)", plan.bench_plan_vs_uniform, quick=False,
              quick_note="two sensitivity analyses, 6 plans and 30 bisected references: 1 min idle, 4 min on a busy machine"),
]


def select(only: str | None) -> list[Benchmark]:
    """Benchmarks matching ``--only`` (comma-separated; exact name, else prefix, else substring)."""
    if not only:
        return list(BENCHMARKS)
    chosen: list[Benchmark] = []
    for word in (w.strip() for w in only.split(",") if w.strip()):
        hits = ([b for b in BENCHMARKS if b.name == word]
                or [b for b in BENCHMARKS if b.name.startswith(word)]
                or [b for b in BENCHMARKS if word in b.name])
        if not hits:
            names = ", ".join(b.name for b in BENCHMARKS)
            raise SystemExit(f"--only {word!r} matches no benchmark (benchmarks: {names})")
        chosen += [b for b in hits if b not in chosen]
    return chosen


def prepare_models(ctx: Context) -> None:
    """Train (and cache) every zoo model the benchmarks load, on MNIST (when present) and the digits,
    before any benchmark starts: pretraining is never part of a benchmark's time."""
    from pet_core.data import load_dataset
    from pet_core.errors import PetError
    from pet_core.loader import load_baseline
    from pet_core.pretrained import is_cached
    from pet_core.zoo import adapt_dataset, list_models

    start = time.perf_counter()
    trained = []
    for name, data_dir in (("mnist", engine.mnist_dir(ctx)), ("digits", None)):
        try:
            ds = load_dataset(name, data_dir)
        except PetError:
            continue                  # no MNIST: the benchmarks fall back to the digits
        for m in list_models():
            if not is_cached(m.name, adapt_dataset(ds, m.name)):
                ctx.log(f"  pretraining {m.name} on {name} (cached for later runs; not part of any timing)")
                load_baseline(m.name, name, data_dir)
                trained.append(f"{m.name}/{name}")
    took = time.perf_counter() - start
    ctx.log(f"models ready in {took:.1f} s" + (f" (trained {', '.join(trained)})" if trained else " (all cached)"))


def wait_for_background_evaluations(timeout_s: float = 60.0) -> None:
    """Join the background exact evaluations (``pet_core.evaluation.progressive``, thread "pet-exact-eval")
    an app benchmark's sessions left running: the interpreter exiting while one is inside onnxruntime
    aborts the process ("terminate called without an active exception", exit status 134) after the
    results are written. Other daemon threads (watchers, reapers) never end and are left alone."""
    deadline = time.perf_counter() + timeout_s
    for t in threading.enumerate():
        if t.name == "pet-exact-eval" and t.is_alive():
            t.join(max(0.0, deadline - time.perf_counter()))


def busy(info: dict) -> bool:
    """True when the 1-minute load average at the start or end exceeded the usable cores."""
    loads = [info.get("load_avg"), info.get("load_avg_end")]
    try:
        return any(float(x.split(" / ")[0]) > info["cores_usable"] + 0.5 for x in loads if x and x != "unknown")
    except (ValueError, TypeError):
        return False


# --- report -----------------------------------------------------------------------------------

def _fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "–"
    if abs(x) >= 100:
        s = f"{x:,.0f}"
    elif abs(x) >= 1:
        s = f"{x:.2f}"
    else:
        s = f"{x:.3g}"
    return f"{s} {unit}".strip()


def write_markdown(rows: list[dict], info: dict, args: argparse.Namespace, seconds: float,
                   failed: dict[str, str] | None = None, skipped: dict[str, str] | None = None) -> str:
    lines = ["# PET Studio benchmarks", ""]
    cmd = "python bench/run.py" + (" --quick" if args.quick else "") + (f" --only {args.only}" if args.only else "")
    lines += [f"Generated by `{cmd}` in {seconds:.0f} s. Medians of repeated runs after warm-up "
              "(`time.perf_counter`); each baseline is measured in the same run, interleaved with the "
              "measured thing. **ratio = baseline / value** (> 1: faster than the baseline).", ""]
    lines += ["## Machine", "", "| | |", "|---|---|"]
    labels = [("cpu", "CPU"), ("cores_usable", "cores usable"), ("cores_total", "cores on the machine"),
              ("cpu_capability", "torch CPU capability"), ("torch", "torch"), ("torch_threads", "torch threads"),
              ("numpy", "numpy"), ("python", "Python"), ("os", "OS"), ("gpu", "GPU"), ("date", "date"),
              ("load_avg", "load average (1/5/15 min) at start"), ("load_avg_end", "load average at end")]
    lines += [f"| {label} | {info.get(key)} |" for key, label in labels]
    if busy(info):
        lines += ["", f"**Warning:** the load average exceeded the {info['cores_usable']} usable cores during "
                  "the run: other processes competed for the CPU, so absolute times are inflated (the "
                  "interleaved baselines saw the same load, so ratios are less affected)."]
    if failed:
        lines += ["", "## Failures in this run", ""]
        lines += [f"- `{name}`: {why}" for name, why in failed.items()]
    if skipped:
        lines += ["", "Skipped by `--quick` (their rows, if any, are from an earlier run): "
                  + "; ".join(f"`{name}` ({why})" for name, why in skipped.items()) + "."]
    if any(r.get("quick") for r in rows):
        lines += ["", "Rows marked ‡ come from a `--quick` run (fewer repetitions): a smoke check, not for reporting."]
    earlier = sorted({r.get("measured_at") for r in rows if r.get("measured_at") != info["date"]} - {None})
    if earlier:
        lines += ["", f"Rows marked † were measured in an earlier run ({', '.join(earlier)}; kept by `--only` or "
                  "after a failure); see `measured_at` in results.json."]
    lines += ["", "## Results", "",
              "| benchmark | median | p90 | min | baseline median | ratio | goal | met | reps |",
              "|---|---:|---:|---:|---:|---:|---|:-:|---:|"]
    for r in rows:
        met = "" if "met" not in r else ("yes" if r["met"] else "**no**")
        ratio = "–" if r.get("ratio") is None else f"{r['ratio']:.3g}×"
        u = r["unit"]
        mark = (" †" if r.get("measured_at") != info["date"] else "") + (" ‡" if r.get("quick") else "")
        lines.append(f"| {r['name']}{mark} | {_fmt(r['value'], u)} | {_fmt(r.get('p90'), u)} | {_fmt(r.get('min'), u)} | "
                     f"{_fmt(r.get('baseline'), u)} | {ratio} | {r.get('goal', '')} | {met} | {r.get('reps', '')} |")
    lines += ["", "## Goals", ""]
    for r in rows:
        for g in r.get("goals", []):
            mark = "met" if g["met"] else "**NOT met**"
            lines.append(f"- {r['name'].strip()}: {g['goal']} — {mark} (median {_fmt(r['value'], r['unit'])}, "
                         f"{'–' if r.get('ratio') is None else format(r['ratio'], '.3g') + '×'} vs. baseline)")
    lines += ["", "## What was measured", ""]
    for r in rows:
        lines.append(f"- **{r['name'].strip()}** — {r.get('notes', '')}"
                     + (f" Baseline: {r['baseline_desc']}." if r.get("baseline_desc") else ""))
    for r in rows:  # a benchmark's own markdown section (a row's "section"), kept in results.json
        if r.get("section"):
            lines += ["", r["section"].rstrip()]
            if r.get("measured_at") != info["date"]:
                lines += ["", f"† This section was measured in an earlier run ({r.get('measured_at')})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke check, not for reporting)")
    parser.add_argument("--only", metavar="NAME", help="comma-separated benchmark names (or prefixes): "
                        + ", ".join(b.name for b in BENCHMARKS))
    parser.add_argument("--data-dir", help="MNIST folder (default: $PET_MNIST_DIR or <repo>/../shared/data/mnist)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        for b in BENCHMARKS:
            print(f"{b.name:24} {b.description}" + ("" if b.quick else "  [not in --quick]"))
        return 0

    setup_torch()
    chosen = select(args.only)
    skipped: dict[str, str] = {}
    if args.quick and not args.only:   # a benchmark named in --only runs even when it is not quick
        skipped = {b.name: b.quick_note or "long" for b in chosen if not b.quick}
        chosen = [b for b in chosen if b.quick]
    ctx = Context(quick=args.quick, reps=5 if args.quick else 20, warmup=1 if args.quick else 2,
                  data_dir=args.data_dir, log=lambda m: print(m, flush=True))
    info = machine()
    print(f"{info['cpu']}, {info['cores_usable']} cores usable, torch {info['torch']} "
          f"({info['torch_threads']} threads), load average {info['load_avg']}", flush=True)

    start = time.perf_counter()
    for name, why in skipped.items():
        print(f"[{name}] skipped by --quick: {why} (run it with --only {name}; its previous rows are kept)",
              flush=True)
    prepare_models(ctx)
    fresh: list[dict] = []
    failed: dict[str, str] = {}
    took: dict[str, float] = {}
    for b in chosen:
        print(f"[{b.name}] {b.description}", flush=True)
        # every benchmark starts at BENCH_THREADS: the app (app_server_*) sets one intra-op thread for its
        # process (pet_core.threads), which would otherwise hold for every benchmark after it
        setup_torch()
        t0 = time.perf_counter()
        try:
            results = b.fn(ctx)
        except Exception as exc:  # one broken benchmark must not lose the others' results
            traceback.print_exc()
            failed[b.name] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            took[b.name] = time.perf_counter() - t0
            print(f"  FAILED after {took[b.name]:.1f} s: {failed[b.name]}", flush=True)
            continue
        for res in results:
            row = res.as_dict()
            row["group"] = b.name
            row["quick"] = args.quick
            row["measured_at"] = info["date"]
            fresh.append(row)
            ratio = "" if row["ratio"] is None else f"  ratio {row['ratio']:.3g}x"
            met = "" if "met" not in row else ("  goal met" if row["met"] else "  goal NOT met")
            print(f"  {row['name']}: {row['value']:.4g} {row['unit']}"
                  f" (baseline {row['baseline']}){ratio}{met}", flush=True)
        took[b.name] = time.perf_counter() - t0
        print(f"  ({took[b.name]:.1f} s)", flush=True)
    seconds = time.perf_counter() - start
    info["load_avg_end"] = load_avg()
    if busy(info):
        print(f"warning: load average {info['load_avg']} -> {info['load_avg_end']} on "
              f"{info['cores_usable']} cores: other processes competed for the CPU", flush=True)

    rows = fresh
    if (args.only or failed or skipped) and RESULTS_JSON.is_file():
        # keep the previous rows of the benchmarks not run, or that failed this time
        ran = {b.name for b in chosen} - set(failed)
        try:
            old = json.loads(RESULTS_JSON.read_text())
        except (OSError, ValueError):
            old = []
        kept = [r for r in old if isinstance(r, dict) and r.get("group") not in ran]
        for r in kept:
            if r.get("group") in failed:
                r["stale"] = f"failed in the run of {info['date']}: {failed[r['group']]}"
        order = [b.name for b in BENCHMARKS]
        rows = sorted(kept + fresh, key=lambda r: order.index(r["group"]) if r.get("group") in order else len(order))
    RESULTS_JSON.write_text(json.dumps(rows, indent=1) + "\n")
    RESULTS_MD.write_text(write_markdown(rows, info, args, seconds, failed, skipped))
    print(f"wrote {os.path.relpath(RESULTS_JSON)} and {os.path.relpath(RESULTS_MD)}")
    print("wall time per benchmark: " + ", ".join(f"{k} {v:.0f} s" for k, v in took.items()))
    print(f"total wall time: {seconds:.0f} s ({seconds / 60:.1f} min) for {len(chosen)} benchmark(s)"
          + (f", {len(skipped)} skipped by --quick" if skipped else ""), flush=True)
    wait_for_background_evaluations()
    if failed:
        print(f"{len(failed)} benchmark(s) failed: {', '.join(failed)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
