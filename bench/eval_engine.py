"""Evaluation engine benchmarks (issue 12): exact evaluation after a move, and move → first number.

For every zoo model (``pet_core.zoo.list_models()``) on MNIST (the sklearn digits when MNIST is
absent, said so in the rows); models are loaded (trained only when not cached) before any timing.

* :func:`bench_exact_eval`: a slider move (a recipe never evaluated before, applied untimed), then
  ``Workbench.evaluate()`` timed alone: the engine's exact full-test-set number. Baselines, measured
  interleaved in rotating order in the same run: ONNX Runtime over the *dense* baseline model
  exported the usual way (weights as initializers), and eager ``pet_core.metrics.evaluate`` (the old
  path). The engine's per-item correctness is compared with eager PyTorch's on the full test set.
  For mnist_cnn also the batch size of the engine's ONNX Runtime backend (128 / 256 / 512 / 1000).
* :func:`bench_first_number`: what ``studio.state.evaluate(progressive=True)`` does on a move —
  ``apply`` + an estimate (when ``exact_is_slow(ESTIMATE_FIRST_ABOVE_S)``, 0.08 s) or the exact value + ``report`` — against
  the old path (apply + eager full evaluation + report).

Repetitions: ``ctx.reps`` rounds, fewer (at least 5) for a model whose round takes long (resnet_mini's
eager evaluations take seconds): :func:`measure_budgeted`, said in the notes. ``--quick``: 3 rounds on
lenet_300_100 and mnist_cnn only.

The engine caches exact values per recipe (shared by every workbench of the same model and data),
so every timed move uses a fresh recipe (:func:`fresh_recipe`) and checks it is not cached.
"""

from __future__ import annotations

import cProfile
import io
import itertools
import pstats
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.common import Context, Goal, Result, measure_many, median, p90
from bench.engine import QUANT, _load
from pet_core.accuracy import logits_of
from pet_core.evaluation.engine import ESTIMATE_FIRST_ABOVE_S
from pet_core.loader import open_workbench
from pet_core.metrics import evaluate as eager_evaluate
from pet_core.recipe import Recipe
from pet_core.zoo import list_models

ORT_BATCH = 256                  # the dense ONNX Runtime baseline's batch
ORT_BATCHES = (128, 256, 512, 1000)
SLOW_EXACT_S = ESTIMATE_FIRST_ABOVE_S   # what studio.state uses (that module imports streamlit)
FIRST_NUMBER_GOAL_MS = 100.0
CHECK_RECIPES = 3                # recipes on which the engine's outcomes are compared with eager's (1 when slow)
MODEL_BUDGET_S = 20.0            # timed rounds per model and benchmark: fewer than ctx.reps when a round is slow
MIN_REPS = 5                     # but never fewer than this (a median of 5)
QUICK_REPS = 3                   # --quick: recorded repetitions per timing ...
QUICK_MODELS = ("lenet_300_100", "mnist_cnn")   # ... on these models only
FINISH_EXACT_S = 2.0             # first number: wait (untimed) for the previous move's exact value when it is this fast

# one sequence for the whole process: no two moves of any benchmark ask for the same sparsity
_FRESH = itertools.count(1)


def models(ctx: Context) -> list[str]:
    names = [m.name for m in list_models()]
    if ctx.quick:
        ctx.log(f"  --quick: {', '.join(QUICK_MODELS)} only (of {', '.join(names)}), {QUICK_REPS} repetitions")
        return [n for n in names if n in QUICK_MODELS]
    return names


def measure_budgeted(ctx: Context, fns: dict[Any, Any], prepare: dict[Any, Any] | None = None
                     ) -> tuple[dict[Any, list[float]], int, float]:
    """:func:`bench.common.measure_many` with the repetitions sized to the time a round takes.

    One warm-up round is timed (all of ``fns`` and their ``prepare``); then ``ctx.reps`` recorded
    rounds, or as many as fit in :data:`MODEL_BUDGET_S` but at least :data:`MIN_REPS` (a model whose
    eager evaluation takes seconds), after the rest of ``ctx.warmup``. --quick: :data:`QUICK_REPS`.
    Returns (ms per name, warm-up calls made per name, seconds of the first warm-up round).
    """
    start = time.perf_counter()
    measure_many(fns, 0, 1, prepare)
    round_s = time.perf_counter() - start
    if ctx.quick:
        reps, warmup = min(ctx.reps, QUICK_REPS), 1
    else:
        reps, warmup = min(ctx.reps, max(MIN_REPS, int(MODEL_BUDGET_S / max(round_s, 1e-3)))), max(1, ctx.warmup)
        measure_many(fns, 0, warmup - 1, prepare)
    return measure_many(fns, reps, 0, prepare), warmup, round_s


