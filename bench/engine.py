"""Engine benchmarks: slider move, analysis of a 25M-weight model, global threshold lookup.

Each ``bench_*`` function takes a :class:`bench.common.Context` and returns a list of
:class:`bench.common.Result`. Baselines are the naive ways of doing the same thing, written here
and measured in the same run, interleaved with the engine.
"""

from __future__ import annotations

import copy
import functools
import itertools
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from bench.common import Context, Goal, Result, measure_pair, median, p90, timed
from pet_core.accuracy import top1_accuracy
from pet_core.analysis import HIST_MAX_SAMPLES, analyze
from pet_core.errors import PetError
from pet_core.loader import load_baseline, open_workbench
from pet_core.methods.magnitude import SortedScores, count_to_prune
from pet_core.recipe import Recipe

REPO = Path(__file__).resolve().parents[1]
SLIDER_SPARSITIES = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
LAP_SHIFT = 0.001  # each lap through SLIDER_SPARSITIES is shifted by this much more: no recipe twice
QUANT = {"bits": 4, "scheme": "symmetric", "granularity": "per_channel"}
EVAL_BATCH = 4096  # the workbench's evaluation batch size; the naive evaluation uses the same
SYNTH_LAYERS, SYNTH_SIDE = 5, 2236  # 5 x 2236^2 = 24,998,480 weights
BINS = 60


# --- slider move ---------------------------------------------------------------------------------

def mnist_dir(ctx: Context) -> str:
    return ctx.data_dir or os.environ.get("PET_MNIST_DIR") or str(REPO.parent / "shared" / "data" / "mnist")


def _load(model_name: str, ctx: Context):
    """(baseline, dataset label, note): MNIST when present, else the sklearn digits, saying so."""
    start = time.perf_counter()
    try:
        base = load_baseline(model_name, "mnist", mnist_dir(ctx))
        label, note = "MNIST", ""
    except PetError as exc:
        ctx.log(f"  MNIST not available ({exc}); falling back to digits")
        base = load_baseline(model_name, "digits")
        label, note = "digits (MNIST not found)", f"MNIST not found ({exc}); ran on sklearn digits instead. "
    took = time.perf_counter() - start
    how = "loaded from cache" if base.info.get("cached") else "trained now"
    ctx.log(f"  {model_name} on {label}: {how} in {took:.1f} s, accuracy {base.info.get('accuracy')}")
    return base, label, note