def _reps_note(ms: dict[Any, list[float]], round_s: float, ctx: Context) -> str:
    reps = len(next(iter(ms.values())))
    if reps >= ctx.reps:
        return ""
    why = "--quick" if ctx.quick else f"a round took {round_s:.1f} s; {MODEL_BUDGET_S:.0f} s budget per model"
    return f"{reps} repetitions ({why}). "


def fresh_recipe(base: Any) -> Recipe:
    """Global magnitude pruning at a sparsity never used before in this process (golden-ratio
    sequence in [0.3, 0.95)) + 4-bit symmetric per-channel quantization: a slider move."""
    k = next(_FRESH)
    s = 0.3 + 0.65 * ((k * 0.6180339887498949) % 1.0)
    return Recipe(model=base.model_name, dataset=base.dataset.name,
                  default={"prune": {"method": "magnitude", "scope": "global", "sparsity": s},
                           "quantize": dict(QUANT)})


def move(wb: Any, base: Any) -> None:
    """Apply a fresh recipe whose exact value no session has computed yet."""
    for _ in range(100):
        wb.apply(fresh_recipe(base))
        if wb.cached_metric() is None:
            return
    raise RuntimeError("no fresh recipe found in 100 tries")


def ort_dense(model: nn.Module, x: torch.Tensor, threads: int):
    """An onnxruntime CPU session of ``model`` exported normally (weights as initializers)."""
    import onnxruntime as ort

    from pet_core.export.onnx_export import _quiet

    buf = io.BytesIO()
    with _quiet():
        torch.onnx.export(model, (x[:2],), buf, dynamo=False, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}})
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])


def ort_accuracy(session: Any, x_np: np.ndarray, y_np: np.ndarray, batch: int = ORT_BATCH) -> float:
    correct = 0
    for start in range(0, len(x_np), batch):
        out = session.run(None, {"x": x_np[start:start + batch]})[0]
        correct += int((out.argmax(1) == y_np[start:start + batch]).sum())
    return correct / max(1, len(x_np))


def eager_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> np.ndarray:
    """1.0/0.0 per item: eager PyTorch's top-1 prediction equals the label."""
    parts = []
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            logits = logits_of(model(x[start:start + batch]))
            parts.append((logits.argmax(1) == y[start:start + batch]).numpy().astype(np.float64))
    return np.concatenate(parts)


def _choice(wb: Any) -> str:
    c = dict(wb.engine.choice)
    refused = c.pop("refused", None)
    text = ", ".join(f"{k} {v}" for k, v in c.items())
    return text + (f", refused {refused}" if refused else "")


def _row(name: str, t: list[float], base: list[float] | None, **kw: Any) -> Result:
    return Result(name=name, value=median(t), unit="ms", p90=p90(t), min=min(t),
                  baseline=None if base is None else median(base),
                  baseline_p90=None if base is None else p90(base),
                  baseline_min=None if base is None else min(base), reps=len(t), **kw)


# --- exact evaluation after a move ------------------------------------------------------------

def bench_exact_eval(ctx: Context) -> list[Result]:
    loaded = [(name, *_load(name, ctx)) for name in models(ctx)]     # pretraining happens here, untimed
    threads = torch.get_num_threads()
    rows: list[Result] = []
    for name, base, label, note in loaded:
        rows += _exact_one(name, base, label, note, threads, ctx)
    return rows


def _exact_one(name: str, base: Any, label: str, note: str, threads: int, ctx: Context) -> list[Result]:
    wb = open_workbench(base)
    x, y = base.dataset.x_test, base.dataset.y_test
    x_np, y_np = x.numpy(), y.numpy()
    n = len(y)
    start = time.perf_counter()
    move(wb, base)
    wb.evaluate()                       # the engine picks its backend here (export, probes): untimed
    setup_ms = (time.perf_counter() - start) * 1e3
    session = ort_dense(base.model, x, threads)
    ort_acc = ort_accuracy(session, x_np, y_np)
    values: dict[str, float] = {}

    ms, _warmup, round_s = measure_budgeted(
        ctx,
        {"engine": lambda: values.__setitem__("engine", wb.evaluate()),
         "ort": lambda: ort_accuracy(session, x_np, y_np),
         "eager": lambda: values.__setitem__("eager", eager_evaluate(wb.model, x, y, base.task,
                                                                     batch_size=wb.batch_size))},
        prepare={"engine": lambda: move(wb, base)})

    # correctness: the engine's outcomes against eager PyTorch's, item by item, on fresh recipes
    mismatches, checked, acc_pairs = 0, 0, []
    checks = 1 if ctx.quick or round_s > MODEL_BUDGET_S / 10 else CHECK_RECIPES
    for _ in range(checks):
        move(wb, base)
        got = wb.engine.outcomes(wb.model)
        want = eager_correct(wb.model, x, y)
        mismatches += int((got != want).sum())
        checked += n
        acc_pairs.append((float(got.mean()), float(want.mean())))

    tag = f"{name}, {label}, {n} test images"
    group = "eval_exact"
    backend = wb.engine.backend_name
    common = (f"{note}Workbench.evaluate() right after a move (a recipe never evaluated before: global magnitude "
              f"sparsity from a fresh sequence + 4-bit per-channel quantization, applied untimed), the full "
              f"test set; backend chosen: {_choice(wb)} (choice + first evaluation {setup_ms:.0f} ms, untimed). "
              f"Engine vs eager: {mismatches} mismatching per-item outcomes of {checked:,} "
              f"({checks} fresh recipe(s) x {n}; accuracies "
              + ", ".join(f"{a:.4f}/{b:.4f}" for a, b in acc_pairs) + "). " + _reps_note(ms, round_s, ctx))
    ratio_ort = median(ms["engine"]) / median(ms["ort"])
    goals = []
    if name == "mnist_cnn":
        goals = [Goal("≤ 300 ms", median(ms["engine"]) <= 300),
                 Goal("≤ 1.2× ONNX Runtime dense", median(ms["engine"]) <= 1.2 * median(ms["ort"]))]
    rows = [
        _row(f"exact evaluation after a move, engine ({backend}) vs ONNX Runtime dense ({tag})",
             ms["engine"], ms["ort"], group=group, goals=goals,
             baseline_desc=(f"onnxruntime CPU session ({threads} intra-op threads, default options) of the dense baseline exported "
                            f"with torch.onnx.export(dynamo=False), weights as initializers, batch {ORT_BATCH}, "
                            f"argmax accuracy over the test set ({ort_acc:.4f})"),
             notes=common + f"Engine / ORT dense = {ratio_ort:.3g}x (time)."),
        _row(f"exact evaluation after a move, engine ({backend}) vs eager ({name})",
             ms["engine"], ms["eager"], group=group,
             baseline_desc=f"eager pet_core.metrics.evaluate of the working copy (batch {wb.batch_size}, the old path)",
             notes=f"the same engine timings as the row above; last values engine {values.get('engine', float('nan')):.4f}, "
                   f"eager {values.get('eager', float('nan')):.4f} (different recipes: the engine's move is fresh each time)."),
    ]
    if name == "mnist_cnn":
        rows += _ort_batches(wb, base, ctx, tag)
    return rows