def naive_fake_quant(w: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """Symmetric per-output-channel round/clamp to ``bits`` bits (the naive baseline's quantiser)."""
    qmax = 2 ** (bits - 1) - 1
    rows = w.reshape(w.shape[0], -1)                                  # (out, in_flat)
    scale = rows.abs().amax(dim=1, keepdim=True) / qmax               # (out, 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (torch.clamp(torch.round(rows / scale), -qmax, qmax) * scale).reshape(w.shape)


def naive_evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return top1_accuracy(model, x, y, batch_size=EVAL_BATCH)


def naive_compress(base_model: nn.Module, sparsity: float, bits: int = 4) -> nn.Module:
    """deepcopy + global L1 unstructured pruning + prune.remove + fake quantisation of each weight."""
    model = copy.deepcopy(base_model)
    params = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
    with torch.no_grad():
        for m, name in params:
            prune.remove(m, name)
            m.weight.copy_(naive_fake_quant(m.weight, bits))
    return model


def slider_sparsities():
    """SLIDER_SPARSITIES, lap after lap, each lap shifted by LAP_SHIFT more (0.5, ..., 0.95, 0.501, ...).

    The workbench's evaluation engine keeps the exact value of every recipe it evaluated (shared by
    all workbenches of the model): a recipe asked twice would time a cache hit, not an evaluation.
    """
    for lap in itertools.count():
        for s in SLIDER_SPARSITIES:
            yield round(s + LAP_SHIFT * lap, 6)


def bench_slider(model_name: str, ctx: Context) -> list[Result]:
    base, label, note = _load(model_name, ctx)
    wb = open_workbench(base)
    x, y = base.dataset.x_test, base.dataset.y_test
    n_layers = len(wb.names)

    eng_seq, naive_seq = slider_sparsities(), slider_sparsities()   # the same values, in the same order
    eng_apply, eng_eval, eng_changed, eng_acc = [], [], [], {}
    nv_comp, nv_eval, nv_acc = [], [], {}

    def engine_move() -> None:
        s = next(eng_seq)
        t0 = time.perf_counter()
        recipe = Recipe(model=model_name, dataset=base.dataset.name,
                        default={"prune": {"method": "magnitude", "scope": "global", "sparsity": s},
                                 "quantize": dict(QUANT)})
        changed = wb.apply(recipe)
        t1 = time.perf_counter()
        if wb.cached_metric() is not None:
            raise RuntimeError(f"sparsity {s} was evaluated before: the move would time a cache hit")
        acc = wb.evaluate()
        t2 = time.perf_counter()
        eng_apply.append((t1 - t0) * 1e3)
        eng_eval.append((t2 - t1) * 1e3)
        eng_changed.append(len(changed))
        eng_acc[s] = acc

    def naive_move() -> None:
        s = next(naive_seq)
        t0 = time.perf_counter()
        model = naive_compress(base.model, s, QUANT["bits"])
        t1 = time.perf_counter()
        acc = naive_evaluate(model, x, y)
        t2 = time.perf_counter()
        nv_comp.append((t1 - t0) * 1e3)
        nv_eval.append((t2 - t1) * 1e3)
        nv_acc[s] = acc

    t_eng, t_naive = measure_pair(engine_move, naive_move, ctx.reps, ctx.warmup)
    skip = ctx.warmup  # the sub-timings lists include the warm-up calls
    eng_apply, eng_eval, eng_changed = eng_apply[skip:], eng_eval[skip:], eng_changed[skip:]
    nv_comp, nv_eval = nv_comp[skip:], nv_eval[skip:]

    all_changed = all(c == n_layers for c in eng_changed)
    diffs = [abs(eng_acc[s] - nv_acc[s]) for s in eng_acc if s in nv_acc]
    top = max(s for s in eng_acc if s in nv_acc)
    agree = (f"engine vs naive accuracy at the same sparsity: max |diff| = {max(diffs) * 100:.2f} points "
             f"over {len(diffs)} sparsities (at {top:g}: {eng_acc[top]:.4f} vs {nv_acc[top]:.4f}; "
             f"baseline model {wb.baseline_accuracy:.4f}).")
    changed_note = (f"every move recomputed all {n_layers} layers. " if all_changed else
                    f"WARNING: some moves recomputed fewer than {n_layers} layers: {sorted(set(eng_changed))}. ")
    share = (f"Evaluation is {median(eng_eval) / median(t_eng) * 100:.0f}% of the engine's move; with a free "
             f"apply the ratio could be at most naive / evaluate = {median(t_naive) / median(eng_eval):.2f}x. ")
    seq = ", ".join(f"{s:g}" for s in SLIDER_SPARSITIES)
    tag = f"{model_name}, {label}, {len(y)} test images"
    group = f"slider_{model_name}"

    goals = [Goal(">= 10x faster than naive", median(t_naive) / median(t_eng) >= 10)]
    if model_name == "lenet_300_100":
        goals.append(Goal("median < 100 ms", median(t_eng) < 100))
    full = Result(
        name=f"slider move ({tag})", value=median(t_eng), unit="ms", baseline=median(t_naive),
        p90=p90(t_eng), min=min(t_eng),
        baseline_p90=p90(t_naive), baseline_min=min(t_naive), group=group, reps=len(t_eng), goals=goals,
        baseline_desc="deepcopy + prune.global_unstructured(L1Unstructured) + prune.remove + "
                      "per-channel symmetric 4-bit round/clamp + evaluation on the test set",
        notes=(note + f"Workbench.apply(recipe) + Workbench.evaluate(); global magnitude sparsity cycling "
               f"through {seq}, each lap shifted by {LAP_SHIFT:g} more (no recipe twice: the engine caches exact values), "
               f"with quantize 4-bit symmetric per_channel; " + changed_note + share + agree),
    )
    apply_row = Result(
        name=f"slider move, apply part ({model_name})", value=median(eng_apply), unit="ms",
        baseline=median(nv_comp), p90=p90(eng_apply), min=min(eng_apply),
        baseline_p90=p90(nv_comp), baseline_min=min(nv_comp), group=group,
        reps=len(eng_apply), baseline_desc="naive deepcopy + prune + remove + fake-quantise",
        notes="part of the slider move above: recipe -> weights in the working copy.",
    )
    eval_row = Result(
        name=f"slider move, evaluate part ({model_name})", value=median(eng_eval), unit="ms",
        baseline=median(nv_eval), p90=p90(eng_eval), min=min(eng_eval),
        baseline_p90=p90(nv_eval), baseline_min=min(nv_eval), group=group,
        reps=len(eng_eval), baseline_desc="naive evaluation (same batch size, torch.no_grad)",
        notes=f"part of the slider move above: full forward pass over {len(y)} test images.",
    )
    return [full, apply_row, eval_row]


# --- 25M-weight synthetic model ---------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def synthetic_model() -> nn.Sequential:
    """5 x Linear(2236, 2236): 24,998,480 weights, seeded default initialisation."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(*[nn.Linear(SYNTH_SIDE, SYNTH_SIDE) for _ in range(SYNTH_LAYERS)]).eval()


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach() for m in model if isinstance(m, nn.Linear)]


def _synth_tag() -> str:
    n = SYNTH_LAYERS * SYNTH_SIDE * SYNTH_SIDE
    return f"{n / 1e6:.1f}M weights, {SYNTH_LAYERS} x Linear({SYNTH_SIDE}, {SYNTH_SIDE})"


def bench_analysis(ctx: Context) -> list[Result]:
    model = synthetic_model()
    weights = _weights(model)
    arrays = [w.numpy() for w in weights]  # zero-copy views

    def engine() -> None:
        analyze(model, BINS)

    def numpy_hists() -> None:
        for a in arrays:
            np.histogram(a, bins=BINS)

    t_eng, t_np = measure_pair(engine, numpy_hists, ctx.reps, ctx.warmup)
    stats = analyze(model, BINS)
    sampled = sum(s.hist_sampled for s in stats)
    return [Result(
        name=f"analysis of a synthetic model ({_synth_tag()})", value=median(t_eng), unit="ms",
        baseline=median(t_np), p90=p90(t_eng), min=min(t_eng),
        baseline_p90=p90(t_np), baseline_min=min(t_np), group="analysis_25m",
        reps=len(t_eng), goals=[Goal("<= 100 ms", median(t_eng) <= 100)],
        baseline_desc=f"numpy.histogram({BINS} bins) over every weight of each layer (histograms only)",
        notes=(f"pet_core.analysis.analyze: exact moments, sparsity, kurtosis, outliers, channel L1/L2 over "
               f"all weights, plus {BINS}-bin histograms; {sampled} of {len(stats)} histograms on a strided "
               f"sample of <= {HIST_MAX_SAMPLES:,} values (hist_sampled). The baseline does less work "
               f"(histograms only) on more values (all)."),
    )]


def bench_threshold(ctx: Context) -> list[Result]:
    weights = _weights(synthetic_model())
    scores = [w.abs() for w in weights]
    flat = torch.cat([s.reshape(-1) for s in scores])  # (N,), built once: the baseline's best case
    n = flat.numel()

    start = time.perf_counter()
    sorted_scores = SortedScores(scores)
    first_threshold = sorted_scores.threshold(0.5)
    t_build = (time.perf_counter() - start) * 1e3

    # a new target sparsity on every call, never one asked before
    new = (0.3 + 0.6 * ((i * 0.6180339887) % 1.0) for i in itertools.count(1))
    checks: list[tuple[float, float, float]] = []
    pending: dict[str, float] = {}

    def engine() -> None:
        s = next(new)
        pending["s"] = s
        pending["t_engine"] = sorted_scores.threshold(s)

    def kth() -> None:
        s = pending["s"]  # the same sparsity the engine was just asked
        t = float(torch.kthvalue(flat, count_to_prune(n, s)).values)
        checks.append((s, pending["t_engine"], t))

    # both must see the same sparsity: always engine first, then the baseline
    for _ in range(ctx.warmup):
        engine()
        kth()
    t_eng, t_kth = [], []
    for _ in range(ctx.reps):
        t_eng.append(timed(engine))
        t_kth.append(timed(kth))
    mismatches = [c for c in checks if c[1] != c[2]]
    ok = "all equal to kthvalue" if not mismatches else f"{len(mismatches)} DIFFER from kthvalue, e.g. {mismatches[0]}"
    tag = _synth_tag()
    return [
        Result(
            name=f"global threshold, new target sparsity ({tag})", value=median(t_eng), unit="ms",
            baseline=median(t_kth), p90=p90(t_eng), min=min(t_eng),
            baseline_p90=p90(t_kth), baseline_min=min(t_kth), group="threshold_25m",
            reps=len(t_eng), goals=[Goal("<= 20 ms after the first", median(t_eng) <= 20)],
            baseline_desc="torch.kthvalue over the concatenated |w| (concatenation done once, not timed)",
            notes=f"SortedScores(...).threshold(s) for {len(checks)} distinct new sparsities in [0.3, 0.9]; "
                  f"thresholds {ok}.",
        ),
        Result(
            name=f"global threshold, first (SortedScores build + lookup, {tag})", value=t_build, unit="ms",
            baseline=median(t_kth), group="threshold_25m", reps=1,
            baseline_desc="one torch.kthvalue over the concatenated |w|",
            notes=f"one-off cost per set of layers (sorts {n:,} scores), paid once; threshold(0.5) = "
                  f"{first_threshold:.6g}. A single measurement.",
        ),
    ]