def _ort_batches(wb: Any, base: Any, ctx: Context, tag: str) -> list[Result]:
    """The engine's ONNX Runtime backend over the full test set at several batch sizes (outcomes loop)."""
    from pet_core.evaluation.backends import OnnxRuntimeBackend

    eng = wb.engine
    backend = eng._backend if eng.backend_name == "onnxruntime" else OnnxRuntimeBackend(wb.model, eng.x)
    y = eng.y
    n = len(y)

    def outcomes(batch: int) -> np.ndarray:      # EvalEngine.outcomes with another batch size
        run = backend.bind(wb.model)
        parts = []
        for start in range(0, n, batch):
            at = slice(start, min(n, start + batch))
            parts.append((run(at).argmax(1) == y[at]).numpy().astype(np.float64))
        return np.concatenate(parts)

    move(wb, base)
    ref = outcomes(ORT_BATCH)
    same = all(np.array_equal(outcomes(b), ref) for b in ORT_BATCHES)
    ms, _warmup, round_s = measure_budgeted(ctx, {b: (lambda b=b: outcomes(b)) for b in ORT_BATCHES})
    best = min(ORT_BATCHES, key=lambda b: median(ms[b]))
    best_min = min(ORT_BATCHES, key=lambda b: min(ms[b]))
    summary = (", ".join(f"{b}: {median(ms[b]):.1f} ms" for b in ORT_BATCHES) + "; minimums "
               + ", ".join(f"{b}: {min(ms[b]):.1f} ms" for b in ORT_BATCHES))
    return [_row(f"engine's ONNX Runtime backend, batch {b} ({tag})", ms[b], ms[ORT_BATCH],
                 group="eval_exact", baseline_desc=f"the same backend at batch {ORT_BATCH} (EVAL_BATCH), interleaved",
                 notes=(f"OnnxRuntimeBackend.bind + run over every test image in batches of {b} + argmax scoring "
                        f"(EvalEngine.outcomes' loop); medians {summary}; fastest: {best} (by minimum: {best_min}); "
                        f"outcomes equal across batch sizes: {same}. " + _reps_note(ms, round_s, ctx)))
            for b in ORT_BATCHES]


# --- move → first number ------------------------------------------------------------------------

def bench_first_number(ctx: Context) -> list[Result]:
    loaded = [(name, *_load(name, ctx)) for name in models(ctx)]     # pretraining happens here, untimed
    return [_first_one(name, base, label, note, ctx) for name, base, label, note in loaded]


def _first_one(name: str, base: Any, label: str, note: str, ctx: Context) -> Result:
    wb_new, wb_old = open_workbench(base), open_workbench(base)   # one engine (same identity), two working copies
    x, y = base.dataset.x_test, base.dataset.y_test
    n = len(y)
    parts: dict[str, list[tuple[float, ...]]] = {"new": [], "old": []}
    paths: list[str] = []
    pending: dict[str, Any] = {}
    covered: list[bool] = []

    def new_path() -> None:            # studio.state.evaluate(progressive=True), without Streamlit and the ledger (keep in step)
        t0 = time.perf_counter()
        move(wb_new, base)
        t1 = time.perf_counter()
        if wb_new.cached_metric() is None and wb_new.exact_is_slow(SLOW_EXACT_S):
            est = wb_new.estimate()
            t2 = time.perf_counter()
            report = wb_new.report(estimate=est, huffman=False)   # the Huffman size comes with the exact number
            if report["evaluation"]["exact"]:                      # a set too small to subsample
                report = wb_new.report(report["compressed"][report["metric"]["name"]])
            paths.append("estimate" if not est.exact else "exact (small set)")
            pending["estimate"] = None if est.exact else est
        else:
            value = wb_new.evaluate()
            t2 = time.perf_counter()
            report = wb_new.report(accuracy=value)        # = wb.report(), which evaluates first
            paths.append("exact")
            pending["estimate"] = None
        t3 = time.perf_counter()
        assert report["compressed"][wb_new.metric.name] is not None
        parts["new"].append(((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3))

    def finish_exact() -> None:       # untimed: the background exact evaluation of the previous move ends
        est = pending.pop("estimate", None)
        predicted = wb_new.engine.predicted_exact_seconds()
        if est is not None and predicted is not None and predicted <= FINISH_EXACT_S:
            exact = wb_new.evaluate()
            covered.append(est.low <= exact <= est.high)

    def old_path() -> None:            # apply + eager full evaluation + report
        t0 = time.perf_counter()
        wb_old.apply(fresh_recipe(base))
        t1 = time.perf_counter()
        acc = eager_evaluate(wb_old.model, x, y, base.task, batch_size=wb_old.batch_size)
        t2 = time.perf_counter()
        wb_old.report(accuracy=acc)
        t3 = time.perf_counter()
        parts["old"].append(((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3))

    start = time.perf_counter()
    move(wb_new, base)
    wb_new.evaluate()                  # backend choice, export, first exact (the engine's speed): untimed
    wb_new.estimate()                  # the baseline's outcomes and the subset, once per engine: untimed
    setup_ms = (time.perf_counter() - start) * 1e3
    ms, warmup, round_s = measure_budgeted(ctx, {"new": new_path, "old": old_path}, prepare={"new": finish_exact})
    finish_exact()
    new_parts, old_parts = parts["new"][warmup:], parts["old"][warmup:]
    paths = paths[warmup:]

    def split(rows: list[tuple[float, ...]]) -> str:
        cols = list(zip(*rows))
        return " / ".join(f"{median(list(c)):.1f}" for c in cols)

    t_new = median(ms["new"])
    how = ", ".join(f"{paths.count(p)} {p}" for p in sorted(set(paths)))
    eng = wb_new.engine
    subset = eng.subset()
    predicted = eng.predicted_exact_seconds()
    notes = (f"{note}apply(fresh recipe) + [estimate() when exact_is_slow({SLOW_EXACT_S}) else evaluate()] + "
             f"report(estimate=..., huffman=False) (else report(value)) as studio.state.evaluate(progressive=True) does (without Streamlit, the "
             f"background thread and the ledger write); the previous move's exact evaluation is finished untimed "
             f"before each move when it takes <= {FINISH_EXACT_S:.0f} s (the user waited for it). Paths taken: {how}; backend {_choice(wb_new)}; predicted "
             f"exact {'–' if predicted is None else f'{predicted * 1e3:.0f} ms'}; estimate subset "
             f"{'none' if subset is None else f'{len(subset)} of {n}'}. Median parts, apply / number / report: "
             f"engine {split(new_parts)} ms, old {split(old_parts)} ms. "
             + (f"Exact value inside the estimate's 95% interval in {sum(covered)} of {len(covered)} moves. "
                if covered else "")
             + _reps_note(ms, round_s, ctx)
             + f"Set-up (backend choice, first exact, baseline outcomes) {setup_ms:.0f} ms, untimed.")
    if t_new > FIRST_NUMBER_GOAL_MS:
        notes += " Profile of 2 further moves: " + _profile(new_path, finish_exact)
    return _row(f"move → first number, server side ({name}, {label}, {n} test images)", ms["new"], ms["old"],
                group="eval_first_number", goals=[Goal(f"≤ {FIRST_NUMBER_GOAL_MS:.0f} ms", t_new <= FIRST_NUMBER_GOAL_MS)],
                baseline_desc="the old path: apply + eager pet_core.metrics.evaluate on the full test set + report(accuracy=...)",
                notes=notes)


def _profile(fn: Any, between: Any, moves: int = 2, top: int = 6) -> str:
    """cProfile of ``moves`` calls of ``fn`` (``between()`` untimed before each): the pet_core functions
    with the most cumulative time (nested ones included), then the costliest functions by own time."""
    prof = cProfile.Profile()
    for _ in range(moves):
        between()
        prof.enable()
        fn()
        prof.disable()
    stats = pstats.Stats(prof).stats   # (file, line, name): (cc, nc, tottime, cumtime, callers)

    def label(func: tuple) -> str:
        where = func[0].replace("\\", "/")
        short = where.split("pet_core/", 1)[-1] if "pet_core/" in where else where.rsplit("/", 1)[-1]
        return f"{func[2]} ({short}:{func[1]})" if func[1] else func[2]

    ours = sorted((kv for kv in stats.items() if "pet_core/" in kv[0][0].replace("\\", "/")),
                  key=lambda kv: kv[1][3], reverse=True)[:top]
    own = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:4]
    cum = "; ".join(f"{label(f)} {v[3] * 1e3 / moves:.1f}" for f, v in ours)
    tot = "; ".join(f"{label(f)} {v[2] * 1e3 / moves:.1f}" for f, v in own)
    return f"cumulative ms/move: {cum}. Own time ms/move: {tot}."


__all__ = ["bench_exact_eval", "bench_first_number"]
